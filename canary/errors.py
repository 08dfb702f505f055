"""The few exceptions canary raises, each carrying the context a person needs.

    CanaryError
    ├── ConfigError      file, line and key path of every problem in routes.yaml
    └── RouterError      a response the router makes itself (400, 401, 404, 413, 502, 503, 504)

Upstream failures stay httpx exceptions (mapped exactly by ``canary.proxy.transport``); the
proxy turns them into ``RouterError`` responses.

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
