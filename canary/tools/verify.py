"""``canary verify``: is the relay what it claims? A fixed battery of probe calls to the
canary and its baseline, compared side by side (SPEC §7, §9).

Every probe is a Chat Completions call at temperature 0 on a fixed prompt, sent to both
backends as the router would (``base_url``, key in ``api_key_header``, ``model_map``).
Each yields one observation per backend, and the two are judged for *difference*, not
capability: both lacking a feature agree. Before anything is sent, the battery's cost is
estimated from ``pricing`` (every prompt at its length, every answer at its ``max_tokens``)
and the run refuses above ``--max-usd``.

What it cannot see: it catches the sloppy cases (another model echoed, another tokenizer,
inflated counts, another latency profile, temperature-0 answers unlike the baseline's), not
a careful forgery that echoes the right name and bills the right counts (Cai et al., 2025):
that takes the answers' distribution, ``--distribution`` (``canary.tools.distribution``).
Nothing printed comes from a key.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress

from canary.config.model import Backend, Config
from canary.serve.equivalence import classify
from canary.tools.console import literal, titled_table
from canary.tools.verify_probes import (
    LATENCY_NOISE_MS,
    MAX_TOKENS,
    MIN_AGREEMENT,
    PROBES,
    VERIFY_TIMEOUT_S,
    Probe,
    as_int,
    usage_of,
)
from canary.tools.verify_spend import report_spend


@dataclass(slots=True)
class Side:
    """One backend's observations: per probe, its values, latency and errors."""

    backend: Backend
    model: str  # what it is asked for (after model_map)
    seen: dict[str, list[object]] = field(default_factory=dict)
    latency_ms: list[float] = field(default_factory=list)
    completion: list[int] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    tokens: list[int] = field(default_factory=lambda: [0, 0])  # (input, output) it reported


@dataclass(frozen=True, slots=True)
class Row:
    probe: str
    baseline: str
    canary: str
    verdict: str  # agree | differs | both lack

    @property
    def differs(self) -> bool:
        return self.verdict == "differs"


def estimate_usd(cfg: Config, model: str, names: tuple[str, str]) -> float | None:
    """The battery's cost at ``pricing``: prompts at ~1 token per 3 characters plus chat
    overhead, answers at their max_tokens; None when a backend has no price for the model."""
    total = 0.0
    for name in names:
        price = cfg.pricing.get(name, {}).get(model)
        if price is None:
            return None
        for probe in PROBES:
            text = json.dumps(probe.payload)
            prompt, out = len(text) // 3 + 20, int(probe.payload.get("max_tokens", MAX_TOKENS))
            total += probe.calls * (prompt * price.input + out * price.output) / 1e6
    return total


def _headers(backend: Backend) -> dict[str, str]:
    header = backend.api_key_header or "authorization"
    if not backend.api_key:
        return {}
    value = f"Bearer {backend.api_key}" if header == "authorization" else backend.api_key
    return {header: value}


async def _call(client: httpx.AsyncClient, side: Side, probe: Probe) -> None:
    """One probe on one backend; what it observed, or why not (scrubbed of keys later)."""
    payload = {**probe.payload, "model": side.model}
    url = side.backend.base_url + "/chat/completions"
    began = time.perf_counter()
    try:
        if payload.get("stream"):
            answer = await _streamed(client, url, payload, side.backend)
        else:
            r = await client.post(url, json=payload, headers=_headers(side.backend))
            if r.status_code >= 400:
                side.errors[probe.name] = f"HTTP {r.status_code}"
                side.seen.setdefault(probe.name, []).append(None)
                return
            answer = r.json()
    except (httpx.HTTPError, ValueError) as exc:
        side.errors[probe.name] = type(exc).__name__
        side.seen.setdefault(probe.name, []).append(None)
        return
    side.latency_ms.append((time.perf_counter() - began) * 1000)
    side.tokens[0] += as_int(usage_of(answer, "prompt_tokens"))
    side.tokens[1] += as_int(usage_of(answer, "completion_tokens"))
    completion = usage_of(answer, "completion_tokens")
    if probe.name == "echoed model" and isinstance(completion, int):
        side.completion.append(completion)
    side.seen.setdefault(probe.name, []).append(probe.observe(answer))


