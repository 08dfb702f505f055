"""The stream relay: an upstream answer to the client, chunk by chunk, as it arrives.

The response headers go out with the first body chunk, so an upstream that fails before
its first chunk raises ``EarlyFailure`` with nothing sent (fallback is still possible).
A stream that breaks after bytes reached the client is never ended as if complete: an
SSE stream ends in its dialect's error event (each SDK raises on its own), any other
body is cut so the client sees an incomplete response. A stream that ends without its
dialect's end mark, decided on whole events (``canary.proxy.sse``), is cut too.

Whole answers or none (SPEC §3a): a non-stream JSON answer of up to ``hold`` bytes
(``server.hold_answer_bytes``) is read whole before its status line goes out, and sent
with its ``content-length`` in one message. A body cut short or stalled is then an
``EarlyFailure``, which the baseline may still answer; a larger one streams from the
moment it passes ``hold``. Any other answer (SSE, file content, speech) passes through
as it arrives.

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
from canary.proxy.facts import Tap
from canary.proxy.headers import DROP_RESPONSE, without
from canary.proxy.sse import Frames
from canary.proxy.transport import RAW_ERRORS, Answer
from canary.proxy.usage import UsageScanner
from canary.proxy.watchdog import Watch
from canary.safety.equivalence import echoed_model

log = structlog.get_logger("canary.proxy")

# Slack over timeout_s for the send between two reads; the watchdog adds at most its tick.
GRACE_S = 0.5


class Try:
    """One call to one backend, retries included: how it went, for the accounting."""

    __slots__ = (
        "backend",
        "began",
        "deferred",
        "echo_read",
        "echoed",
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
        self.echoed: str | None = None  # the model it names (answered_model), once read
        self.echo_read = False
        self.sent_at = 0.0  # loop time when it left, past the limiter
        self.first_byte: float | None = None  # loop time of a stream's first byte out

    def answered_model(self) -> str | None:
        """The ``model`` its answer named, read once from ``head``: the model audit and the
        trace ask alike."""
        if not self.echo_read:
            self.echoed = echoed_model(self.head) if self.head is not None else None
            self.echo_read = True
        return self.echoed


class EarlyFailure(Exception):
    """The upstream failed before any byte reached the client."""

    def __init__(self, outcome: str, cause: httpx.TransportError) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.cause = cause


async def relay(
    client: Client, response: Answer, t: Try, dialect: Dialect, watch: Watch, hold: int
) -> None:
    """Stream ``response`` to the client; set ``t.outcome`` and ``t.tokens``.

    A JSON answer up to ``hold`` bytes is read whole first (see the module docstring)."""
    start, sse, encoding, held = _start(client, response, t, hold)
    status = t.status
    check_end = sse and status < 400 and not encoding and bool(dialect.end_marks)
    metered = t.metered and status < 300
    frames = Frames() if (metered or check_end) and sse and not encoding else None
    scanner = UsageScanner() if metered and frames is None else None
    if scanner is not None and encoding and not scanner.encoded(encoding):
        scanner = None  # an encoding it cannot read: the call counts as unmetered
    pump = _Pump(client, response, t.backend.timeout_s + GRACE_S, held)
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
        if client.done:  # held and sent whole
            t.outcome = "ok"
        else:
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
    (aiohttp's, with canary's transport). With ``hold``, nothing goes out before the end
    of the body or its ``hold``-th byte."""

    __slots__ = ("budget", "client", "hold", "reading", "response")

    def __init__(self, client: Client, response: Answer, budget: float, hold: int) -> None:
        self.client = client
        self.response = response
        self.budget = budget
        self.hold = hold  # bytes to read before the first goes out; 0: stream at once
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
        held: list[bytes] | None = [] if self.hold else None
        size = 0
        try:
            while True:
                self.reading = True
                try:
                    chunk = await read()
                except RAW_ERRORS as exc:
                    raise response.failed(exc) from exc
                if not chunk:
                    if held is not None:
                        await self._whole(start, b"".join(held), peek)
                    return
                self.reading = False
                fed = held is not None
                if held is not None:
                    held.append(chunk)
                    size += len(chunk)
                    now = time()
                    _feed(chunk, now, tap, frames, scanner)
                    watch.deadline = now + budget
                    if size <= self.hold:
                        continue
                    # Too large to hold (it declared no length): it streams from here.
                    chunk, held = b"".join(held), None
                if not client.started:
                    client.started = True
                    await send(start)
                    if peek is not None:
                        peek.head = chunk
                    if sse is not None:  # time to first byte, once per stream
                        sse.first_byte = time()
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                now = time()
                if not fed:
                    _feed(chunk, now, tap, frames, scanner)
                watch.deadline = now + budget
        except asyncio.CancelledError:
            if watch.cancelled_here():
                raise TimeoutError from None
            raise
        finally:
            watch.deadline = math.inf

    async def _whole(self, start: dict[str, object], body: bytes, peek: Try | None) -> None:
        """A held answer, complete: its status line, length and body in one go."""
        client = self.client
        headers = start["headers"]
        assert isinstance(headers, list)
        if not any(k == b"content-length" for k, _ in headers):
            headers.append((b"content-length", str(len(body)).encode()))
        client.started = True
        await client.send(start)
        if peek is not None:
            peek.head = body
        client.done = True
        await client.send({"type": "http.response.body", "body": body, "more_body": False})


def _feed(
    chunk: bytes, now: float, tap: Tap | None, frames: Frames | None, scanner: UsageScanner | None
) -> None:
    """What reads a chunk on its way: a shadow's comparison, the usage's readers."""
    if tap is not None:  # a shadow copy compares with what the client got
        tap.feed(chunk, now)
    if frames is not None:
        frames.feed(chunk)
    elif scanner is not None:
        scanner.feed(chunk)


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


def _start(
    client: Client, response: Answer, t: Try, hold: int
) -> tuple[dict[str, object], bool, bytes, int]:
    """The client's response start, whether the body is SSE, its Content-Encoding, and
    how much of it to hold before the first byte goes out (0: none)."""
    raw = [(k.lower(), v) for k, v in response.headers]
    drop = DROP_RESPONSE
    content_type = encoding = b""
    length: bytes | None = None
    for k, v in raw:
        if k == b"connection":
            drop = without(DROP_RESPONSE, v)
        elif k == b"content-type":
            content_type = v
        elif k == b"content-encoding":
            encoding = v
        elif k == b"content-length":
            length = v
    sse = content_type.startswith(b"text/event-stream")
    bodiless = t.status < 200 or t.status in (204, 304)
    if sse or bodiless:
        # An SSE body may get an error event appended; a bodiless status has no length.
        drop = drop | {b"content-length"}
    headers = [(k, v) for k, v in raw if k not in drop]
    client.stamp(headers, t.backend.name, t.origin)
    client.sse = sse
    if bodiless or not _is_json(content_type) or (length is not None and _over(length, hold)):
        hold = 0
    return (
        {"type": "http.response.start", "status": t.status, "headers": headers},
        sse,
        encoding,
        hold,
    )


def _is_json(content_type: bytes) -> bool:
    if content_type.startswith(b"application/json"):
        return True
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


def _over(length: bytes, hold: int) -> bool:
    """A declared length past ``hold`` (or unreadable: not held either)."""
    return not length.strip().isdigit() or int(length) > hold


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
