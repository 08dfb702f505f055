"""What the simulator does wrong, changed live through ``POST /_sim/faults``.

``Faults`` is the one mutable thing an operator steers: every update is validated whole
before any of it applies, so a bad patch changes nothing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Faults:
    """What the simulator does wrong; mutable so the control plane can change it live."""

    latency_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    error_rate: float = 0.0
    status_code: int = 500
    rate_limit_rate: float = 0.0
    retry_after_s: float = 1.0
    cut_after: int | None = None
    truncate_rate: float = 0.0  # share of JSON answers cut short of their content-length
    hang: bool = False
    # A dishonest relay (SPEC §9): what it names, bills and says.
    echo_model: str | None = None  # answers name this model, whatever was asked
    prompt_token_factor: float = 1.0  # prompt tokens billed, times this
    reply_scale: float = 1.0  # the reply's length, times this
    reply_text: str | None = None  # another reply (another model's style)
    # A forging relay: answers drawn from this model's distribution (``sampling``) in
    # ``substitute_rate`` of the calls that set a temperature, still naming the asked model
    # and billing its answers' words as an honest one would.
    substitute_model: str | None = None
    substitute_rate: float = 1.0
    # WebSocket sessions (canary.tools.simulate.sessions)
    session_refuse_status: int | None = None  # refuse every handshake with this status
    session_cut_after: int | None = None  # drop a session, no close frame, after N frames

    def __post_init__(self) -> None:
        self.update(asdict(self))

    def update(self, patch: dict[str, Any]) -> None:
        """Validate every key of ``patch`` first, then apply them all (or none)."""
        clean = {key: _check(key, value) for key, value in patch.items()}
        for key, value in clean.items():
            setattr(self, key, value)


# key -> (type, lowest, highest); bounds are inclusive.
_LIMITS: dict[str, tuple[type, float, float]] = {
    "latency_ms": (float, 0, 3_600_000),
    "chunk_delay_ms": (float, 0, 3_600_000),
    "error_rate": (float, 0, 1),
    "status_code": (int, 400, 599),
    "rate_limit_rate": (float, 0, 1),
    "retry_after_s": (float, 0, 86_400),
    "cut_after": (int, 0, math.inf),
    "truncate_rate": (float, 0, 1),
    "hang": (bool, 0, 1),
    "echo_model": (str, 1, 128),
    "prompt_token_factor": (float, 0.01, 100),
    "reply_scale": (float, 0.01, 100),
    "reply_text": (str, 1, 4096),
    "substitute_model": (str, 1, 128),
    "substitute_rate": (float, 0, 1),
    "session_refuse_status": (int, 400, 599),
    "session_cut_after": (int, 0, math.inf),
}
_NULLABLE = frozenset(
    {
        "cut_after",
        "echo_model",
        "reply_text",
        "substitute_model",
        "session_refuse_status",
        "session_cut_after",
    }
)


def _check(key: str, value: object) -> object:
    if key not in _LIMITS:
        raise ValueError(f"unknown fault {key!r}; known: {', '.join(_LIMITS)}")
    kind, low, high = _LIMITS[key]
    if key in _NULLABLE and value is None:
        return None
    if kind is str:
        if isinstance(value, str) and low <= len(value) <= high and value.strip():
            return value
        raise ValueError(f"{key}: must be a string of {low:g} to {high:g} characters")
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key}: must be true or false, got {value!r}")
    accepted = int if kind is int else int | float
    if isinstance(value, bool) or not isinstance(value, accepted) or not low <= value <= high:
        raise ValueError(f"{key}: must be {kind.__name__} in [{low}, {high}], got {value!r}")
    return float(value) if kind is float else value