async def _streamed(
    client: httpx.AsyncClient, url: str, payload: dict[str, Any], backend: Backend
) -> dict[str, Any]:
    """A stream read to its end: whether a usage chunk came before ``[DONE]``."""
    usage: dict[str, Any] = {}
    done = False
    async with client.stream("POST", url, json=payload, headers=_headers(backend)) as r:
        if r.status_code >= 400:
            raise httpx.HTTPStatusError(f"HTTP {r.status_code}", request=r.request, response=r)
        async for line in r.aiter_lines():
            data = line.removeprefix("data:").strip()
            if data == "[DONE]":
                done = True
            elif line.startswith("data:") and data:
                usage = usage or json.loads(data).get("usage") or {}
    return {"streamed_usage": bool(usage) and done, "usage": usage}


def judge(probe: str, base: list[object], canary: list[object], asked: tuple[str, str]) -> Row:
    """One row: the two backends' observations and whether they differ."""
    b, c = (base[-1] if base else None), (canary[-1] if canary else None)
    if probe == "echoed model":
        vb = classify(asked[0], b if isinstance(b, str) else None)
        vc = classify(asked[1], c if isinstance(c, str) else None)
        same = (vb == "mismatch") == (vc == "mismatch")
        return Row(probe, f"{b} ({vb})", f"{c} ({vc})", "agree" if same else "differs")
    if probe == "temperature-0 repeatability":
        b, c = len(set(map(str, base))) == 1, len(set(map(str, canary))) == 1
    if not b and not c and isinstance(b, bool | type(None)) and isinstance(c, bool | type(None)):
        return Row(probe, str(b), str(c), "both lack")
    return Row(probe, str(b), str(c), "agree" if b == c else "differs")


def _ratio_rows(base: Side, canary: Side, bar: float) -> list[Row]:
    rows = []
    if base.completion and canary.completion:
        ratio = statistics.median(canary.completion) / max(1, statistics.median(base.completion))
        verdict = "agree" if 0.5 <= ratio <= 2.0 else "differs"
        rows.append(
            Row("answer length", str(base.completion[0]), str(canary.completion[0]), verdict)
        )
    if base.latency_ms and canary.latency_ms:
        b, c = statistics.median(base.latency_ms), statistics.median(canary.latency_ms)
        # Slower by the readiness bar, and by more than LATENCY_NOISE_MS (a few ms between two
        # local processes is scheduling, not a provider's profile).
        verdict = "differs" if c > bar * b and c - b > LATENCY_NOISE_MS else "agree"
        rows.append(Row("latency (median)", f"{b:.0f} ms", f"{c:.0f} ms", verdict))
    return rows


async def run_battery(
    cfg: Config,
    names: tuple[str, str],
    model: str,
    on_call: Callable[[], None] | None = None,
    spent: dict[str, tuple[int, int]] | None = None,
) -> list[Row]:
    """Every probe on both backends (one at a time per backend, the two side by side);
    ``spent`` gets each backend's (input, output) tokens, as the backends reported them."""
    sides = []
    for name in names:
        backend = cfg.backends[name]
        sides.append(Side(backend, backend.model_map.get(model, model)))
    timeout = httpx.Timeout(VERIFY_TIMEOUT_S, connect=10.0)
    async with httpx.AsyncClient(timeout=timeout) as client:
        for probe in PROBES:
            for _ in range(probe.calls):
                await asyncio.gather(*(_call(client, side, probe) for side in sides))
                if on_call is not None:
                    on_call()
    base, canary = sides
    if spent is not None:
        spent.update({side.backend.name: (side.tokens[0], side.tokens[1]) for side in sides})
    asked = (base.model, canary.model)
    rows = [
        judge(p.name, base.seen.get(p.name, []), canary.seen.get(p.name, []), asked)
        for p in PROBES
        if not p.across
    ]
    bar = cfg.readiness.max_latency_ratio_p95
    return [*rows, agreement_row(base, canary), *_ratio_rows(base, canary, bar)]


def agreement_row(base: Side, canary: Side) -> Row:
    """The share of temperature-0 prompts both backends answered with the same text."""
    name = "temperature-0 answers (across)"
    pairs = [
        (base.seen.get(p.name, [None])[-1], canary.seen.get(p.name, [None])[-1])
        for p in PROBES
        if p.across
    ]
    known = [(b, c) for b, c in pairs if b is not None and c is not None]
    if not known:
        return Row(name, "no answer", "no answer", "both lack")
    same = sum(b == c for b, c in known)
    verdict = "agree" if same / len(known) >= MIN_AGREEMENT else "differs"
    return Row(name, f"{len(known)} prompts", f"{same} the same", verdict)


def calls_per_backend() -> int:
    return sum(p.calls for p in PROBES)


