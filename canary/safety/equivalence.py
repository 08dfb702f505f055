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
leaves 0.95).
"""

from __future__ import annotations

import re
from typing import Literal

Verdict = Literal["match", "variant", "mismatch", "absent"]
VERDICTS: tuple[Verdict, ...] = ("match", "variant", "mismatch", "absent")

PEEK_BYTES = 4096  # the answer's first bytes searched for its "model"
MIN_AUDITED = 20
MIN_LATENCY_SAMPLES = 100
MIN_PAIRS = 20

_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,128})"')
# A suffix that keeps the name: -2025-04-14, -20250414, -0613, @001, -v1, -v1.2, -001, -latest
_SUFFIX = re.compile(r"(?:[-@](?:\d{4}-\d{2}-\d{2}|\d{3,8}|v\d+(?:[.:]\d+)*|latest|preview))+")


def echoed_model(head: bytes) -> str | None:
    """The ``"model"`` named in an answer's first ``PEEK_BYTES`` bytes, or None."""
    found = _MODEL.search(head, 0, PEEK_BYTES)
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
