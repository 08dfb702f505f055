"""Is a backend what it claims? The model audit's verdicts and the readiness bars (SPEC §9).

Every answer names a model; the audit compares it with the model the backend was asked
for (after its ``model_map``):

    match     the same name (case aside)
    variant   the same name with a date or version suffix: gpt-4.1-2025-04-14, claude-x@001
    mismatch  another name: a relay answering gpt-4.1 calls as gpt-4o-mini
    absent    no model in the answer (or not where it is looked for)

``echoed_model`` reads the name with one bounded search of an answer's first bytes: the
``"model"`` of a JSON body or of a stream's first event comes before any content, and a
``"model"`` inside a content string cannot match (its quotes are escaped there).

Minimum counts (why a verdict waits): a mismatch is not noise (an honest backend never
echoes another model), so one is enough against ``max_model_mismatch_rate: 0``; but a rate
is only shown as a verdict once ``MIN_AUDITED`` answers were read. Latency and token ratios
are noisy: the p95 ratio is judged once both backends have ``MIN_LATENCY_SAMPLES`` calls in
the window (at 100, the p95 rests on the 5 slowest: one outlier cannot move it past 2x), and
the prompt-token agreement once ``MIN_PAIRS`` shadow pairs exist (at 20, one odd pair still
leaves 0.95). A p95 within ``LATENCY_FLOOR_MS`` of the baseline's passes whatever the ratio:
between millisecond answers (local simulators) a 2x ratio is scheduling, not a provider.

The same-model paired test (``compare.same_model_p``): each pair is one prompt answered by
both backends. When both serve one model, the pair's two answers are exchangeable (either
could have come from either side), so the difference of any per-answer statistic is
symmetric about 0, whatever the prompt. The statistic is the answer's length in characters
(a cheaper model rarely writes as long as the one it replaces); the test is Wilcoxon's
signed rank, two-sided, zero differences dropped, ties given mid-ranks, its p-value from
the normal approximation with the tie and continuity corrections, once
``MIN_SAME_MODEL_PAIRS`` pairs have two texts (at 30, the approximation's error is small
beside the bars one sets: measured, 9 in 1000 honest windows under 0.01). It sees a
substitute whose lengths differ, not one that matches them: ``canary verify
--distribution`` compares the answers themselves.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

Verdict = Literal["match", "variant", "mismatch", "absent"]
VERDICTS: tuple[Verdict, ...] = ("match", "variant", "mismatch", "absent")

PEEK_BYTES = 4096  # the answer's first bytes searched for its "model"
MIN_AUDITED = 20
MIN_LATENCY_SAMPLES = 100
MIN_PAIRS = 20
MIN_SAME_MODEL_PAIRS = 30  # pairs with both texts before compare.same_model_p is shown
LATENCY_FLOOR_MS = 50.0  # a p95 this close to the baseline's is never "slower", whatever the ratio

_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,128})"')
# A suffix that keeps the name: -2025-04-14, -20250414, -0613, @001, -v1, -v1.2, -001, -latest
_SUFFIX = re.compile(r"(?:[-@](?:\d{4}-\d{2}-\d{2}|\d{3,8}|v\d+(?:[.:]\d+)*|latest|preview))+")


def echoed_model(head: bytes) -> str | None:
    """The ``"model"`` named in an answer's first ``PEEK_BYTES`` bytes, or None.

    In a stream only the first event (past leading ``:`` comments) is searched: the model is
    there in every dialect, and a stream whose first event lacks it costs no more."""
    if head[:1] == b"{":  # a plain JSON body: its model comes before any content
        found = _MODEL.search(head, 0, PEEK_BYTES)
        return found.group(1).decode("utf-8", "replace") if found is not None else None
    start = 0
    while head[start : start + 1] in (b":", b"\r", b"\n"):  # SSE comments before the event
        if head[start] == 0x3A:  # ":"
            start = head.find(b"\n", start)
            if start < 0:
                return None
        start += 1
    end = head.find(b"\n\n", start, PEEK_BYTES)
    found = _MODEL.search(head, start, PEEK_BYTES if end < 0 else end)
    return found.group(1).decode("utf-8", "replace") if found is not None else None


def classify(asked: str, echoed: str | None) -> Verdict:
    """The audit's verdict on an answer naming ``echoed`` when ``asked`` was asked for."""
    if echoed is None or not echoed.strip():
        return "absent"
    a, e = asked.strip().lower(), echoed.strip().lower()
    if a == e:
        return "match"
    if e.startswith(a) and _SUFFIX.fullmatch(e[len(a) :]):
        return "variant"
    if a.startswith(e) and _SUFFIX.fullmatch(a[len(e) :]):
        return "variant"  # asked for a dated name, answered with its alias
    # Some providers prefix a vendor: openai/gpt-4.1 for gpt-4.1.
    if "/" in e and classify(asked, e.rsplit("/", 1)[1]) in ("match", "variant"):
        return "variant"
    return "mismatch"


# --- shadow pairs -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Facts:
    """What one answer said, as far as a pair's comparison needs it (None: not known)."""

    status: int
    ok: bool  # 2xx and read to its end
    latency_s: float
    ttfb_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    model: str | None = None
    text: str | None = None
    tools: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Ask:
    """What the client asked that changes what a pair may be expected to agree on."""

    model: str | None  # the shadow backend's asked model (after its model_map)
    deterministic: bool  # temperature 0: the same text is expected
    json: bool  # a JSON answer was asked for
    tools: bool  # tools were offered


