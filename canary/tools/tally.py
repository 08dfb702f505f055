"""What a ``canary load`` run saw: each request's ``Outcome``, folded into percentiles, peaks
and shares, and the summary a person reads. The engine (``load``) imports this module,
never the reverse.

Latency and time to first byte count from each request's *scheduled* send time. Peaks are
the most events in any one-second window, sliding rather than aligned to whole seconds.
Percentiles are nearest-rank over every answered request; nothing is sampled.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

LoadResult = dict[str, Any]  # JSON-ready: what ``canary load --json`` prints


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request. Times are on the run's clock; ``status`` 0 means no HTTP answer."""

    scheduled: float
    started: float
    finished: float
    status: int = 0
    error: str | None = None  # timeout | connect | cut | transport | cancelled | backlog
    first_byte: float | None = None
    backend: str | None = None
    fallback: str | None = None
    usage: tuple[int, int] | None = None  # (input, output) tokens, when the answer said

    @property
    def ok(self) -> bool:
        return self.error is None and 200 <= self.status < 300

    @property
    def answered(self) -> bool:
        """A whole HTTP response came back (whatever its status)."""
        return self.status != 0 and self.error is None


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least ``p`` % at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100), at least the first
    return ordered[int(rank) - 1]


def peak_per_second(times: Sequence[float]) -> int:
    """The most events in any one-second window ``(t - 1, t]``."""
    ordered, best, lo = sorted(times), 0, 0
    for hi, t in enumerate(ordered):
        while ordered[lo] <= t - 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def quantiles_ms(values: Sequence[float]) -> dict[str, float | None]:
    """p50, p95, p99 and max of ``values`` (seconds), in milliseconds."""
    points = {"p50": 50, "p95": 95, "p99": 99, "max": 100}
    return {name: _ms(percentile(values, p)) for name, p in points.items()}


class Tally:
    """Folds in outcomes as they arrive (no outcome is kept: a few floats per request)."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.sent = self.answered = self.ok = self.unmetered = 0
        self.status: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.backends: Counter[str] = Counter()
        self.fallbacks: Counter[str] = Counter()
        self.tokens = [0, 0]
        self.latency, self.ttfb, self.lag = array("d"), array("d"), array("d")
        self.starts, self.completions = array("d"), array("d")
        self.last = 0.0

    def add(self, o: Outcome) -> None:
        if o.error not in ("cancelled", "backlog"):  # maybe never sent: no send time
            self.lag.append(max(0.0, o.started - o.scheduled))
            self.starts.append(o.started - self.t0)
        self.last = max(self.last, o.finished - self.t0)
        if o.error is not None:
            self.errors[o.error] += 1
        if o.status:
            self.status[str(o.status)] += 1
        if o.backend:
            self.backends[o.backend] += 1
        if o.fallback:
            self.fallbacks[o.fallback] += 1
        if o.first_byte is not None:
            self.ttfb.append(o.first_byte - o.scheduled)
        if o.usage is not None:  # a stream cut after its usage chunk still used them
            self.tokens[0] += o.usage[0]
            self.tokens[1] += o.usage[1]
        elif o.ok:
            self.unmetered += 1
        if o.answered:
            self.answered += 1
            self.ok += o.ok
            self.latency.append(o.finished - o.scheduled)
            self.completions.append(o.finished - self.t0)

    def figures(self, duration: float, *, stream: bool) -> LoadResult:
        """The figures; rates are over the ``duration`` sent for, or to the last answer if later."""
        elapsed = max(duration, self.last)
        heard = sum(self.backends.values())
        return {
            "sent": self.sent,
            "completed": self.answered,
            "ok": self.ok,
            "elapsed_s": round(elapsed, 3),
            "achieved_qps": round(self.answered / elapsed, 2) if elapsed > 0 else 0.0,
            "peak_qps": peak_per_second(self.completions),
            "peak_sent_qps": peak_per_second(self.starts),
            "latency_ms": quantiles_ms(self.latency),
            "ttfb_ms": quantiles_ms(self.ttfb) if stream else None,
            "send_lag_ms": quantiles_ms(self.lag),
            "status": dict(sorted(self.status.items())),
            "errors": dict(sorted(self.errors.items())),
            "error_rate": round((self.sent - self.ok) / self.sent, 4) if self.sent else 0.0,
            "backends": {
                name: {"responses": n, "percent": round(100 * n / heard, 2)}
                for name, n in sorted(self.backends.items())
            },
            "fallbacks": dict(sorted(self.fallbacks.items())),
            "tokens": {"input": self.tokens[0], "output": self.tokens[1]},
            "unmetered": self.unmetered,
        }


def _points(q: Mapping[str, Any] | None) -> str:
    if not q or q.get("p50") is None:
        return "-"
    return "  ".join(f"{k} {v:.1f}" for k, v in q.items())


def _counts(counts: Mapping[str, int], empty: str = "none") -> str:
    return ", ".join(f"{k}: {n:,}" for k, n in counts.items()) or empty


def format_result(r: Mapping[str, Any]) -> str:
    """The run for a person: the pre-migration audit's figures, one per line."""
    mode = "streamed" if r["stream"] else "not streamed"
    shares = ", ".join(
        f"{name} {b['percent']:.1f}% ({b['responses']:,})" for name, b in r["backends"].items()
    )
    tokens = r["tokens"]
    lines = [
        f"canary load: {r['target']}  {r['qps']:g} req/s for {r['duration_s']:g} s "
        f"({r['model']}, {mode}, at most {r['concurrency']} in flight)",
        f"  sent {r['sent']:,}  completed {r['completed']:,}  ok {r['ok']:,}  "
        f"in {r['elapsed_s']:.2f} s" + ("  (stopped early)" if r.get("stopped_early") else ""),
        f"  qps: {r['achieved_qps']:.1f} average; peak {r['peak_qps']} completed, "
        f"{r['peak_sent_qps']} sent in any 1 s",
        f"  latency ms from the scheduled send: {_points(r['latency_ms'])}",
    ]
    if r.get("ttfb_ms") is not None:
        lines.append(f"  time to first byte ms:             {_points(r['ttfb_ms'])}")
    lines += [
        f"  sent late by ms (concurrency cap, busy client): {_points(r['send_lag_ms'])}",
        f"  status: {_counts(r['status'])}",
        f"  errors: {_counts(r['errors'])}",
        f"  error rate: {100 * r['error_rate']:.2f}%",
        f"  backends (x-canary-backend): {shares or 'no header seen'}",
        f"  fallbacks (x-canary-fallback, the backend that failed first): "
        f"{_counts(r['fallbacks'])}",
        f"  tokens (usage): {tokens['input']:,} input, {tokens['output']:,} output"
        + (f"; {r['unmetered']:,} answers carried no usage" if r["unmetered"] else ""),
    ]
    return "\n".join(lines)
