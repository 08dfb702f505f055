"""structlog set-up: JSON lines when stdout is not a terminal, readable lines in one.

Logs are data: stable dotted event names with key/values (``proxy.upstream_failed``).
Every line passes ``redact``, which removes any configured secret and anything shaped
like a bearer token or an ``sk-`` key, so no key can reach a log even through an
exception message. uvicorn's own stdlib logs go through the same renderer.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import orjson
import structlog

_TOKENS = re.compile(r"(?i)(bearer\s+)[^\s\"',;]+|\bsk-[A-Za-z0-9_\-]{6,}")


class Redactor:
    """A structlog processor that masks secrets in every string value of an event."""

    def __init__(self) -> None:
        self.secrets: tuple[str, ...] = ()

    def update(self, secrets: Iterable[str]) -> None:
        # Longest first, so a key that contains another is masked whole.
        self.secrets = tuple(sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True))

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return _TOKENS.sub(lambda m: f"{m.group(1)}***" if m.group(1) else "sk-***", text)

    def __call__(
        self, _: Any, __: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in event.items():
            if isinstance(value, str):
                event[key] = self.scrub(value)
            elif isinstance(value, list | tuple):
                event[key] = [self.scrub(v) if isinstance(v, str) else v for v in value]
        return event


redactor = Redactor()


def configure(*, json: bool | None = None, level: str = "info") -> None:
    """Set structlog and stdlib logging up once per process."""
    if json is None:
        json = not sys.stdout.isatty()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if json:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        factory: Any = structlog.BytesLoggerFactory()
    else:
        renderer = structlog.dev.ConsoleRenderer()
        factory = structlog.PrintLoggerFactory()
    structlog.configure(
        processors=[*shared, redactor, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                redactor,
                _str_renderer(renderer) if json else renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def _str_renderer(renderer: Any) -> Any:
    """stdlib formatters need ``str``; the JSON renderer gives bytes."""

    def render(logger: Any, name: str, event: MutableMapping[str, Any]) -> str:
        out = renderer(logger, name, event)
        return out.decode() if isinstance(out, bytes) else str(out)

    return render
