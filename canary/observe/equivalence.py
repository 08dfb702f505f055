"""Equivalence as ``/status`` shows and readiness judges it (SPEC §6, §9).

``Evidence`` gathers what the router knows about a canary against its baseline: the model
audit (``Meter.audits``), the p95 latency of both over the window, and the shadow pairs'
prompt-token agreement and same-model p-value (computed here, when ``/status`` is
rendered, never on the request path) when there are pairs. ``equivalence_reason`` turns
a miss into the words of ``migration.reason``; the minimum counts behind each verdict,
and why, are in ``canary.safety.equivalence``. ``audit_section`` is ``/status``'s ``audit``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from canary.config.model import Config, Readiness, Route
from canary.observe.document import AuditCountsDoc
from canary.observe.meter import Meter
from canary.safety.equivalence import (
    LATENCY_FLOOR_MS,
    MIN_AUDITED,
    MIN_LATENCY_SAMPLES,
    MIN_PAIRS,
    Pair,
    same_model_p,
    summarize,
)
from canary.safety.windows import Stats


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A backend's worst-audited model: asked for ``asked``, answered as ``answered_as``."""

    asked: str
    answered_as: str
    mismatches: int
    audited: int  # answers that named a model (absent ones aside)


@dataclass(slots=True)
class Evidence:
    """What readiness reads about each backend, beyond its error counts."""

    meter: Meter
    stats: Stats
    peers: Callable[[str], Sequence[dict[str, Any]]] | None = None  # workers' windows
    prompt_match: Callable[[str], tuple[int, float] | None] | None = None  # (pairs, share)
    same_model: Callable[[str], tuple[int, float] | None] | None = None  # (pairs, p-value)

    def mismatch(self, backend: str, since: float = 0.0) -> Mismatch | None:
        """The asked model with the most mismatches on ``backend``, if one came after
        ``since`` (wall time: the circuit's last change; a fixed relay starts afresh)."""
        worst: Mismatch | None = None
        for (name, asked), (match, variant, mismatch, _) in self.meter.audits.items():
            if name != backend or not mismatch:
                continue
            if self.meter.mismatch_at.get((name, asked), 0.0) < since:
                continue
            if worst is None or mismatch > worst.mismatches:
                answered = self.meter.last_mismatch.get((name, asked), "?")
                worst = Mismatch(asked, answered, mismatch, match + variant + mismatch)
        return worst

    def p95(self, backend: str) -> tuple[int, float]:
        """(calls, p95 ms) over the window, every worker's."""
        snap = self.stats.window(backend).snapshot(self.peers(backend) if self.peers else ())
        return snap.requests, snap.p95_ms


def equivalence_reason(
    name: str, baseline: str, bar: Readiness, ev: Evidence, since: float = 0.0
) -> str | None:
    """Why ``name`` is not yet equivalent to ``baseline``, in words; None when it is.
    Mismatches before ``since`` (the circuit's last change, wall time) are not held
    against it; the counts shown are lifetime."""
    miss = ev.mismatch(name, since)
    if miss is not None and _over(miss, bar.max_model_mismatch_rate):
        return (
            f"{name}: answers as {miss.answered_as} when asked for {miss.asked} "
            f"({miss.mismatches} of {miss.audited})"
        )
    calls, p95 = ev.p95(name)
    base_calls, base_p95 = ev.p95(baseline)
    if min(calls, base_calls) >= MIN_LATENCY_SAMPLES and base_p95 > 0:
        ratio = p95 / base_p95
        if ratio > bar.max_latency_ratio_p95 and p95 - base_p95 > LATENCY_FLOOR_MS:
            return (
                f"{name}: p95 latency {p95:.0f} ms is {ratio:.1f}x {baseline}'s "
                f"{base_p95:.0f} ms (> {bar.max_latency_ratio_p95:g}x)"
            )
    pairs = ev.prompt_match(name) if ev.prompt_match is not None else None
    if pairs is not None and pairs[0] >= MIN_PAIRS and pairs[1] < bar.min_prompt_token_match:
        return (
            f"{name}: prompt tokens differ from {baseline}'s on {1 - pairs[1]:.0%} of "
            f"{pairs[0]} shadow pairs (needs {bar.min_prompt_token_match:.0%} equal)"
        )
    return _same_model_reason(name, baseline, bar, ev)


def _same_model_reason(name: str, baseline: str, bar: Readiness, ev: Evidence) -> str | None:
    """Off unless ``min_same_model_p`` is set; the p-value waits for its minimum pairs."""
    if bar.min_same_model_p is None or ev.same_model is None:
        return None
    found = ev.same_model(name)
    if found is None or found[1] >= bar.min_same_model_p:
        return None
    return (
        f"{name}: its shadow answers' lengths are not drawn like {baseline}'s (same-model "
        f"p {found[1]:.2g} over {found[0]} pairs, needs {bar.min_same_model_p:g}): "
        f"another model may be answering"
    )


