"""The demo's story and what it learns from ``/status``: the routes it runs, each client
``Record``, the circuit's ``Timeline`` and the phase the relay is in.

Pure data and functions of ``/status`` documents and client records: nothing here touches
a process, a socket or the screen.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

CANARY, BASELINE = "relay", "legacy"
REQUEST_TIMEOUT_S = 10.0

ROUTES_YAML = """\
# written by `canary demo`
backends:
  legacy: {{base_url: "http://127.0.0.1:{legacy}/v1", timeout_s: {timeout:g}}}
  relay: {{base_url: "http://127.0.0.1:{relay}/v1", timeout_s: {timeout:g}}}
routes:
  - name: chat
    match: {{paths: [/v1/chat/completions]}}
    weights: {{legacy: 50, relay: 50}}
    baseline: legacy
    fallback: true
  - name: realtime  # WebSocket sessions, shown once the story has played out
    match: {{paths: [/v1/realtime]}}
    weights: {{legacy: 50, relay: 50}}
    baseline: legacy
    fallback: true
rollback:
  window_s: 10
  min_requests: 20
  max_error_rate: {threshold:g}
  open_s: {open_s:g}
  probe_requests: 10  # 5 probes pass a 50%-broken relay 1 time in 32; 10, 1 in 1024
  auto_resume: true
readiness: {{min_requests: 50, max_error_rate: 0.05}}
retry: {{max_attempts: 1}}  # one try per backend: each failed relay call is one fallback
pricing:  # USD per million tokens, as in the example routes.yaml
  legacy: {{gpt-4.1: {{input: 8.00, output: 8.00}}}}
  relay: {{gpt-4.1: {{input: 1.10, output: 1.10}}}}
"""
THRESHOLD = 0.2


def routes_yaml(legacy_port: int, relay_port: int, *, open_s: float = 8) -> str:
    """The demo's routes.yaml for simulators on these ports."""
    return ROUTES_YAML.format(
        legacy=legacy_port,
        relay=relay_port,
        timeout=REQUEST_TIMEOUT_S,
        threshold=THRESHOLD,
        open_s=open_s,
    )


# --- what the client saw, and what /status said ---------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """One client request: when it was sent (s since start), its status (0: no answer)."""

    t: float
    status: int
    backend: str | None = None
    fallback: str | None = None

    @property
    def failed(self) -> bool:
        return self.status != 200

    @property
    def canary_failed(self) -> bool:
        """The canary failed this call: the client saw it, or fallback hid it."""
        return self.fallback == CANARY or (self.backend == CANARY and self.failed)


def event_time(at: object, wall_start: float) -> float | None:
    """An event's ``at`` (ISO 8601 or epoch seconds) as seconds since the demo started."""
    if isinstance(at, int | float) and not isinstance(at, bool):
        return float(at) - wall_start
    if isinstance(at, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(at).timestamp() - wall_start
    return None


def timed_events(status: Mapping[str, Any], wall_start: float) -> list[tuple[float, Any]]:
    """``/status.events`` oldest first, with their time in seconds since the demo started."""
    timed = [(event_time(e.get("at"), wall_start), e) for e in status.get("events") or ()]
    return sorted(((t, e) for t, e in timed if t is not None), key=lambda te: te[0])


@dataclass
class Timeline:
    """When the canary's circuit first opened, last opened and last closed again.

    Built from ``/status.events`` (exact times) and, where events are missing, from the
    polled circuit state (late by at most one poll).
    """

    opened_at: float | None = None
    last_opened_at: float | None = None
    closed_at: float | None = None
    circuit: str = "?"

    def observe(self, status: Mapping[str, Any], now: float, wall_start: float) -> None:
        """Fold in one ``/status`` read at ``now``; reading the same events twice is harmless."""
        events = [(t, e) for t, e in timed_events(status, wall_start) if e.get("backend") == CANARY]
        for t, event in events:
            if event.get("to") == "open":
                self._opened(t)
        circuit = (status.get("backends") or {}).get(CANARY, {}).get("circuit")
        if isinstance(circuit, str):
            self.circuit = circuit
        if circuit == "open":
            self._opened(now)
        if self.last_opened_at is None:
            return
        closes = [t for t, e in events if e.get("to") == "closed" and t > self.last_opened_at]
        if closes:
            self.closed_at = max(closes)
        elif circuit == "closed" and (
            self.closed_at is None or self.closed_at < self.last_opened_at
        ):
            self.closed_at = now

    def _opened(self, t: float) -> None:
        self.opened_at = t if self.opened_at is None else min(self.opened_at, t)
        self.last_opened_at = t if self.last_opened_at is None else max(self.last_opened_at, t)

    @property
    def closed_again(self) -> bool:
        """Opened, then closed, and (when /status says) still closed."""
        if self.last_opened_at is None or self.closed_at is None:
            return False
        return self.closed_at > self.last_opened_at and self.circuit in ("closed", "?")


def phase(elapsed: float, break_at: float, heal_at: float) -> str:
    if elapsed < break_at:
        return "healthy"
    return "relay broken" if elapsed < heal_at else "relay healed"
