"""``canary demo --scenario overbilling``: a relay that never fails and names the right
model, but bills 1.3 times what its own usage says (SPEC §11). Error rates and the model
audit see nothing; the spend audit reads its bill through new-api's billing API, holds it
against canary's meter, and the verdict stays "not ready" with the bill in words.

Pure functions of the last ``/status`` document and the client records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from canary.tools.demo.story import BASELINE, CANARY, Record
from canary.tools.demo.view import client_view, verdict

BILL_FACTOR = 1.3
PRICE = 20.0  # USD per million tokens: high, so the short calls of a demo meter cents
RELAY_ARGS = ("--billing", "new-api", "--bill-factor", str(BILL_FACTOR), "--price", str(PRICE))


def with_billing(routes: str) -> str:
    """The demo's routes.yaml with the relay's bill read every 2 s, priced as it charges."""
    routes = routes.replace(
        "  relay: {base_url:", "  relay: {billing: {api: new-api, poll_s: 2}, base_url:", 1
    )
    return routes.replace(
        "relay: {gpt-4.1: {input: 1.10, output: 1.10}}",
        f"relay: {{gpt-4.1: {{input: {PRICE}, output: {PRICE}}}}}",
    )


@dataclass(frozen=True, slots=True)
class OverbillingSummary:
    requests: int
    failures: int
    relay_answers: int
    ratio: float | None
    billed_usd: float | None
    metered_usd: float | None
    ready: bool
    verdict: str

    @property
    def ok(self) -> bool:
        """Caught: no call failed, yet the bill read ~1.3x the meter and held the verdict."""
        return (
            self.failures == 0
            and self.relay_answers > 0
            and self.ratio is not None
            and self.ratio > 1.2
            and not self.ready
            and "billed $" in self.verdict
        )


def summarize_overbilling(
    records: Sequence[Record], status: Mapping[str, Any]
) -> OverbillingSummary:
    view = client_view(records)
    bill = (status.get("billing") or {}).get(CANARY) or {}
    migration = status.get("migration") or {}
    return OverbillingSummary(
        requests=view.sent,
        failures=view.failed,
        relay_answers=sum(1 for r in records if r.backend == CANARY and r.status == 200),
        ratio=bill.get("ratio"),
        billed_usd=bill.get("billed_usd"),
        metered_usd=bill.get("metered_usd"),
        ready=bool(migration.get("ready_for_full_migration")),
        verdict=verdict(status),
    )


def format_overbilling(s: OverbillingSummary) -> str:
    ratio = "-" if s.ratio is None else f"{s.ratio:.2f}x"
    money = "-" if s.billed_usd is None else f"${s.billed_usd:.4f} for ${s.metered_usd or 0:.4f}"
    lines = [
        "canary demo summary (overbilling)",
        f"  client requests: {s.requests}",
        f"  client-visible failures: {s.failures}",
        f"  answered by {CANARY}: {s.relay_answers} (error rates see nothing wrong)",
        f"  {CANARY}'s bill against canary's meter: {money} metered ({ratio})",
        f"  {BASELINE} is the baseline; final verdict: {s.verdict}",
        f"  result: {'PASS' if s.ok else 'FAIL'}",
    ]
    return "\n".join(lines)
