"""``canary verify --distribution``: the same-model test against two backends (SPEC §7, §9).

The run, in order: the cost estimate from ``pricing`` is printed first, and above
``--max-usd`` the run refuses (exit 2) before anything is sent; then ``--prompts`` K of the
shipped prompts (``canary.tools.samemodel.PROMPTS``) are sent ``--samples`` N times to each
backend at temperature 1, as the router would send them (``base_url``, key header,
``model_map``), cut at ``MAX_TOKENS``; then the MMD test (``canary.tools.samemodel``); then
a table, or with ``--json`` the ``distribution`` document; exit 0 ``same``, 1 ``differs``,
2 when there is no verdict (a refusal, or too few answers).

Calls are bounded: per backend at most ``--concurrency`` in flight and never more than its
``max_concurrency``, and their starts paced to its ``max_qps``; a failed call is tried
``ATTEMPTS`` times in all. A progress bar runs on stderr in a terminal (not with
``--json``). The result is also written beside the config, ``<config>.verify.json``
(``record_path``), with ``at`` and the config's version, for the router's dashboard.
Nothing printed or written comes from a key.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress

from canary.config.model import Config, Price
from canary.tools.console import literal, titled_table, usd
from canary.tools.probe import key_headers
from canary.tools.samemodel import PERMUTATIONS, PROMPTS, Outcome, mmd_test
from canary.tools.verify import pick_backends, scrub
from canary.types import Clock, Sleep

# Defaults measured with bench/samemodel_power.py (docs/same-model.md): 100 honest runs
# flagged none; 100% substitution caught in 100 of 100, 50% in 100 of 100.
ALPHA = 0.01
DEFAULT_PROMPTS = 10
DEFAULT_SAMPLES = 20
MAX_TOKENS = 16  # per answer: the kernel reads the first 128 characters
CONCURRENCY = 8  # calls in flight per backend, at most
ATTEMPTS = 3  # tries per call (429, 5xx, a transport error)
TIMEOUT_S = 60.0
TEST_NAME = "mmd-hamming"


@dataclass(frozen=True, slots=True)
class Plan:
    """What one run sends: K prompts, N answers each, to both backends."""

    names: tuple[str, str]  # (baseline, canary)
    model: str  # asked for, before model_map
    prompts: tuple[str, ...]
    samples: int
    concurrency: int = CONCURRENCY

    @property
    def calls(self) -> int:
        return 2 * len(self.prompts) * self.samples


@dataclass(slots=True)
class Sampled:
    """One backend's answers per prompt, and the tokens its answers reported."""

    answers: list[list[str]]
    tokens: list[int] = field(default_factory=lambda: [0, 0])  # (prompt, completion)
    failed: int = 0


def _price(cfg: Config, backend: str, model: str) -> Price | None:
    return cfg.pricing.get(backend, {}).get(model)


def estimate_usd(cfg: Config, plan: Plan) -> float | None:
    """Every call at ~1 token per 3 characters plus the chat framing, every answer at
    MAX_TOKENS; None when a backend has no price for the model."""
    total = 0.0
    for name in plan.names:
        price = _price(cfg, name, plan.model)
        if price is None:
            return None
        prompt = sum(len(p) // 3 + 10 for p in plan.prompts)
        total += plan.samples * (
            prompt * price.input + len(plan.prompts) * MAX_TOKENS * price.output
        )
    return total / 1e6


class Pacer:
    """A backend's bound: at most ``limit`` calls in flight, starts ``1 / qps`` apart."""

    def __init__(self, limit: int, qps: float | None, clock: Clock, sleep: Sleep) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._gap = 1.0 / qps if qps else 0.0
        self._next = 0.0
        self._clock, self._sleep = clock, sleep
        self.in_flight = self.peak = 0

    async def __aenter__(self) -> None:
        await self._slots.acquire()
        if self._gap:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self._gap  # reserved before sleeping: no two share a slot
            if start > now:
                await self._sleep(start - now)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)

    async def __aexit__(self, *exc: object) -> None:
        self.in_flight -= 1
        self._slots.release()


@dataclass(frozen=True, slots=True)
class Seams:
    """What a test replaces: the transport, the clock and sleep of the pacing, a tick."""

    transport: httpx.AsyncBaseTransport | None = None
    clock: Clock = time.monotonic
    sleep: Sleep = asyncio.sleep
    on_call: Callable[[], None] | None = None


