"""The lean HTTP/1.1 client under the hot path: one ``asyncio.Protocol`` per connection.

``AiohttpTransport.send`` (``canary.proxy.transport``) hands a plain call here: a GET,
POST or DELETE whose body is bytes, to an ``http`` or ``https`` upstream. Everything
else (streamed uploads, other methods, the httpx-facing API, WebSocket sessions) stays
on aiohttp. Why: measured in one process against the simulator, 16 calls in flight,
aiohttp's ``session.request`` plus reading the answer cost ~150 us of CPU per call,
and this ~65 us: no request or response objects, no multidicts, no timers, no payload
registry; the request goes out in one write and the answer is parsed by httptools (C,
the parser uvicorn uses) straight into a list of chunks.

What it keeps of the aiohttp path, so the proxy above cannot tell them apart:

- bytes pass through untouched: the raw path and query, the headers as given (never one
  of its own but Host and Content-Length), no decompression, no cookies, no redirects;
- a header that is not UTF-8 is refused (``httpx.LocalProtocolError``) and a CR or LF
  in one (a header injection) too, before any byte leaves;
- errors are httpx's, with the same ``may_have_reached`` meaning: a connect that fails
  or times out is ``ConnectError`` / ``ConnectTimeout`` (never sent); a connection that
  closes before the answer is ``RemoteProtocolError``, as does a body cut short of its
  length or last chunk, and garbage; a reset is ``ReadError``. Nothing is resent;
- timeouts: only the connect has a timer (``connect_s``); the headers and the body are
  bounded by the call's watch, whose cancellation closes the connection;
- backpressure: past ``PAUSE_BYTES`` read and not yet taken, the socket stops being
  read until the proxy takes them, so a slow client holds ~64 KiB per stream here;
- keep-alive: a connection whose answer was read whole, and did not say ``Connection:
  close`` (or come as HTTP/1.0), goes back to its origin's idle stack (the warmest
  first); one idle past ``keepalive_s``, closed by the upstream meanwhile, or sent bytes
  nobody asked for, is never taken, and a timer sweeps them. A body delimited by the close of
  the connection is whole when the connection closes, and that connection is not reused.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools
import httpx

PAUSE_BYTES = 64 << 10
METHODS = frozenset({"GET", "POST", "DELETE"})
_BODILESS = frozenset({"GET", "DELETE"})


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a target URL goes: the pool key, the connect arguments, and what is sent."""

    key: tuple[str, str, int]
    host: str
    port: int
    tls: bool
    host_header: bytes
    path: bytes  # the raw path and query, as given
    shown: str  # the target as errors show it: no userinfo


def origin_of(target: str) -> Origin | None:
    """``target`` split for the wire, or None when this client does not take it."""
    try:
        parts = urlsplit(target)
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme, parts.hostname
    if scheme not in ("http", "https") or not host:
        return None
    tls = scheme == "https"
    default = 443 if tls else 80
    port = port or default
    name = f"[{host}]" if ":" in host else host
    host_header = (name if port == default else f"{name}:{port}").encode("idna")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        raw = path.encode("latin-1")  # the client's raw bytes, as the plane decoded them
    except UnicodeEncodeError:
        return None
    if any(c in raw for c in b" \r\n\t"):
        return None  # cannot go in a request line as is: aiohttp's rules decide
    shown = f"{scheme}://{host_header.decode()}{path}"
    return Origin((scheme, host, port), host, port, tls, host_header, raw, shown)


def wire_head(method: str, shown: str, headers: list[tuple[bytes, bytes]]) -> bytes:
    """The header lines as they go, refused (before any byte leaves) when one holds a
    line break (a header injection) or is not UTF-8 (as aiohttp would refuse it)."""
    head = b"".join([name + b": " + value + b"\r\n" for name, value in headers])
    if head.count(b"\n") != len(headers) or head.count(b"\r") != len(headers):
        raise httpx.LocalProtocolError(f"{method} {shown}: a request header holds a line break")
    if not head.isascii():
        try:
            head.decode()
        except UnicodeDecodeError:
            # from None: the decode error would carry the header's bytes, maybe an API key.
            raise httpx.LocalProtocolError(
                f"{method} {shown}: a request header is not UTF-8"
            ) from None
    return head