def _over(miss: Mismatch, bar: float) -> bool:
    """A mismatch share over the bar; at a bar of 0 one is enough (it is not noise)."""
    enough = bar == 0 or miss.audited >= MIN_AUDITED
    return enough and miss.mismatches / max(1, miss.audited) > bar


def audit_section(meter: Meter) -> dict[str, dict[str, AuditCountsDoc]]:
    """``/status``'s ``audit``: per backend and asked model (after ``model_map``)."""
    out: dict[str, dict[str, AuditCountsDoc]] = {}
    for (backend, asked), (match, variant, mismatch, absent) in sorted(meter.audits.items()):
        out.setdefault(backend, {})[asked] = {
            "match": match,
            "variant": variant,
            "mismatch": mismatch,
            "absent": absent,
            "last_mismatch": meter.last_mismatch.get((backend, asked)),
        }
    return out


def window_pairs(meter: Meter, route: str, window_s: float) -> list[Pair]:
    """The route's shadow pairs compared over the last ``window_s`` seconds."""
    since = meter.clock() - window_s
    return [pair for at, pair in meter.pairs.get(route, ()) if at >= since]


def prompt_mismatch_since(
    meter: Meter, routes: Sequence[Route], backend: str, since: float
) -> tuple[int, float] | None:
    """(pairs with both counts, share whose prompt tokens differ) of ``backend``'s shadow
    copies on ``routes`` since ``since`` (the meter's clock): a rollout step's comparison."""
    known = [
        pair.prompt_equal
        for route in routes
        if route.shadow is not None and route.shadow.backend == backend
        for at, pair in meter.pairs.get(route.name, ())
        if at >= since and pair.prompt_equal is not None
    ]
    return (len(known), 1.0 - sum(known) / len(known)) if known else None


def prompt_match(cfg: Config, meter: Meter) -> Callable[[str], tuple[int, float] | None]:
    """``Evidence.prompt_match``: (pairs with both counts, share equal) per shadow backend."""

    def share(backend: str) -> tuple[int, float] | None:
        known = [
            pair.prompt_equal
            for route in cfg.routes
            if route.shadow is not None and route.shadow.backend == backend
            for pair in window_pairs(meter, route.name, cfg.rollback.window_s)
            if pair.prompt_equal is not None
        ]
        return (len(known), sum(known) / len(known)) if known else None

    return share


def same_model(cfg: Config, meter: Meter) -> Callable[[str], tuple[int, float] | None]:
    """``Evidence.same_model``: (pairs, p-value) of a shadow backend's pairs over the window,
    on each route that copies to it; the lowest p (the route where it differs most)."""

    def lowest(backend: str) -> tuple[int, float] | None:
        found: list[tuple[float, int]] = []
        for route in cfg.routes:
            if route.shadow is None or route.shadow.backend != backend:
                continue
            pairs = window_pairs(meter, route.name, cfg.rollback.window_s)
            p = same_model_p(pairs)
            if p is not None:
                found.append((p, sum(pair.lengths is not None for pair in pairs)))
        return None if not found else (min(found)[1], min(found)[0])

    return lowest


def shadow_section(cfg: Config, meter: Meter) -> dict[str, dict[str, Any]]:
    """``/status``'s ``shadow``: per route with a ``shadow`` block (SPEC §9)."""
    out: dict[str, dict[str, Any]] = {}
    for route in cfg.routes:
        if route.shadow is None:
            continue
        name, backend = route.name, route.shadow.backend
        calls, errors = meter.shadow_calls.get((name, backend), [0, 0])
        tokens = meter.shadow_tokens.get((name, backend), [0, 0])
        skipped = {cause: n for (r, cause), n in meter.shadow_skipped.items() if r == name}
        pairs = window_pairs(meter, name, cfg.rollback.window_s)
        out[name] = {
            "backend": backend,
            "sample": route.shadow.sample,
            "calls": calls,
            "pairs": len(meter.pairs.get(name, ())),
            "skipped": {"concurrency": 0, "budget": 0, **skipped},
            "errors": errors,
            "tokens": {"input": tokens[0], "output": tokens[1]},
            "cost_usd": round(meter.shadow_spent.get(name, 0.0), 6),
            "cost_today_usd": round(meter.shadow_spent_today(name), 6),
            "max_usd_per_day": route.shadow.max_usd_per_day,
            "window_s": cfg.rollback.window_s,
            "compare": summarize(pairs),
        }
    return out