def read_answer(answer: object) -> tuple[str, int, int] | None:
    """A chat completion's text and (prompt, completion) tokens; None when the body is not
    one (a provider's JSON is outside input: any shape is read without raising)."""
    if not isinstance(answer, dict):
        return None
    choices = answer.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        return None
    content = message.get("content")
    usage = answer.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    tokens = [usage.get(k) for k in ("prompt_tokens", "completion_tokens")]
    counts = [t if isinstance(t, int) and not isinstance(t, bool) and t >= 0 else 0 for t in tokens]
    return (content if isinstance(content, str) else ""), counts[0], counts[1]


async def _one(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], pacer: Pacer, side: Sampled
) -> str | None:
    """One sampled answer's text; None after ATTEMPTS failures."""
    for _ in range(ATTEMPTS):
        async with pacer:
            try:
                r = await client.post(url, json=body)
                read = read_answer(r.json()) if r.status_code < 400 else None
            except (httpx.HTTPError, ValueError):
                read = None
        if read is not None:
            side.tokens[0] += read[1]
            side.tokens[1] += read[2]
            return read[0]
    side.failed += 1
    return None


async def _side(cfg: Config, plan: Plan, name: str, seams: Seams) -> Sampled:
    """One backend's N answers to each of the K prompts, within its limits."""
    backend = cfg.backends[name]
    limit = min(plan.concurrency, backend.max_concurrency or plan.concurrency)
    pacer = Pacer(limit, backend.max_qps, seams.clock, seams.sleep)
    model = backend.model_map.get(plan.model, plan.model)
    side = Sampled([[] for _ in plan.prompts])
    timeout = httpx.Timeout(min(TIMEOUT_S, backend.timeout_s), connect=10.0)
    headers = dict(key_headers(backend))
    async with httpx.AsyncClient(
        transport=seams.transport, timeout=timeout, headers=headers, trust_env=False
    ) as client:

        async def ask(k: int) -> None:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": plan.prompts[k]}],
                "temperature": 1,
                "max_tokens": MAX_TOKENS,
            }
            text = await _one(client, backend.base_url + "/chat/completions", body, pacer, side)
            if text is not None:
                side.answers[k].append(text)
            if seams.on_call is not None:
                seams.on_call()

        await asyncio.gather(
            *(ask(k) for k in range(len(plan.prompts)) for _ in range(plan.samples))
        )
    return side


async def sample(cfg: Config, plan: Plan, seams: Seams | None = None) -> tuple[Sampled, Sampled]:
    """Both backends sampled side by side: (baseline, canary)."""
    seams = seams or Seams()
    base, canary = await asyncio.gather(*(_side(cfg, plan, n, seams) for n in plan.names))
    return base, canary


def cost_usd(cfg: Config, plan: Plan, sides: tuple[Sampled, Sampled]) -> float | None:
    """What the answers reported, at ``pricing``; None without a price."""
    total = 0.0
    for name, side in zip(plan.names, sides, strict=True):
        price = _price(cfg, name, plan.model)
        if price is None:
            return None
        total += (side.tokens[0] * price.input + side.tokens[1] * price.output) / 1e6
    return round(total, 6)


def document(plan: Plan, outcome: Outcome, alpha: float, cost: float | None) -> dict[str, Any]:
    """The ``distribution`` object (SPEC §7)."""
    return {
        "test": TEST_NAME,
        "p_value": round(outcome.p_value, 6),
        "alpha": alpha,
        "verdict": "differs" if outcome.p_value < alpha else "same",
        "prompts": outcome.prompts,
        "samples": outcome.samples,
        "calls": plan.calls,
        "cost_usd": cost,
        "statistic": round(outcome.statistic, 6),
        "permutations": outcome.permutations,
    }


def record_path(config: str | os.PathLike[str]) -> Path:
    """Where the last result is kept for the dashboard: ``<config>.verify.json``."""
    path = Path(config)
    return path.with_name(path.name + ".verify.json")


def write_record(cfg: Config, config: str, plan: Plan, doc: dict[str, Any]) -> None:
    """The result, ``at`` and the config version, beside the config (atomically)."""
    record = {
        "distribution": {
            **doc,
            "baseline": plan.names[0],
            "canary": plan.names[1],
            "model": plan.model,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "config_version": cfg.version,
        }
    }
    path = record_path(config)
    try:
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(temporary, path)
    except OSError as exc:  # a read-only config directory: the verdict still stands
        print(f"canary verify: could not write {path}: {exc.strerror}", file=sys.stderr)