class Pair(NamedTuple):
    """One (answer the client got, shadow answer) compared: shadow against primary.

    Ratios are shadow / primary; None where either side lacks the figure or the question
    does not apply (exact text without temperature 0, JSON validity without JSON asked)."""

    both_ok: bool
    latency_ratio: float | None
    ttfb_ratio: float | None
    prompt_equal: bool | None
    prompt_ratio: float | None
    completion_ratio: float | None
    finish_agree: bool | None
    model_mismatch: bool
    exact: bool | None
    json_agree: bool | None
    tools_agree: bool | None
    lengths: tuple[int, int] | None = None  # (primary, shadow) answer text in characters


def _ratio(shadow: float | None, primary: float | None) -> float | None:
    if shadow is None or primary is None or primary <= 0:
        return None
    return shadow / primary


def _json_valid(text: str | None) -> bool:
    try:
        json.loads(text or "")
    except ValueError:
        return False
    return True


def compare(primary: Facts, shadow: Facts, ask: Ask) -> Pair:
    """The comparison of one pair (SPEC §9): the shadow judged against the client's answer."""
    both = primary.ok and shadow.ok
    known = both and primary.prompt_tokens is not None and shadow.prompt_tokens is not None
    verdict = classify(ask.model, shadow.model) if ask.model and shadow.ok else "absent"
    return Pair(
        both_ok=both,
        latency_ratio=_ratio(shadow.latency_s, primary.latency_s) if both else None,
        ttfb_ratio=_ratio(shadow.ttfb_s, primary.ttfb_s) if both else None,
        prompt_equal=primary.prompt_tokens == shadow.prompt_tokens if known else None,
        prompt_ratio=_ratio(shadow.prompt_tokens, primary.prompt_tokens) if known else None,
        completion_ratio=(
            _ratio(shadow.completion_tokens, primary.completion_tokens) if both else None
        ),
        finish_agree=(
            primary.finish_reason == shadow.finish_reason
            if both and primary.finish_reason and shadow.finish_reason
            else None
        ),
        model_mismatch=verdict == "mismatch",
        exact=primary.text == shadow.text if both and ask.deterministic else None,
        json_agree=_json_valid(primary.text) == _json_valid(shadow.text)
        if both and ask.json
        else None,
        tools_agree=primary.tools == shadow.tools if both and ask.tools else None,
        lengths=(
            (len(primary.text), len(shadow.text))
            if both and primary.text is not None and shadow.text is not None
            else None
        ),
    )


def _share(values: Sequence[bool | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known) / len(known), 4) if known else None


def _quantile(values: Sequence[float | None], q: float) -> float | None:
    known = sorted(v for v in values if v is not None)
    if not known:
        return None
    return round(known[min(len(known) - 1, int(q * len(known)))], 4)


def summarize(pairs: Sequence[Pair]) -> dict[str, float | int | None]:
    """``shadow.<route>.compare`` over the window: shares agreeing and median ratios.

    Plain shares and quantiles, kept per pair, so a stronger statistical test (a paired
    test over the ratios, say) can be put beside them later from the same records."""
    return {
        "pairs": len(pairs),
        "status_agreement": _share([p.both_ok for p in pairs]),
        "prompt_tokens_match": _share([p.prompt_equal for p in pairs]),
        "prompt_tokens_ratio_p50": _quantile([p.prompt_ratio for p in pairs], 0.5),
        "completion_tokens_ratio_p50": _quantile([p.completion_ratio for p in pairs], 0.5),
        "latency_ratio_p50": _quantile([p.latency_ratio for p in pairs], 0.5),
        "latency_ratio_p95": _quantile([p.latency_ratio for p in pairs], 0.95),
        "ttfb_ratio_p50": _quantile([p.ttfb_ratio for p in pairs], 0.5),
        "finish_reason_agreement": _share([p.finish_agree for p in pairs]),
        "exact_match": _share([p.exact for p in pairs]),
        "json_agreement": _share([p.json_agree for p in pairs]),
        "tool_call_agreement": _share([p.tools_agree for p in pairs]),
        "model_mismatch": sum(p.model_mismatch for p in pairs),
        "same_model_p": same_model_p(pairs),
    }


def same_model_p(pairs: Sequence[Pair]) -> float | None:
    """The paired test's p-value over the pairs' answer lengths; None below the minimum."""
    known = [p.lengths for p in pairs if p.lengths is not None]
    if len(known) < MIN_SAME_MODEL_PAIRS:
        return None
    return round(signed_rank_p([float(b - a) for a, b in known]), 6)


def signed_rank_p(differences: Sequence[float]) -> float:
    """Wilcoxon's signed-rank test, two-sided, normal approximation with the tie and
    continuity corrections;
    zero differences are dropped, and none left means no evidence (1.0)."""
    nonzero = sorted((abs(d), d > 0) for d in differences if d != 0)
    n = len(nonzero)
    if n == 0:
        return 1.0
    positive = ties = 0.0
    i = 0
    while i < n:  # mid-ranks over each run of equal magnitudes
        j = i
        while j + 1 < n and nonzero[j + 1][0] == nonzero[i][0]:
            j += 1
        rank, size = (i + j) / 2 + 1, j - i + 1
        positive += rank * sum(up for _, up in nonzero[i : j + 1])
        ties += size**3 - size
        i = j + 1
    mean = n * (n + 1) / 4
    variance = n * (n + 1) * (2 * n + 1) / 24 - ties / 48
    if variance <= 0:
        return 1.0
    z = max(0.0, abs(positive - mean) - 0.5) / math.sqrt(variance)  # continuity corrected
    return min(1.0, math.erfc(z / math.sqrt(2)))
