"""The few exceptions canary raises, each carrying the context a person needs.

    CanaryError
    ├── ConfigError      file, line and key path of every problem in routes.yaml
    ├── RouterError      a refusal the router makes itself (401, 404, 413, 400, 429, 502, 504),
    │   └── RateLimited  a local limit was exceeded; carries ``retry_after``
    └── UpstreamError    a backend failed; carries ``backend`` and the cause

Router refusals render as OpenAI's error shape ``{"error": {"message", "type", "code"}}``.
"""

from __future__ import annotations

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
    type = "server_error"

    def __init__(self, message: str, *, code: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        if status is not None:
            self.status = status

    def body(self) -> bytes:
        return orjson.dumps(
            {"error": {"message": self.message, "type": self.type, "code": self.code}}
        )

    def headers(self) -> list[tuple[bytes, bytes]]:
        return []


class RateLimited(RouterError):
    """A local limit was exceeded; the client may retry after ``retry_after`` seconds."""

    status = 429
    type = "rate_limit_error"

    def __init__(
        self, message: str, *, retry_after: float, code: str = "rate_limit_exceeded"
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", str(max(1, round(self.retry_after))).encode())]


class UpstreamError(CanaryError):
    """A backend failed; ``may_have_reached`` says whether a retry could bill twice."""

    def __init__(self, backend: str, cause: BaseException, *, may_have_reached: bool) -> None:
        super().__init__(f"{backend}: {type(cause).__name__}: {cause}")
        self.backend = backend
        self.cause = cause
        self.may_have_reached = may_have_reached
