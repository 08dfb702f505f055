"""The counters behind ``GET /_sim/stats``: what the simulator was asked and what it sent.

Tokens are counted when an answer was sent whole (a cut or abandoned stream bills
nothing), so a test can hold a router's meter against them. The last request is kept
raw and decoded only when read; its credential headers show only a fingerprint of the
key (``fingerprint``), so a test can tell which key arrived in which header while the
stats never carry a key.
"""

from __future__ import annotations

import hashlib
from collections import Counter, deque
from typing import Any

import orjson
from starlette.types import Scope

from canary.types import Clock

STARTS_WINDOW_S = 120
CREDENTIALS = frozenset({b"authorization", b"proxy-authorization", b"x-api-key", b"api-key"})


class Stats:
    """Counters behind ``GET /_sim/stats``; the last request is decoded only when read."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        self.requests = self.in_flight = self.peak_in_flight = 0
        self.errors_injected = self.rate_limited = self.cut = self.hung = self.unauthorized = 0
        self.prompt_tokens = self.completion_tokens = 0
        self.sessions = self.sessions_refused = self.sessions_cut = 0  # WebSocket sessions
        self.by_path: Counter[str] = Counter()
        self.starts: dict[int, int] = {}
        self.recent: deque[float] = deque()  # starts in the last second, for the peak
        self.peak_starts_1s = 0  # most starts in any one-second window, not just a unix second
        self.last: tuple[Scope, bytes] | None = None

    def started(self, scope: Scope, body: bytes) -> None:
        self.requests += 1
        self.by_path[scope["path"]] += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        self.last = (scope, body)
        now = self._clock()
        recent = self.recent
        while recent and recent[0] <= now - 1.0:  # the window (now - 1 s, now]
            recent.popleft()
        recent.append(now)
        self.peak_starts_1s = max(self.peak_starts_1s, len(recent))
        second = int(now)
        if second not in self.starts:  # a new second: forget those out of the window
            for old in [s for s in self.starts if s <= second - STARTS_WINDOW_S]:
                del self.starts[old]
        self.starts[second] = self.starts.get(second, 0) + 1

    def billed(self, prompt: int, completion: int) -> None:
        """An answer went out whole, carrying these token counts."""
        self.prompt_tokens += prompt
        self.completion_tokens += completion

    def snapshot(self) -> dict[str, Any]:
        horizon = int(self._clock()) - STARTS_WINDOW_S
        return {
            "requests": self.requests,
            "by_path": dict(self.by_path),
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "errors_injected": self.errors_injected,
            "rate_limited": self.rate_limited,
            "cut": self.cut,
            "hung": self.hung,
            "unauthorized": self.unauthorized,
            "sessions": {
                "accepted": self.sessions,
                "refused": self.sessions_refused,
                "cut": self.sessions_cut,
            },
            "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens},
            "starts_per_second": {str(s): n for s, n in self.starts.items() if s > horizon},
            "peak_starts_1s": self.peak_starts_1s,
            "last_request": None if self.last is None else _describe(*self.last),
        }


def _describe(scope: Scope, body: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    return {
        "method": scope["method"],
        "path": scope["path"],
        "query": scope["query_string"].decode("latin-1"),
        "headers": {
            k.decode("latin-1"): _redacted(v) if k in CREDENTIALS else v.decode("latin-1")
            for k, v in scope["headers"]
        },
        "body": parsed,
    }


def fingerprint(key: str) -> str:
    """What the stats show of a key: enough to tell keys apart, useless to call with."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:12]


def _redacted(value: bytes) -> str:
    """A credential header's value with the key replaced by its fingerprint; the scheme
    (``Bearer``) is kept, so a test sees how the key was sent."""
    text = value.decode("latin-1").strip()
    scheme, _, rest = text.partition(" ")
    if rest and scheme.lower() in ("bearer", "basic"):
        return f"{scheme} {fingerprint(rest.strip())}"
    return fingerprint(text)
