"""A rollout step's analysis: canary against baseline over the step (SPEC §10).

``Figures`` are one backend's calls over the step; ``judge`` turns both sides into one
``Check`` per bar set in ``rollout.analysis``. A check is ``pass``, ``fail`` or
``no_data``; ``no_data`` never passes (a missing figure is not 0, Flagger #1098).

``StepTally`` adds up a backend's window buckets as seconds complete, so the data plane
pays nothing for it: it reads ``Window.export()`` on each control-plane tick.

Optional inputs: the model mismatch rate comes from the model audit (``Rollouts.audit``);
time-to-first-byte is not measured by this build (``Rollouts.extra`` may add it), so a
bar set on it holds the step and says so in ``needs``: set it to null to go without.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from canary.config.model import Analysis
from canary.safety.windows import BINS, percentile


@dataclass(frozen=True, slots=True)
class Figures:
    """One backend over a step; a ``None`` figure has no data."""

    requests: int = 0
    errors: int = 0
    p95_ms: float | None = None
    ttfb_p95_ms: float | None = None
    mismatch_rate: float | None = None
    shadow_mismatch: float | None = None  # shadow pairs with other prompt tokens, over the step

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    value: float | None
    threshold: float
    verdict: str  # pass | fail | no_data
    words: str


# Below this a latency difference is noise for an LLM call (a loaded host's jitter, not the
# provider): both sides of a ratio are read as at least this many ms.
LATENCY_FLOOR_MS = 10.0
# Shadow pairs a step needs before their prompt-token agreement is judged (as readiness).
MIN_SHADOW_PAIRS = 20


def _ratio(canary: float | None, baseline: float | None) -> float | None:
    if canary is None or baseline is None:
        return None
    return max(canary, LATENCY_FLOOR_MS) / max(baseline, LATENCY_FLOOR_MS)


def judge(bars: Analysis, canary: Figures, baseline: Figures | None) -> list[Check]:
    """One check per bar that is set; ``baseline`` None: no baseline figures at all."""
    base = baseline or Figures()
    rows: list[tuple[str, float | None, float | None, str]] = [
        ("error_rate", canary.error_rate, bars.max_error_rate, "no calls to it yet"),
        (
            "latency_ratio_p95",
            _ratio(canary.p95_ms, base.p95_ms),
            bars.max_latency_ratio_p95,
            "no latency on both sides yet",
        ),
        (
            "ttfb_ratio_p95",
            _ratio(canary.ttfb_p95_ms, base.ttfb_p95_ms),
            bars.max_ttfb_ratio_p95,
            "no stream on both sides yet",
        ),
        (
            "model_mismatch_rate",
            canary.mismatch_rate,
            bars.max_model_mismatch_rate,
            "no audited answers in this step yet",
        ),
        (
            "shadow_prompt_mismatch",
            canary.shadow_mismatch,
            bars.max_shadow_prompt_mismatch,
            f"fewer than {MIN_SHADOW_PAIRS} shadow pairs in this step yet",
        ),
    ]
    return [_check(name, v, bar, why) for name, v, bar, why in rows if bar is not None]


def _check(name: str, value: float | None, bar: float, why: str) -> Check:
    label = name.replace("_", " ")
    if value is None:
        return Check(name, None, bar, "no_data", f"{label}: {why}")
    verdict = "fail" if value > bar else "pass"
    sign = ">" if value > bar else "<="
    return Check(name, value, bar, verdict, f"{label} {value:.3f} {sign} {bar:g}")


@dataclass(slots=True)
class StepTally:
    """A backend's calls since the step began, from its window's completed seconds."""

    after: int  # seconds up to and including this one are counted (or before the step)
    requests: int = 0
    errors: int = 0
    hist: list[int] = field(default_factory=lambda: [0] * BINS)

    def add(self, export: dict[str, Any], now_second: int) -> None:
        """Count the buckets of ``Window.export()`` that completed since the last call."""
        newest = self.after
        for row in export["buckets"]:
            second = row[0]
            if self.after < second < now_second:  # the current second is still filling
                self.requests += row[2]
                self.errors += row[3]
                for i, n in row[5:]:
                    self.hist[i] += n
                newest = max(newest, second)
        self.after = max(newest, now_second - 1)

    def figures(self, extra: Callable[[Figures], Figures] | None = None) -> Figures:
        f = Figures(self.requests, self.errors, _p95(self.hist, self.requests))
        return extra(f) if extra is not None else f


def _p95(hist: list[int], total: int) -> float | None:
    return percentile(hist, total, 0.95) if total > 0 else None
