"""structlog set-up: JSON lines when stdout is not a terminal, readable lines in one.

JSON lines are buffered and written at most every 250 ms (or at 64 KiB, a warning or
worse, and exit), like Envoy's access logs: one ``write`` per line would cost the proxy
more than the rest of a request. The access line (one per call) skips structlog's chain
of processors when JSON lines are configured: ``line_writer`` renders the same line
(same keys, the same redaction) in a third of the time.

Logs are data: stable dotted event names with key/values (``proxy.upstream_failed``).
Every line passes ``redact``, which removes any configured secret and anything shaped
like a bearer token or an ``sk-`` key, so no key can reach a log even through an
exception message. uvicorn's own stdlib logs go through the same renderer.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable, MutableMapping
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
        if "sk-" in text or "earer" in text or "EARER" in text:  # the regex is the dear part
            text = _TOKENS.sub(lambda m: f"{m.group(1)}***" if m.group(1) else "sk-***", text)
        return text

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


class BufferedLogger:
    """A structlog logger writing bytes lines to ``file`` in batches (see module docstring)."""

    FLUSH_S = 0.25
    MAX_BYTES = 64 << 10

    def __init__(self, file: Any) -> None:
        self._file = file
        self._buffer = bytearray()
        self._scheduled = False
        atexit.register(self.flush)

    def _write(self, line: bytes, urgent: bool) -> None:
        self._buffer += line
        self._buffer += b"\n"
        if urgent or len(self._buffer) >= self.MAX_BYTES:
            self.flush()
        elif not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (CLI start-up, shutdown): write now
                self.flush()
                return
            self._scheduled = True
            loop.call_later(self.FLUSH_S, self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            with contextlib.suppress(OSError, ValueError):  # a closed pipe must not crash us
                self._file.write(data)
                self._file.flush()

    def debug(self, message: bytes) -> None:
        self._write(message, False)

    info = msg = log = debug

    def warning(self, message: bytes) -> None:
        self._write(message, True)

    warn = error = err = critical = exception = fatal = failure = warning


class _Stamp:
    """structlog's ISO UTC timestamp (``...T07:00:00.123456Z``), formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1e6):06d}Z"


_json_sink: BufferedLogger | None = None  # set by configure() for JSON lines at info


def line_writer(
    event: str, logger: str, outside: tuple[str, ...] | None = None
) -> Callable[[dict[str, Any]], None]:
    """Write ``event`` at info with the fields given (a dict it may keep and change).

    With JSON lines configured (``configure``), the line is rendered here as structlog
    would: the fields, ``event``, ``level``, ``timestamp``, through the redactor. Else it
    goes through structlog (the console, tests capturing logs). ``outside`` names the
    only fields that can carry outside text (a client's path or request id): only those
    are scrubbed, when the caller knows every other value is its own (numbers, names from
    routes.yaml, outcomes); None scrubs every string."""
    sink = _json_sink
    if sink is None:
        log = structlog.get_logger(logger)
        return lambda fields: log.info(event, **fields)
    stamp, dumps, redact, scrub = _Stamp(), orjson.dumps, redactor, redactor.scrub

    def write(fields: dict[str, Any]) -> None:
        fields["event"] = event
        fields["level"] = "info"
        fields["timestamp"] = stamp()
        sink.info(dumps(redact(None, "", fields)))

    def write_scrubbing(fields: dict[str, Any]) -> None:
        assert outside is not None
        for key in outside:
            value = fields.get(key)
            if isinstance(value, str):
                fields[key] = scrub(value)
        fields["event"] = event
        fields["level"] = "info"
        fields["timestamp"] = stamp()
        sink.info(dumps(fields))

    return write if outside is None else write_scrubbing


class _BufferedLoggerFactory:
    def __init__(self) -> None:
        self._logger: BufferedLogger | None = None

    def __call__(self, *args: Any) -> BufferedLogger:
        if self._logger is None:
            self._logger = BufferedLogger(sys.stdout.buffer)
        return self._logger


def configure(*, json: bool | None = None, level: str = "info") -> None:
    """Set structlog and stdlib logging up once per process."""
    if json is None:
        json = not sys.stdout.isatty()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,  # before the redactor: tracebacks are text too
    ]
    global _json_sink
    _json_sink = None
    renderer: Any
    if json:
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        factory: Any = _BufferedLoggerFactory()
        if logging.getLevelName(level.upper()) <= logging.INFO:
            _json_sink = factory()
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
