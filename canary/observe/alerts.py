"""Spend alerts (SPEC §11): told once per crossing, and once when it clears.

``AlertBook`` keeps, per (backend, kind), whether an alert is firing; ``judge`` is called
with the current truth each time the figures move, and only a change is told: an event
for ``/status``, one warning log line, and each listener (the webhook sender). Kinds:
``runway`` (balance runs out sooner than ``alerts.min_runway_h``), ``billing_ratio`` (the
bill over the readiness bar) and ``credit_spent`` (the provider refused for spent credit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from canary.observe.document import EventDoc

log = structlog.get_logger("canary.observe.alerts")

MAX_EVENTS = 50


@dataclass(frozen=True, slots=True)
class Alert:
    """One crossing: ``firing`` True when the condition began, False when it cleared."""

    at: datetime
    backend: str
    kind: str  # runway | billing_ratio | credit_spent
    firing: bool
    reason: str

    def event(self) -> EventDoc:
        return {
            "at": self.at.isoformat(),
            "backend": self.backend,
            "from": "ok" if self.firing else self.kind,
            "to": self.kind if self.firing else "ok",
            "reason": self.reason,
            "requests": 0,
            "errors": 0,
            "origin": "local",
        }

    def payload(self) -> dict[str, Any]:
        """What a webhook receives; ``text`` reads as is in a Slack channel."""
        state = "firing" if self.firing else "cleared"
        return {
            "alert": self.kind,
            "backend": self.backend,
            "state": state,
            "reason": self.reason,
            "at": self.at.isoformat(),
            "text": f"canary alert ({state}): {self.reason}",
        }

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), **{k: getattr(self, k) for k in _FIELDS}}


_FIELDS = ("backend", "kind", "firing", "reason")


class AlertBook:
    """Which alerts are firing, the last crossings, and who is told of the next."""

    def __init__(self, wall: Callable[[], float]) -> None:
        self.firing: dict[tuple[str, str], bool] = {}
        self.events: list[Alert] = []
        self.listeners: list[Callable[[Alert], None]] = []
        self._wall = wall

    def judge(self, backend: str, kind: str, firing: bool, reason: str) -> Alert | None:
        """The condition's truth now; an ``Alert`` when that is a crossing."""
        key = (backend, kind)
        if self.firing.get(key, False) == firing:
            return None
        self.firing[key] = firing
        alert = Alert(datetime.fromtimestamp(self._wall(), UTC), backend, kind, firing, reason)
        self.events.append(alert)
        del self.events[:-MAX_EVENTS]
        log.warning(
            "billing.alert",
            backend=backend,
            alert=kind,
            state=alert.payload()["state"],
            reason=reason,
        )
        for listener in self.listeners:
            listener(alert)
        return alert

    def export(self) -> dict[str, Any]:
        return {
            "firing": [[b, k] for (b, k), on in self.firing.items() if on],
            "events": [a.as_dict() for a in self.events],
        }

    def adopt(self, data: dict[str, Any]) -> None:
        """The deciding process's book (a follower shows it; it tells no one)."""
        self.firing = {(str(b), str(k)): True for b, k in data.get("firing", ())}
        self.events = [
            Alert(
                datetime.fromisoformat(e["at"]), e["backend"], e["kind"], e["firing"], e["reason"]
            )
            for e in data.get("events", ())
        ]