class _Connection(asyncio.Protocol):
    """One keep-alive connection: the request written, the answer parsed as it comes."""

    def __init__(self, key: tuple[str, str, int]) -> None:
        self.key = key  # its origin's, in the pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None  # the headers, then each next chunk
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.paused = False
        self.informational = False
        self.complete = False
        self.headers_done = False
        self.framed = False  # a length or chunked: the close of the connection is no end
        self.error: Exception | None = None
        self.closed = False
        self.busy = False  # a request is out: bytes may come
        self.keep_alive = False  # what the last answer said (HTTP/1.1 default, Connection)
        self.idle_since = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if not self.busy:  # bytes on an idle connection: nobody asked, so nobody reuses it
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"invalid answer: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close our side too: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if exc is None and self.headers_done and not self.complete and not self.framed:
            self.complete = True  # a body delimited by the close: it is whole
            self._wake()
            return
        if not self.complete:
            if exc is not None and not isinstance(exc, ssl.SSLError):
                self._fail(httpx.ReadError(f"{type(exc).__name__}: {exc}"))
            elif not self.headers_done:
                self._fail(httpx.RemoteProtocolError("Server disconnected before answering"))
            else:
                self._fail(httpx.RemoteProtocolError("the answer's body was cut short"))

    # httptools callbacks

    def on_message_begin(self) -> None:
        self.headers, self.framed = [], False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.headers_done:
            return  # a trailer: the answer's headers went out already
        self.headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length" or (
            lowered == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self.framed = True

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # 103 Early Hints and the like: the answer follows
            self.informational = True
            return
        self.status = status
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > PAUSE_BYTES and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    # the client side

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            self.waiter = None
            waiter.set_result(None)

    def _fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            self.waiter = None
            waiter.set_result(None)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def exchange(self, data: bytes) -> None:
        """Write the request and wait for the answer's headers."""
        assert self.transport is not None
        self.status, self.chunks, self.buffered = 0, [], 0
        self.complete = self.headers_done = self.framed = self.keep_alive = False
        self.busy = True
        self.transport.write(data)
        while not self.headers_done:
            await self._next()

    async def _next(self) -> None:
        """Wait for the parser to say more (headers, a chunk, the end, a failure)."""
        if self.error is not None:
            raise self.error
        if self.closed:
            raise httpx.RemoteProtocolError("the connection closed")
        waiter = self.waiter = asyncio.get_running_loop().create_future()
        await waiter
        if self.error is not None:
            raise self.error

    async def readany(self) -> bytes:
        """The body read so far and not yet taken, waiting for some; ``b""`` at the end."""
        while not self.chunks:
            if self.complete:
                return b""
            await self._next()
        chunks, self.chunks, self.buffered = self.chunks, [], 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class WireAnswer:
    """A wire connection's answer as the proxy's ``Answer`` (``canary.proxy.transport``)."""

    __slots__ = ("_conn", "_pool", "_shown", "headers", "readany", "status")

    def __init__(self, conn: _Connection, pool: WirePool, shown: str) -> None:
        self.status = conn.status
        self.headers: Sequence[tuple[bytes, bytes]] = conn.headers
        self.readany = conn.readany
        self._conn = conn
        self._pool = pool
        self._shown = shown

    def failed(self, exc: BaseException) -> httpx.TransportError:
        self._conn.close()
        if isinstance(exc, httpx.TransportError):
            return exc
        return httpx.ReadError(f"{self._shown}: {type(exc).__name__}: {exc}")

    async def aclose(self) -> None:
        conn = self._conn
        if conn.complete and conn.keep_alive and not conn.chunks and not conn.closed:
            conn.busy = False
            self._pool.put(conn)  # read whole: back to its origin's idle stack
        else:
            conn.close()  # half read: it cannot be reused; closing tells the upstream we left


class WirePool:
    """Idle keep-alive connections per origin (see the module docstring)."""

    def __init__(self, keepalive_s: float) -> None:
        self.keepalive_s = keepalive_s
        self._idle: dict[tuple[str, str, int], deque[_Connection]] = {}
        self._tls: ssl.SSLContext | None = None
        self._sweep: asyncio.TimerHandle | None = None

    async def send(
        self, method: str, origin: Origin, head: bytes, body: bytes, connect_s: float | None
    ) -> WireAnswer:
        """``head`` (headers, each line ending in CRLF) and ``body`` to ``origin``."""
        conn = self._take(origin.key)
        if conn is None:
            conn = await self._connect(origin, connect_s)
        length = b"" if not body and method in _BODILESS else b"Content-Length: %d\r\n" % len(body)
        data = b"%s %s HTTP/1.1\r\nHost: %s\r\n%s%s\r\n%s" % (
            method.encode(),
            origin.path,
            origin.host_header,
            head,
            length,
            body,
        )
        try:
            await conn.exchange(data)
        except BaseException:
            conn.close()  # cancelled (the call's watch) or failed: never reused
            raise
        return WireAnswer(conn, self, origin.shown)

    def _take(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        oldest = asyncio.get_running_loop().time() - self.keepalive_s
        while idle:
            conn = idle.pop()  # the warmest first
            if not conn.closed and conn.idle_since > oldest:
                return conn
            conn.close()
        return None

    def put(self, conn: _Connection) -> None:
        loop = asyncio.get_running_loop()
        conn.idle_since = loop.time()
        self._idle.setdefault(conn.key, deque()).append(conn)
        if self._sweep is None:
            self._sweep = loop.call_later(self.keepalive_s, self._swept)

    def _swept(self) -> None:
        """Close what idled past ``keepalive_s`` (the oldest are at the left)."""
        self._sweep = None
        loop = asyncio.get_running_loop()
        oldest = loop.time() - self.keepalive_s
        left = False
        for key, idle in list(self._idle.items()):
            while idle and (idle[0].closed or idle[0].idle_since <= oldest):
                idle.popleft().close()
            if not idle:
                del self._idle[key]
            left = left or bool(idle)
        if left:
            self._sweep = loop.call_later(self.keepalive_s, self._swept)

    async def _connect(self, origin: Origin, connect_s: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if origin.tls:
            tls = self._tls = self._tls or ssl.create_default_context()
        try:
            async with asyncio.timeout(connect_s):
                transport, conn = await loop.create_connection(
                    lambda: _Connection(origin.key),
                    origin.host,
                    origin.port,
                    ssl=tls,
                    server_hostname=origin.host if tls else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"{origin.shown}: no connection within {connect_s} s"
            ) from None
        except OSError as exc:  # refused, DNS, TLS (ssl.SSLError is an OSError)
            raise httpx.ConnectError(f"{origin.shown}: {type(exc).__name__}: {exc}") from None
        conn.transport = transport  # uvloop: connection_made comes a loop turn later
        return conn

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
