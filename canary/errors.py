"""The few exceptions canary raises, each carrying the context a person needs.

    CanaryError
    ├── ConfigError       file, line and key path of every problem in routes.yaml
    ├── RouterError       a response the router makes itself (400, 401, 404, 413, 502, 503, 504)
    │   ├── RateLimited   429 with Retry-After: one of canary's own limits, not a backend error
    │   └── BodyRefused   408/413: the client's body is not taken; the connection is closed
    ├── StateUnavailable  Redis unreachable or slower than its call timeout: use in-process state
    ├── Unavailable       ``canary status``/``report``: a router's /status could not be read
    ├── NoCost            ``canary report``: that /status has no cost section (an older router)
    ├── BillingError      a relay's billing API answered nothing usable (shown, never fatal)
    └── StreamCut         ``canary simulate``: a stream dropped mid-body on purpose

Upstream failures stay httpx exceptions (mapped exactly by ``canary.proxy.transport``); the
proxy turns them into ``RouterError`` responses. Two exceptions that never leave their
package stay beside the code that raises and catches them, as control flow: the proxy's
``EarlyFailure`` (``canary.proxy.relay``) and the simulator's ``_Refused``.

Router refusals render as OpenAI's error shape ``{"error": {"message", "type", "code"}}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import orjson


class CanaryError(Exception):
    """Base of every error canary raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One located problem: ``routes.yaml:12: routes[0].weights.relay: must be >= 0``."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(CanaryError):
    """routes.yaml could not be applied; ``problems`` lists every located reason."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class RouterError(CanaryError):
    """A response the router originates, in OpenAI's error shape."""

    status = 500

    def __init__(self, message: str, *, code: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        if status is not None:
            self.status = status
        # OpenAI's own types: the client's fault below 500, the server's from 500 on.
        self.type = "invalid_request_error" if self.status < 500 else "server_error"

    def body(self) -> bytes:
        return orjson.dumps(
            {"error": {"message": self.message, "type": self.type, "code": self.code}}
        )

    def headers(self) -> list[tuple[bytes, bytes]]:
        return []


class BodyRefused(RouterError):
    """The client's body is not taken whole (too large, or stalled past
    ``server.client_timeout_s``): answered, then the connection is closed, since what is
    left of the body was never read (nginx's 408 and 413)."""

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"connection", b"close")]


class RateLimited(RouterError):
    """No slot within the bounded queue time: 429 with ``Retry-After``, not a backend error."""

    status = 429

    def __init__(self, backend: str, reason: str, retry_after: float) -> None:
        self.backend = backend
        self.reason = reason  # "max_concurrency" or "max_qps"
        self.retry_after = max(0.0, retry_after)
        super().__init__(
            f"Local {reason} of backend {backend!r} reached; retry after {self.retry_after:.2f} s.",
            code="rate_limit_exceeded",
        )
        self.type = "requests"  # OpenAI's own type for request-rate 429s

    def headers(self) -> list[tuple[bytes, bytes]]:
        ms = math.ceil(self.retry_after * 1000)
        return [
            (b"retry-after", str(max(1, math.ceil(self.retry_after))).encode()),
            (b"retry-after-ms", str(ms).encode()),  # the openai client prefers this one
        ]


class StateUnavailable(CanaryError):
    """Redis did not answer within the call timeout; fall back to in-process state."""


class Unavailable(CanaryError):
    """``/status`` could not be read; the message says why, for the command line."""


class NoCost(CanaryError):
    """The router's ``/status`` has no ``cost`` section (a router from before pricing)."""


class BillingError(CanaryError):
    """A billing poll that gave no reading; the message is what ``/status`` shows in words."""


class StreamCut(CanaryError):
    """Raised on purpose to drop a stream mid-body; the server then closes the connection."""
