"""The stream relay: an upstream answer to the client, chunk by chunk, as it arrives.

The response headers go out with the first body chunk, so an upstream that fails before
its first chunk raises ``EarlyFailure`` with nothing sent (fallback is still possible).
A stream that breaks after bytes reached the client is never ended as if complete: an
SSE stream ends in its dialect's error event (each SDK raises on its own), any other
body is cut so the client sees an incomplete response. A stream that ends without its
dialect's end mark, decided on whole events (``canary.proxy.sse``), is cut too.

Bounded waits without a timer per stream or chunk: the call's watch (one per call, checked
by the process's one watchdog, ``canary.proxy.watchdog``, every 0.5 s) gets a deadline
``timeout_s`` + 0.5 s after the last chunk relayed, which bounds both a silent upstream
(a read timeout) and a client that stops reading (so it cannot hold an upstream slot
longer). The same watch bounded the wait for the headers (``canary.proxy.exchange``).
"""

from __future__ import annotations

import asyncio
import math

import httpx
import structlog

from canary.config.model import Backend
from canary.observe.logs import redactor
from canary.proxy.answers import Client, outcome_of
from canary.proxy.dialects import Dialect
from canary.proxy.headers import DROP_RESPONSE, without
from canary.proxy.sse import Frames
from canary.proxy.transport import RAW_ERRORS, Answer
from canary.proxy.usage import UsageScanner
from canary.proxy.watchdog import Watch

log = structlog.get_logger("canary.proxy")

# Slack over timeout_s for the send between two reads; the watchdog adds at most its tick.
GRACE_S = 0.5


class Try:
    """One call to one backend, retries included: how it went, for the accounting."""

    __slots__ = (
        "backend",
        "began",
        "deferred",
        "fall_back",
        "first_byte",
        "head",
        "kind",
        "metered",
        "origin",
        "outcome",
        "sent_at",
        "since",
        "status",
        "tokens",
    )

    def __init__(self, backend: Backend, origin: str | None, metered: bool) -> None:
        self.backend = backend
        self.origin = origin  # the backend that failed first, when this is a fallback
        self.metered = metered  # its usage is read (a POST)
        self.since = 0.0  # when the call began, before any wait for a limiter slot
        self.began: float | None = None  # the start of the try still open; None between
        self.status = 0
        self.outcome = "ok"
        self.kind: str | None = None  # the failure kind when it counts against the backend
        self.tokens: tuple[int, int] | None = None
        self.fall_back = False  # it failed early: the baseline may answer instead
        self.deferred = False  # a 4xx whose verdict waits for the baseline's answer
        self.head: bytes | None = None  # the answer's first read, for the model audit
        self.sent_at = 0.0  # loop time when it left, past the limiter
        self.first_byte: float | None = None  # loop time of a stream's first byte out


class EarlyFailure(Exception):
    """The upstream failed before any byte reached the client."""

    def __init__(self, outcome: str, cause: httpx.TransportError) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.cause = cause


async def relay(client: Client, response: Answer, t: Try, dialect: Dialect, watch: Watch) -> None:
    """Stream ``response`` to the client; set ``t.outcome`` and ``t.tokens``."""
    start, sse, encoding = _start(client, response, t)
    status = t.status
    check_end = sse and status < 400 and not encoding and bool(dialect.end_marks)
    metered = t.metered and status < 300
    frames = Frames() if (metered or check_end) and sse and not encoding else None
    scanner = UsageScanner() if metered and frames is None else None
    if scanner is not None and encoding and not scanner.encoded(encoding):
        scanner = None  # an encoding it cannot read: the call counts as unmetered
    pump = _Pump(client, response, t.backend.timeout_s + GRACE_S)
    try:
        # The model audit reads the first (plain) read.
        await pump.run(
            watch,
            start,
            frames,
            scanner,
            t if metered and not encoding else None,
            t if sse else None,
        )
        if not client.started:
            client.started = True
            await client.send(start)
        await _finish(client, t, dialect, frames if check_end else None)
        if metered:
            t.tokens = _usage(dialect, frames, scanner)
            if frames is not None and frames.first is not None:
                t.head = frames.first  # the first event, past any leading comment
    except httpx.TransportError as exc:
        await _broken(client, t, dialect, sse and not encoding, exc)
    except TimeoutError:
        if pump.reading:  # the upstream fell silent: the deadline bounds it as a read timeout
            silent = httpx.ReadTimeout(f"no chunk within {t.backend.timeout_s:g} s")
            await _broken(client, t, dialect, sse and not encoding, silent)
            return
        log.warning(
            "proxy.slow_client", request_id=client.request_id.decode(), backend=t.backend.name
        )
        t.outcome = "slow_client"


