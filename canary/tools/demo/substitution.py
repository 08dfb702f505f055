"""``canary demo --scenario substitution``: a relay that never fails, but is not what it
claims. It answers every ``gpt-4.1`` call as ``gpt-4o-mini`` (the simulator's
``--echo-model``) with no error at all: error rates see nothing, the model audit sees
every answer, and the verdict stays "not ready" with the reason in words.

Pure functions of the last ``/status`` document and the client records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from canary.tools.demo.story import BASELINE, CANARY, Record
from canary.tools.demo.view import client_view, verdict

ASKED, ANSWERED_AS = "gpt-4.1", "gpt-4o-mini"
RELAY_ARGS = ("--echo-model", ANSWERED_AS)  # the relay simulator's dishonesty


@dataclass(frozen=True, slots=True)
class SubstitutionSummary:
    requests: int
    failures: int
    relay_answers: int
    relay_errors: int
    mismatches: int
    audited: int
    answered_as: str | None
    ready: bool
    verdict: str

    @property
    def ok(self) -> bool:
        """Caught: no error anywhere, yet every relay answer audited as another model and
        the verdict held at "not ready" on that ground."""
        return (
            self.failures == 0
            and self.relay_errors == 0
            and self.relay_answers > 0
            and self.mismatches > 0
            and self.answered_as == ANSWERED_AS
            and not self.ready
            and "answers as" in self.verdict
        )


def summarize_substitution(
    records: Sequence[Record], status: Mapping[str, Any]
) -> SubstitutionSummary:
    view = client_view(records)
    relay = (status.get("backends") or {}).get(CANARY) or {}
    audit = ((status.get("audit") or {}).get(CANARY) or {}).get(ASKED) or {}
    audited = sum(int(audit.get(k, 0)) for k in ("match", "variant", "mismatch"))
    migration = status.get("migration") or {}
    return SubstitutionSummary(
        requests=view.sent,
        failures=view.failed,
        relay_answers=sum(1 for r in records if r.backend == CANARY and r.status == 200),
        relay_errors=int(relay.get("total_errors", 0)),
        mismatches=int(audit.get("mismatch", 0)),
        audited=audited,
        answered_as=audit.get("last_mismatch"),
        ready=bool(migration.get("ready_for_full_migration")),
        verdict=verdict(status),
    )


def format_substitution(s: SubstitutionSummary) -> str:
    lines = [
        "canary demo summary (substitution)",
        f"  client requests: {s.requests}",
        f"  client-visible failures: {s.failures}",
        f"  answered by {CANARY}: {s.relay_answers}, with {s.relay_errors} errors "
        f"(error rates see nothing wrong)",
        f"  model audit of {CANARY}, asked for {ASKED}: {s.mismatches} of {s.audited} answers "
        f"named {s.answered_as or '-'}",
        f"  {BASELINE} is the baseline; final verdict: {s.verdict}",
        f"  result: {'PASS' if s.ok else 'FAIL'}",
    ]
    return "\n".join(lines)
