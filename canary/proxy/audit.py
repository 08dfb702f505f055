"""The model audit of one answer (SPEC §9): what it names against what was asked for.

The relay keeps a reference to the answer's first read (or a stream's first event); one
bounded search reads its ``"model"`` (``canary.safety.equivalence.echoed_model``, once per
try: ``Try.answered_model``, which the trace reads too), here the verdict is counted, and
a backend's first mismatch per model is logged as a warning.
"""

from __future__ import annotations

import structlog

from canary.config.model import Backend
from canary.observe.meter import Meter
from canary.safety.equivalence import classify

log = structlog.get_logger("canary.proxy")


def audit_answer(
    meter: Meter, backend: Backend, client_model: str | None, echoed: str | None, origin: str
) -> None:
    """Count one answer's verdict (``echoed``: the model it named, ``echoed_model`` of its
    first bytes); ``origin`` is ``live`` or ``shadow`` (for the log)."""
    if client_model is None:
        return  # nothing was asked for by name: nothing to compare with
    asked = backend.model_map.get(client_model, client_model)
    verdict = classify(asked, echoed)
    if meter.audit(backend.name, asked, verdict, echoed):
        log.warning(
            "audit.model_mismatch",
            backend=backend.name,
            asked=asked,
            answered_as=echoed,
            origin=origin,
        )