class _Pump:
    """The relay loop: upstream chunks to the client, with no timer of its own.

    The call's ``Watch`` holds the stream's deadline, ``budget`` after the last chunk
    relayed (a plain store per chunk), and bounds both an upstream that falls silent
    (``reading``) and a client that stops reading, so neither holds an upstream slot
    much past ``timeout_s``. The body is read straight from the upstream's ``readany``
    (aiohttp's, with canary's transport)."""

    __slots__ = ("budget", "client", "reading", "response")

    def __init__(self, client: Client, response: Answer, budget: float) -> None:
        self.client = client
        self.response = response
        self.budget = budget
        self.reading = True

    async def run(
        self,
        watch: Watch,
        start: dict[str, object],
        frames: Frames | None,
        scanner: UsageScanner | None,
        peek: Try | None,
        sse: Try | None,
    ) -> None:
        client, send, tap, budget = self.client, self.client.send, self.client.tap, self.budget
        response = self.response
        read = response.readany
        time = asyncio.get_running_loop().time
        watch.deadline = time() + budget
        try:
            while True:
                self.reading = True
                try:
                    chunk = await read()
                except RAW_ERRORS as exc:
                    raise response.failed(exc) from exc
                if not chunk:
                    return
                self.reading = False
                if not client.started:
                    client.started = True
                    await send(start)
                    if peek is not None:
                        peek.head = chunk
                    if sse is not None:  # time to first byte, once per stream
                        sse.first_byte = time()
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                now = time()
                if tap is not None:  # a shadow copy compares with what the client got
                    tap.feed(chunk, now)
                if frames is not None:
                    frames.feed(chunk)
                elif scanner is not None:
                    scanner.feed(chunk)
                watch.deadline = now + budget
        except asyncio.CancelledError:
            if watch.cancelled_here():
                raise TimeoutError from None
            raise
        finally:
            watch.deadline = math.inf


async def _broken(
    client: Client, t: Try, dialect: Dialect, sse: bool, exc: httpx.TransportError
) -> None:
    """The upstream failed mid-body: before any byte went out, an early failure; after,
    an SSE stream ends in the dialect's error event and any other body is left cut."""
    if not client.started:  # the headers came, the body broke: a cut (or a timeout)
        timeout = isinstance(exc, httpx.TimeoutException)
        raise EarlyFailure("upstream_timeout" if timeout else "stream_cut", exc) from exc
    log_failure(client.request_id, t.backend, exc, event="proxy.stream_broken")
    if sse:
        why = f"the upstream stream broke ({type(exc).__name__})"
        await client.end(dialect.error_event(_mid_stream(t.backend, why)))
    # Otherwise return without ending the body: the server closes the connection,
    # so the client sees an incomplete response rather than a short "complete" one.
    t.outcome = "upstream_timeout" if outcome_of(exc) == "upstream_timeout" else "stream_cut"


def _start(client: Client, response: Answer, t: Try) -> tuple[dict[str, object], bool, bytes]:
    """The client's response start, whether the body is SSE, and its Content-Encoding."""
    raw = [(k.lower(), v) for k, v in response.headers]
    drop = DROP_RESPONSE
    content_type = encoding = b""
    for k, v in raw:
        if k == b"connection":
            drop = without(DROP_RESPONSE, v)
        elif k == b"content-type":
            content_type = v
        elif k == b"content-encoding":
            encoding = v
    sse = content_type.startswith(b"text/event-stream")
    if sse or t.status < 200 or t.status in (204, 304):
        # An SSE body may get an error event appended; a bodiless status has no length.
        drop = drop | {b"content-length"}
    headers = [(k, v) for k, v in raw if k not in drop]
    client.stamp(headers, t.backend.name, t.origin)
    client.sse = sse
    return {"type": "http.response.start", "status": t.status, "headers": headers}, sse, encoding


async def _finish(client: Client, t: Try, dialect: Dialect, frames: Frames | None) -> None:
    """End the body: cleanly, or with the dialect's error event when the end mark is missing."""
    if frames is not None and not dialect.complete(next(iter(frames.last_events(1)), None)):
        why = f"the stream ended before its end mark ({dialect.end_marks[0].decode()})"
        await client.end(dialect.error_event(_mid_stream(t.backend, why)))
        t.outcome = "stream_cut"
        return
    await client.end()
    t.outcome = "ok"


def _usage(
    dialect: Dialect, frames: Frames | None, scanner: UsageScanner | None
) -> tuple[int, int] | None:
    if frames is not None:
        return dialect.stream_usage(frames.first_event(), frames.last_events())
    return scanner.result(dialect.counters) if scanner is not None else None


def _mid_stream(backend: Backend, why: str) -> str:
    return f"Upstream {backend.name!r} failed mid-stream: {why}."


def log_failure(
    request_id: bytes,
    backend: Backend,
    exc: httpx.TransportError,
    event: str = "proxy.upstream_failed",
) -> None:
    log.warning(
        event,
        request_id=request_id.decode(),
        backend=backend.name,
        error=type(exc).__name__,
        detail=redactor.scrub(str(exc)),
    )
