"""Lifetime counters behind ``/metrics``, token cost and the ROI report.

The proxy bumps plain ints in dicts keyed by short tuples (one or two dict updates per
call, no Prometheus object, no lock: one event loop per process). Prometheus text,
``/status`` and ``canary report`` are rendered from these counters when asked
(``canary.observe.metrics``, ``canary.observe.cost``), so scraping costs the scraper,
not the request.

Labels stay low-cardinality: routes and backends come from routes.yaml; a model name
comes from the client, so at most ``MAX_MODELS`` distinct names are kept and the rest
count as ``other``. Tokens are kept per (route, backend, model), from which every cost
figure is derived: what was spent, and what the same traffic would cost on each route's
baseline or canary. A ring of 10-second slots over the last 5 minutes gives the live
token rate for the monthly projection, and the time of the first metered call says how
much traffic that projection rests on.

With ``--workers N`` each worker exports its counters (``export``) and any worker can
sum everyone's into a fresh ``Meter`` (``absorb``), so every worker serves one view.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from canary.safety.equivalence import VERDICTS, Pair, Verdict
from canary.types import Clock

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
MAX_MODELS = 100
MAX_PAIRS = 2000  # shadow pairs kept per route (the window's worth at any sane sample)
OTHER_MODEL = "other"
RATE_SLOT_S = 10
RATE_SLOTS = 30  # 5 minutes
_CLASS = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")
_SEP = "\x1f"  # joins tuple keys in exports; cannot occur in route, backend or model names


def status_class(status: int) -> str:
    """``2xx`` ... ``5xx``; a call that got no status (transport failure) is a ``5xx``."""
    return _CLASS[status // 100] if 100 <= status < 600 else "5xx"


class Meter:
    """Counters for one process (see the module docstring)."""

    def __init__(self, clock: Clock, wall: Clock = time.time) -> None:
        self.clock = clock
        self.started_at = wall()
        self.requests: dict[tuple[str, str, str], int] = {}  # (route, backend, class)
        self.latency: dict[str, list[float]] = {}  # backend -> bucket counts, +Inf, sum
        self.failures: dict[tuple[str, str], int] = {}  # (backend, kind)
        self.retries: dict[str, int] = {}
        self.fallbacks: dict[tuple[str, str], int] = {}  # (route, backend that failed)
        self.limiter_waits: dict[str, int] = {}
        self.limiter_wait_s: dict[str, float] = {}
        self.limiter_rejections: dict[str, int] = {}
        self.tokens: dict[tuple[str, str, str], list[int]] = {}  # -> [calls, input, output]
        # Priced at the call, at the prices then in routes.yaml: a counter never goes back.
        self.spent: dict[tuple[str, str], float] = {}  # (backend, model) -> USD
        self.unpriced: dict[tuple[str, str], list[int]] = {}  # (backend, model) -> [in, out]
        self.unmetered: dict[str, int] = {}  # answered calls without a usage object
        self.rate: dict[int, dict[tuple[str, str], list[int]]] = {}  # slot -> (route, model)
        self.internal_errors = 0  # faults of the router itself, answered as 500
        # WebSocket sessions (SPEC §3a): backend -> [open, total, cut, frames_in,
        # frames_out, bytes_in, bytes_out] ("in": client -> upstream)
        self.sessions: dict[str, list[int]] = {}
        self.first_usage_at: float | None = None  # on ``clock``: when metered traffic began
        # Model audit (SPEC §9): (backend, asked model) -> [match, variant, mismatch, absent]
        self.audits: dict[tuple[str, str], list[int]] = {}
        self.last_mismatch: dict[tuple[str, str], str] = {}  # -> the name it answered as
        self.mismatch_at: dict[tuple[str, str], float] = {}  # -> wall time of the last one
        self.audit_events: list[tuple[float, str, str, str]] = []  # (at, backend, asked, as)
        # Shadow traffic (SPEC §9), apart from the live counters above.
        self.shadow_calls: dict[tuple[str, str], list[int]] = {}  # (route, backend) -> [n, err]
        self.shadow_skipped: dict[tuple[str, str], int] = {}  # (route, cause)
        self.shadow_tokens: dict[tuple[str, str], list[int]] = {}  # -> [input, output]
        self.shadow_spent: dict[str, float] = {}  # route -> USD, lifetime
        self.shadow_day: dict[str, tuple[int, float]] = {}  # route -> (day, USD that day)
        self.pairs: dict[str, deque[tuple[float, Pair]]] = {}  # route -> (clock, pair)
        # Spend audit (SPEC §11): what was sent beside the live calls, priced, per backend.
        self.shadow_usd: dict[str, float] = {}  # backend -> USD of its shadow copies
        self.verify_usd: dict[str, float] = {}  # backend -> USD of ``canary verify`` probes
        self.credit_codes: dict[str, str] = {}  # backend -> the code of its last spent credit
        self._wall = wall
        self._models: set[str] = set()

    # -- the hot path ------------------------------------------------------------------

    def call(self, route: str, backend: str, status: int, seconds: float) -> None:
        """One finished call to ``backend`` (or a refusal, with backend ``""``)."""
        key = (route, backend, _CLASS[status // 100] if 100 <= status < 600 else "5xx")
        self.requests[key] = self.requests.get(key, 0) + 1
        if backend:
            hist = self.latency.get(backend)
            if hist is None:
                hist = self.latency[backend] = [0.0] * (len(LATENCY_BUCKETS_S) + 2)
            hist[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
            hist[-1] += seconds

    def failure(self, backend: str, kind: str) -> None:
        """An upstream failure: ``timeout``, ``connect``, ``5xx``, ``429``, ``stream_cut``,
        ``401``/``402``/``403`` (key, credit, account refused) or ``rejected``."""
        key = (backend, kind)
        self.failures[key] = self.failures.get(key, 0) + 1

    def usage(
        self,
        route: str,
        backend: str,
        model: str | None,
        tokens: tuple[int, int],
        price: tuple[float, float] | None,
    ) -> None:
        """Tokens a provider reported for one call; ``model`` is the one the client asked
        for, ``price`` its (input, output) USD per million tokens on ``backend``, if known."""
        model = self._model(model)
        if price is None:
            missing = self.unpriced.get((backend, model))
            if missing is None:
                missing = self.unpriced[(backend, model)] = [0, 0]
            missing[0] += tokens[0]
            missing[1] += tokens[1]
        else:
            usd = (tokens[0] * price[0] + tokens[1] * price[1]) / 1e6
            self.spent[(backend, model)] = self.spent.get((backend, model), 0.0) + usd
        key = (route, backend, model)
        row = self.tokens.get(key)
        if row is None:
            row = self.tokens[key] = [0, 0, 0]
        row[0] += 1
        row[1] += tokens[0]
        row[2] += tokens[1]
        now = self.clock()
        if self.first_usage_at is None:
            self.first_usage_at = now
        slot = int(now // RATE_SLOT_S)
        rates = self.rate.get(slot)
        if rates is None:
            rates = self.rate[slot] = {}
            for old in [s for s in self.rate if s <= slot - RATE_SLOTS]:
                del self.rate[old]
        pair = rates.get((route, model))
        if pair is None:
            pair = rates[(route, model)] = [0, 0]
        pair[0] += tokens[0]
        pair[1] += tokens[1]

    def credit(self, backend: str, code: str) -> None:
        """A call refused for spent credit; ``code`` is the provider's (``insufficient_quota``)."""
        self.credit_codes[backend] = code

    def verified(self, backend: str, usd: float) -> None:
        """``canary verify`` reported its probes' cost to ``backend`` (SPEC §11)."""
        self.verify_usd[backend] = self.verify_usd.get(backend, 0.0) + usd

    def metered_usd(self) -> dict[str, float]:
        """Per backend, the cost at ``pricing`` of every call sent to it: client calls (their
        retries included), shadow copies and ``verify`` probes (SPEC §11)."""
        out: dict[str, float] = {}
        for (backend, _), usd in self.spent.items():
            out[backend] = out.get(backend, 0.0) + usd
        for extra in (self.shadow_usd, self.verify_usd):
            for backend, usd in extra.items():
                out[backend] = out.get(backend, 0.0) + usd
        return out

    def session_opened(self, backend: str) -> None:
        """A WebSocket session to ``backend`` was accepted upstream."""
        row = self.sessions.get(backend)
        if row is None:
            row = self.sessions[backend] = [0] * 7
        row[0] += 1
        row[1] += 1

    def session_closed(self, backend: str, cut: bool, tally: tuple[int, int, int, int]) -> None:
        """An open session ended; ``tally``: frames in, frames out, bytes in, bytes out."""
        row = self.sessions.setdefault(backend, [0] * 7)
        row[0] -= 1
        row[2] += cut
        for i, n in enumerate(tally, 3):
            row[i] += n

    def no_usage(self, backend: str) -> None:
        """An answered call whose usage could not be read (a stream without include_usage)."""
        self.unmetered[backend] = self.unmetered.get(backend, 0) + 1

    def retry(self, backend: str) -> None:
        self.retries[backend] = self.retries.get(backend, 0) + 1

    def fallback(self, route: str, failed: str) -> None:
        key = (route, failed)
        self.fallbacks[key] = self.fallbacks.get(key, 0) + 1

    def waited(self, backend: str, seconds: float) -> None:
        """A call queued ``seconds`` for a limiter slot before it could start."""
        self.limiter_waits[backend] = self.limiter_waits.get(backend, 0) + 1
        self.limiter_wait_s[backend] = self.limiter_wait_s.get(backend, 0.0) + seconds

    def audit(self, backend: str, asked: str, verdict: Verdict, echoed: str | None) -> bool:
        """One answer audited; True when it is the backend's first mismatch for ``asked``."""
        key = (backend, self._model(asked))
        row = self.audits.get(key)
        if row is None:
            row = self.audits[key] = [0, 0, 0, 0]
        row[VERDICTS.index(verdict)] += 1
        if verdict != "mismatch" or echoed is None:
            return False
        first = key not in self.last_mismatch
        self.last_mismatch[key] = echoed[:128]
        self.mismatch_at[key] = self._wall()
        if first:
            self.audit_events.append((self._wall(), backend, key[1], echoed[:128]))
            del self.audit_events[:-50]
        return first

    def shadow_skip(self, route: str, cause: str) -> None:
        """A copy not sent: ``concurrency`` (max_concurrency) or ``budget`` (max_usd_per_day)."""
        key = (route, cause)
        self.shadow_skipped[key] = self.shadow_skipped.get(key, 0) + 1

    def shadow_spent_today(self, route: str) -> float:
        day, usd = self.shadow_day.get(route, (0, 0.0))
        return usd if day == int(self._wall() // 86_400) else 0.0

    def shadow_call(
        self, route: str, backend: str, ok: bool, tokens: tuple[int, int] | None, usd: float
    ) -> None:
        """One shadow call ended: counted, its tokens and cost kept apart from live ones."""
        row = self.shadow_calls.setdefault((route, backend), [0, 0])
        row[0] += 1
        row[1] += not ok
        if tokens is not None:
            kept = self.shadow_tokens.setdefault((route, backend), [0, 0])
            kept[0] += tokens[0]
            kept[1] += tokens[1]
        self.shadow_spent[route] = self.shadow_spent.get(route, 0.0) + usd
        self.shadow_usd[backend] = self.shadow_usd.get(backend, 0.0) + usd
        today = int(self._wall() // 86_400)
        self.shadow_day[route] = (today, self.shadow_spent_today(route) + usd)

    def pair(self, route: str, pair: Pair) -> None:
        """One compared pair; the last ``MAX_PAIRS`` per route are kept for the window."""
        kept = self.pairs.get(route)
        if kept is None:
            kept = self.pairs[route] = deque(maxlen=MAX_PAIRS)
        kept.append((self.clock(), pair))

    def internal_error(self) -> None:
        self.internal_errors += 1

    def rejected(self, backend: str) -> None:
        self.limiter_rejections[backend] = self.limiter_rejections.get(backend, 0) + 1

    def _model(self, model: str | None) -> str:
        if model is None:
            return "unknown"
        if model in self._models:
            return model
        if len(self._models) >= MAX_MODELS or len(model) > 128 or _SEP in model:
            return OTHER_MODEL
        self._models.add(model)
        return model

    # -- reading -----------------------------------------------------------------------

    def token_rate(self) -> dict[tuple[str, str], tuple[float, float]]:
        """Tokens per second per (route, model) over the last full slots (up to 5 minutes)."""
        now = int(self.clock() // RATE_SLOT_S)
        slots = [s for s in self.rate if now - RATE_SLOTS < s < now]
        if not slots:  # under one full slot of traffic: use the current one
            slots = [s for s in self.rate if s == now]
            span = max(1.0, self.clock() - now * RATE_SLOT_S)
        else:
            span = float(RATE_SLOT_S * (now - min(slots)))
        out: dict[tuple[str, str], list[int]] = {}
        for s in slots:
            for key, (tin, tout) in self.rate[s].items():
                row = out.setdefault(key, [0, 0])
                row[0] += tin
                row[1] += tout
        return {k: (v[0] / span, v[1] / span) for k, v in out.items()}

    def metered(self) -> tuple[int, float]:
        """(calls with usage, seconds since the first of them): what a projection rests on."""
        calls = sum(row[0] for row in self.tokens.values())
        if self.first_usage_at is None:
            return calls, 0.0
        return calls, max(0.0, self.clock() - self.first_usage_at)

    def tokens_by_backend(self) -> Iterator[tuple[str, str, int, int, int]]:
        """(backend, model, calls, input, output), summed over routes."""
        out: dict[tuple[str, str], list[int]] = {}
        for (_, backend, model), (calls, tin, tout) in self.tokens.items():
            row = out.setdefault((backend, model), [0, 0, 0])
            row[0] += calls
            row[1] += tin
            row[2] += tout
        for (backend, model), (calls, tin, tout) in sorted(out.items()):
            yield backend, model, calls, tin, tout

    # -- workers -----------------------------------------------------------------------

    def export(self) -> dict[str, Any]:
        """Everything, JSON-ready (tuple keys joined), for the other workers to absorb."""

        def flat(d: dict[Any, Any]) -> dict[str, Any]:
            return {_SEP.join(k) if isinstance(k, tuple) else k: v for k, v in d.items()}

        return {
            "started_at": self.started_at,
            "requests": flat(self.requests),
            "latency": self.latency,
            "failures": flat(self.failures),
            "retries": self.retries,
            "fallbacks": flat(self.fallbacks),
            "limiter_waits": self.limiter_waits,
            "limiter_wait_s": self.limiter_wait_s,
            "limiter_rejections": self.limiter_rejections,
            "tokens": flat(self.tokens),
            "spent": flat(self.spent),
            "unpriced": flat(self.unpriced),
            "unmetered": self.unmetered,
            "rate": {str(s): flat(r) for s, r in self.rate.items()},
            "internal_errors": self.internal_errors,
            "sessions": self.sessions,
            "first_usage_at": self.first_usage_at,
            "audits": flat(self.audits),
            "last_mismatch": flat(self.last_mismatch),
            "mismatch_at": flat(self.mismatch_at),
            "audit_events": self.audit_events,
            "shadow_calls": flat(self.shadow_calls),
            "shadow_skipped": flat(self.shadow_skipped),
            "shadow_tokens": flat(self.shadow_tokens),
            "shadow_spent": self.shadow_spent,
            "pairs": {r: [[t, list(p)] for t, p in kept] for r, kept in self.pairs.items()},
            "shadow_usd": self.shadow_usd,
            "verify_usd": self.verify_usd,
            "credit_codes": self.credit_codes,
        }

    def absorb(self, data: dict[str, Any]) -> None:
        """Add another worker's ``export()`` into these counters."""
        self.started_at = min(self.started_at, float(data["started_at"]))
        self.internal_errors += int(data.get("internal_errors", 0))
        first = data.get("first_usage_at")  # the workers share one monotonic clock (the host's)
        if first is not None:
            began = self.first_usage_at
            self.first_usage_at = float(first) if began is None else min(began, float(first))
        for name in ("requests", "failures", "fallbacks", "spent"):
            mine = getattr(self, name)
            for k, v in data[name].items():
                key = tuple(k.split(_SEP))
                mine[key] = mine.get(key, 0) + v
        for name in ("retries", "limiter_waits", "limiter_wait_s", "limiter_rejections"):
            mine = getattr(self, name)
            for k, v in data[name].items():
                mine[k] = mine.get(k, 0) + v
        for k, counts in data.get("audits", {}).items():
            row = self.audits.setdefault(_key2(k), [0, 0, 0, 0])
            for i, n in enumerate(counts):
                row[i] += n
        for k, name in data.get("last_mismatch", {}).items():
            self.last_mismatch[_key2(k)] = name
        for k, at in data.get("mismatch_at", {}).items():
            self.mismatch_at[_key2(k)] = max(at, self.mismatch_at.get(_key2(k), 0.0))
        for at, backend, asked, echoed in data.get("audit_events", ()):
            if not any(e[1:] == (backend, asked, echoed) for e in self.audit_events):
                self.audit_events.append((at, backend, asked, echoed))
        self._absorb_shadow(data)
        for k, counts in data.get("sessions", {}).items():
            row = self.sessions.setdefault(k, [0] * 7)
            for i, n in enumerate(counts):
                row[i] += n
        for k, v in data["unmetered"].items():
            self.unmetered[k] = self.unmetered.get(k, 0) + v
        for backend, hist in data["latency"].items():
            own = self.latency.setdefault(backend, [0.0] * len(hist))
            for i, n in enumerate(hist):
                own[i] += n
        for k, (tin, tout) in data["unpriced"].items():
            backend, model = k.split(_SEP)
            missing = self.unpriced.setdefault((backend, model), [0, 0])
            missing[0] += tin
            missing[1] += tout
        for k, (calls, tin, tout) in data["tokens"].items():
            row = self.tokens.setdefault(_key3(k), [0, 0, 0])
            row[0] += calls
            row[1] += tin
            row[2] += tout
        for slot, rates in data["rate"].items():
            mine_rates = self.rate.setdefault(int(slot), {})
            for k, (tin, tout) in rates.items():
                route, model = k.split(_SEP)
                pair = mine_rates.setdefault((route, model), [0, 0])
                pair[0] += tin
                pair[1] += tout

    def _absorb_shadow(self, data: dict[str, Any]) -> None:
        for name in ("shadow_calls", "shadow_tokens"):
            mine = getattr(self, name)
            for k, counts in data.get(name, {}).items():
                row = mine.setdefault(_key2(k), [0, 0])
                row[0] += counts[0]
                row[1] += counts[1]
        for k, n in data.get("shadow_skipped", {}).items():
            key = _key2(k)
            self.shadow_skipped[key] = self.shadow_skipped.get(key, 0) + n
        for route, usd in data.get("shadow_spent", {}).items():
            self.shadow_spent[route] = self.shadow_spent.get(route, 0.0) + usd
        for name in ("shadow_usd", "verify_usd"):
            mine = getattr(self, name)
            for backend, usd in data.get(name, {}).items():
                mine[backend] = mine.get(backend, 0.0) + usd
        self.credit_codes.update(data.get("credit_codes", {}))
        for route, kept in data.get("pairs", {}).items():
            for t, fields in kept:
                self.pair_at(route, float(t), Pair(*fields))

    def pair_at(self, route: str, at: float, pair: Pair) -> None:
        kept = self.pairs.setdefault(route, deque(maxlen=MAX_PAIRS))
        kept.append((at, pair))


def _key2(k: str) -> tuple[str, str]:
    backend, model = k.split(_SEP)
    return backend, model


def _key3(k: str) -> tuple[str, str, str]:
    route, backend, model = k.split(_SEP)
    return route, backend, model