def report_json(rows: list[Row], names: tuple[str, str], model: str, usd: float | None) -> str:
    doc = {
        "baseline": names[0],
        "canary": names[1],
        "model": model,
        "estimated_usd": usd,
        "probes": [
            {"probe": r.probe, names[0]: r.baseline, names[1]: r.canary, "verdict": r.verdict}
            for r in rows
        ],
        "diverges": [r.probe for r in rows if r.differs],
        "equivalent": not any(r.differs for r in rows),
    }
    return json.dumps(doc, indent=2)


def render(console: Console, rows: list[Row], names: tuple[str, str]) -> None:
    table = titled_table(
        f"canary verify: {names[1]} against {names[0]}", "probe", *names, "verdict"
    )
    for r in rows:
        style = "red" if r.differs else "green"
        table.add_row(*literal(r.probe, r.baseline, r.canary), f"[{style}]{r.verdict}[/]")
    console.print(table)
    differs = [r.probe for r in rows if r.differs]
    if differs:
        console.print(f"[red]diverges[/] on {len(differs)} probe(s): " + ", ".join(differs))
    else:
        console.print("[green]equivalent[/] as far as these probes can tell")
    console.print(
        "[dim]Software-only checks catch the sloppy cases (another model echoed, another "
        "tokenizer, inflated counts, another latency profile), not a careful forgery.[/]"
    )


def scrub(text: str, cfg: Config) -> str:
    for secret in cfg.secrets():
        text = text.replace(secret, "***")
    return text


def run_verify(cfg: Config, args: Any, console: Console, progress: bool) -> int:
    """The verb: estimate, refuse over budget (2), probe, print; 0 equivalent, 1 diverges."""
    names = pick_backends(cfg, args)
    if isinstance(names, str):
        print(f"canary verify: {names}", file=sys.stderr)
        return 2
    baseline, canary = names
    usd = estimate_usd(cfg, args.model, names)
    calls = calls_per_backend()
    shown = "unknown (no price in routes.yaml)" if usd is None else f"${usd:.4f}"
    print(
        f"canary verify: {calls} calls to each of {baseline} and {canary} ({args.model}); "
        f"estimated cost {shown} (limit ${args.max_usd:g})",
        file=sys.stderr if args.json else sys.stdout,
        flush=True,
    )
    if usd is not None and usd > args.max_usd:
        print(
            f"canary verify: refused: {shown} is over --max-usd {args.max_usd:g}", file=sys.stderr
        )
        return 2  # nothing was sent: not a verdict on the relay
    spent: dict[str, tuple[int, int]] = {}
    rows = _probe(cfg, names, args.model, progress, spent)
    print(report_spend(cfg, args, spent), file=sys.stderr, flush=True)
    if args.json:
        print(scrub(report_json(rows, names, args.model, usd), cfg))
    else:
        clean = [
            Row(r.probe, scrub(r.baseline, cfg), scrub(r.canary, cfg), r.verdict) for r in rows
        ]
        render(console, clean, names)
    return 1 if any(r.differs for r in rows) else 0


def _probe(
    cfg: Config,
    names: tuple[str, str],
    model: str,
    progress: bool,
    spent: dict[str, tuple[int, int]],
) -> list[Row]:
    if not progress:
        return asyncio.run(run_battery(cfg, names, model, spent=spent))
    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("probing", total=calls_per_backend())
        advance = lambda: bar.advance(task)  # noqa: E731
        return asyncio.run(run_battery(cfg, names, model, advance, spent))


def pick_backends(cfg: Config, args: Any) -> tuple[str, str] | str:
    """(baseline, canary) from ``--against`` and ``--backend`` or the routes; or the problem."""
    canary = args.backend or _canary_of(cfg)
    baseline = args.against or _baseline_of(cfg, canary)
    for name in (canary, baseline):
        if name not in cfg.backends:
            return f"unknown backend {name!r}"
    return baseline, canary


def _canary_of(cfg: Config) -> str:
    """The first non-baseline backend with weight on a route (else the first shadow one)."""
    for route in cfg.routes:
        for name, weight in route.weights.items():
            if name != route.baseline and weight > 0:
                return name
    shadows = [r.shadow.backend for r in cfg.routes if r.shadow is not None]
    return shadows[0] if shadows else next(iter(cfg.backends))


def _baseline_of(cfg: Config, canary: str) -> str:
    for route in cfg.routes:
        if canary in route.weights and route.baseline != canary:
            return route.baseline
    return next(n for n in cfg.backends if n != canary)
