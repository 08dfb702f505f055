"""The demo's verdict: what the clients saw, when the circuit opened and closed, what it
cost, and whether the story played out (PASS) or not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from canary.tools.console import projection_pending
from canary.tools.demo.story import BASELINE, CANARY, Record, Timeline
from canary.tools.demo.view import client_view, verdict


@dataclass(frozen=True, slots=True)
class Summary:
    requests: int
    failures: int
    fallbacks: int
    canary_failed_before_rollback: int
    first_failure_at: float | None
    opened_at: float | None
    closed_at: float | None
    closed_again: bool
    verdict: str
    cost: str = "-"

    @property
    def ok(self) -> bool:
        """The story played out: rolled back, restored, and no client saw an error."""
        return self.opened_at is not None and self.closed_again and self.failures == 0


def summarize(records: Sequence[Record], timeline: Timeline, status: Mapping[str, Any]) -> Summary:
    opened = timeline.opened_at
    canary_failures = [r.t for r in records if r.canary_failed]
    before = [t for t in canary_failures if opened is None or t < opened]
    view = client_view(records)
    return Summary(
        requests=view.sent,
        failures=view.failed,
        fallbacks=view.fallbacks,
        canary_failed_before_rollback=len(before),
        first_failure_at=min(canary_failures, default=None),
        opened_at=opened,
        closed_at=timeline.closed_at,
        closed_again=timeline.closed_again,
        verdict=verdict(status),
        cost=cost_line(status),
    )


def cost_line(status: Mapping[str, Any]) -> str:
    """Tokens and cost per backend, and the projected savings, from the last /status."""
    backends = status.get("backends") or {}
    parts = []
    for name, b in backends.items():
        tokens = b.get("tokens") or {}
        usd = b.get("cost_usd")
        money = "no price" if usd is None else f"${usd:,.4f}"
        parts.append(
            f"{name} {tokens.get('input', 0):,} in / {tokens.get('output', 0):,} out {money}"
        )
    migration = status.get("migration") or {}
    savings = migration.get("projected_monthly_savings_usd")
    projected = "unknown" if savings is None else f"${savings:,.2f}"
    if savings is None and projection_pending(status.get("cost") or {}):
        projected = f"not yet ({migration.get('projection_basis')})"  # a demo is minutes short
    return f"{'; '.join(parts) or '-'}; projected monthly savings {projected}"


def format_summary(s: Summary) -> str:
    def at(t: float | None) -> str:
        return "-" if t is None else f"{t:.1f} s"

    if s.opened_at is None:
        rollback = "never (the circuit did not open)"
    elif s.first_failure_at is None:
        rollback = f"circuit open at {at(s.opened_at)} (no relay failure seen by the client)"
    else:
        took = s.opened_at - s.first_failure_at
        rollback = (
            f"{took:.1f} s (first relay failure at {at(s.first_failure_at)}, "
            f"circuit open at {at(s.opened_at)})"
        )
    closed = f"yes, at {at(s.closed_at)}" if s.closed_again else "no"
    result = "PASS" if s.ok else "FAIL"
    lines = [
        "canary demo summary",
        f"  client requests: {s.requests}",
        f"  client-visible failures: {s.failures}",
        f"  answered by {BASELINE} after {CANARY} failed (fallback): {s.fallbacks}",
        f"  {CANARY} calls failed before the rollback: {s.canary_failed_before_rollback}",
        f"  first failure to rollback: {rollback}",
        f"  circuit opened: {'yes' if s.opened_at is not None else 'no'}",
        f"  circuit closed again after healing: {closed}",
        f"  tokens and cost: {s.cost}",
        f"  final verdict: {s.verdict}",
        f"  result: {result}",
    ]
    return "\n".join(lines)