def render(console: Console, plan: Plan, doc: dict[str, Any]) -> None:
    baseline, canary = plan.names
    table = titled_table(
        f"canary verify --distribution: {canary} against {baseline} ({plan.model})", "", ""
    )
    rows = [
        ("test", "MMD, Hamming kernel on answer prefixes (Gao et al., ICLR 2025)"),
        ("prompts x samples", f"{doc['prompts']} x {doc['samples']} per backend"),
        ("calls", str(doc["calls"])),
        ("cost", usd(doc["cost_usd"])),
        ("p-value", f"{doc['p_value']:.4f} (alpha {doc['alpha']:g})"),
    ]
    for name, value in rows:
        table.add_row(*literal(name, value))
    console.print(table)
    if doc["verdict"] == "differs":
        console.print(f"[red]differs[/]: {canary}'s answers are not drawn like {baseline}'s")
    else:
        console.print(
            f"[green]same[/] as far as {doc['prompts']} x {doc['samples']} samples can tell"
        )


def _plan(cfg: Config, args: Any) -> Plan | str:
    """The run the arguments ask for, or what is wrong with them."""
    names = pick_backends(cfg, args)
    if isinstance(names, str):
        return names
    if not 1 <= args.prompts <= len(PROMPTS):
        return f"--prompts must be between 1 and {len(PROMPTS)}"
    if not 2 <= args.samples <= 1000:
        return "--samples must be between 2 and 1000"
    if not 0 < args.alpha < 1:
        return "--alpha must be between 0 and 1"
    if not 1 <= args.concurrency <= 256:
        return "--concurrency must be between 1 and 256"
    return Plan(names, args.model, PROMPTS[: args.prompts], args.samples, args.concurrency)


def run_distribution(
    cfg: Config, args: Any, console: Console, progress: bool, seams: Seams | None = None
) -> int:
    """The verb: estimate, refuse over budget (2), sample, test, print, record."""
    plan = _plan(cfg, args)
    if isinstance(plan, str):
        print(f"canary verify: {plan}", file=sys.stderr)
        return 2
    usd_ = estimate_usd(cfg, plan)
    shown = "unknown (no price in routes.yaml)" if usd_ is None else f"${usd_:.4f}"
    print(
        f"canary verify --distribution: {plan.calls} calls ({len(plan.prompts)} prompts x "
        f"{plan.samples} samples x 2 backends, {plan.model}); estimated cost {shown} "
        f"(limit ${args.max_usd:g})",
        file=sys.stderr if args.json else sys.stdout,
        flush=True,
    )
    if usd_ is not None and usd_ > args.max_usd:
        print(
            f"canary verify: refused: {shown} is over --max-usd {args.max_usd:g}", file=sys.stderr
        )
        return 2  # nothing was sent: not a verdict on the relay
    sides = _sample(cfg, plan, progress and not args.json, seams or Seams())
    outcome, failed = _test(plan, sides, getattr(args, "seed", None))
    if outcome is None:
        print(f"canary verify: no verdict: {failed} of {plan.calls} calls failed", file=sys.stderr)
        return 2
    doc = document(plan, outcome, args.alpha, cost_usd(cfg, plan, sides))
    if args.json:
        names = {"baseline": plan.names[0], "canary": plan.names[1], "model": plan.model}
        print(scrub(json.dumps({**names, "distribution": doc}, indent=2), cfg))
    else:
        render(console, plan, doc)
    if failed:
        print(f"canary verify: {failed} of {plan.calls} calls failed (left out)", file=sys.stderr)
    write_record(cfg, args.config, plan, doc)
    return 1 if doc["verdict"] == "differs" else 0


def _test(
    plan: Plan, sides: tuple[Sampled, Sampled], seed: int | None
) -> tuple[Outcome | None, int]:
    """The test on what came back, and the calls that failed; no outcome when more than
    half of the prompts lack 2 answers on a side."""
    failed = sum(s.failed for s in sides)
    rng = random.Random(seed)
    try:
        outcome = mmd_test(*(s.answers for s in sides), rng=rng, permutations=PERMUTATIONS)
    except ValueError:
        return None, failed
    return (None if outcome.prompts * 2 < len(plan.prompts) else outcome), failed


def _sample(cfg: Config, plan: Plan, progress: bool, seams: Seams) -> tuple[Sampled, Sampled]:
    if not progress:
        return asyncio.run(sample(cfg, plan, seams))
    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("sampling", total=plan.calls)
        ticking = Seams(seams.transport, seams.clock, seams.sleep, lambda: bar.advance(task))
        return asyncio.run(sample(cfg, plan, ticking))
