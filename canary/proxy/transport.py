"""The upstream seam: requests out through a pooled aiohttp session, with exact errors.

The proxy sends an ``Outgoing`` and reads an ``Answer`` (``Upstream.send``; the types are in
``canary.proxy.seam``): plain objects, the headers as raw pairs, the body read as it
arrives. ``AiohttpTransport`` is the one that serves traffic, its plain calls on the lean
wire client of ``canary.proxy.wire`` and the rest on aiohttp; any httpx transport works
through ``HttpxUpstream`` (an ``httpx.MockTransport`` in unit tests), and
``AiohttpTransport`` is an httpx transport too, for httpx's own callers. Why not httpx's
objects on the hot path: building an ``httpx.Request`` and ``httpx.Response`` (and
normalising their headers) cost ~8 us of CPU per call for nothing the proxy reads. Why not
httpx's httpcore pool: ~1.7 ms CPU per call against ~0.4 ms for aiohttp's. Why not the
``httpx-aiohttp`` package: it maps every aiohttp connection error to
``httpx.ConnectTimeout``, even a reset after the request reached the provider; retries and
fallback must know better, since an LLM call received twice is billed twice. So canary owns
this small transport, and ``may_have_reached`` answers that question.

Bytes pass through untouched: no decompression, no cookies, no redirects, no headers of
aiohttp's own, the raw path and query as given. Errors, first match wins (order matters: aiohttp's
connect and read timeouts are ``OSError``/``TimeoutError`` subclasses, its connector errors are
``ClientOSError`` subclasses)::

    aiohttp / asyncio                          httpx                  may_have_reached
    ConnectionTimeoutError (sock_connect)      ConnectTimeout         False
    ClientConnectorError (refused, DNS, TLS)   ConnectError           False
    ServerFingerprintMismatch                  ConnectError           False
    InvalidURL, NonHttpUrlClientError          UnsupportedProtocol    False
    SocketTimeoutError, asyncio.TimeoutError   ReadTimeout            True
    ServerDisconnectedError                    RemoteProtocolError    True
    ClientPayloadError (body cut short)        RemoteProtocolError    True
    ClientResponseError (bad status line...)   RemoteProtocolError    True
    ClientOSError, ClientConnectionResetError  ReadError              True
    other ClientConnectionError, OSError       ReadError              True
    other ClientError                          TransportError         True
    asyncio.CancelledError                     propagates untouched   True

Timeouts cost no timer per chunk: ``send`` bounds only the connect, and the proxy bounds the
headers and the body with its call's watch (``canary.proxy.watchdog``). As an httpx transport,
one ``asyncio.timeout`` bounds the wait for the headers and the read bound applies per read
(aiohttp's ``sock_read`` would re-arm a timer on every read of every stream).

aiohttp silently re-sends idempotent requests (GET, PUT, DELETE...) once after a reset or a
disconnect; that retry is turned off, so one call here is at most one request upstream. A pooled
connection the upstream closed while idle is dropped once the loop has read its FIN; a request
that takes it first fails with ``ReadError`` ("Can not write request body"), and an upstream
that reads the request and then closes gives ``RemoteProtocolError``. Neither is resent. Keep
``keepalive_s`` below the upstream's idle timeout to make the first rare.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence

import aiohttp
import httpx
import yarl
from aiohttp.connector import NEEDS_CLEANUP_CLOSED
from multidict import CIMultiDict

from canary.proxy.seam import (
    RAW_ERRORS,
    Answer,
    HttpxUpstream,
    Outgoing,
    Upstream,
    WholeAnswer,
    read_all,
)
from canary.proxy.wire import METHODS, Origin, WirePool, origin_of, wire_head

__all__ = [
    "RAW_ERRORS",
    "AiohttpTransport",
    "Answer",
    "HttpxUpstream",
    "Outgoing",
    "Upstream",
    "WholeAnswer",
    "as_upstream",
    "may_have_reached",
    "read_all",
]


class _ExactRequest(aiohttp.ClientRequest):
    """aiohttp's request adding no header of its own: the headers sent are exactly the
    caller's (Host and Content-Length aside).

    aiohttp adds Accept, Accept-Encoding and User-Agent when absent, and a Content-Type
    for a body; its ``skip_auto_headers`` option turns that off but rebuilds the skip set
    and copies the headers on every request (about 8 us). Here the set is built once."""

    _NEVER_ADDED: CIMultiDict[None] = CIMultiDict(
        (name, None) for name in ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
    )

    def update_auto_headers(self, skip_auto_headers: Iterable[str] | None) -> None:
        self._skip_auto_headers = self._NEVER_ADDED  # read by aiohttp before any addition


_READ_BUFSIZE = 16 << 10
_Bound = float | None
_AFTER_CONNECT_S = 0.05

_ERRORS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ServerFingerprintMismatch, httpx.ConnectError),
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.NonHttpUrlClientError, httpx.UnsupportedProtocol),
    (asyncio.TimeoutError, httpx.ReadTimeout),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),
    (aiohttp.ClientConnectionError, httpx.ReadError),
    (OSError, httpx.ReadError),
)

_NEVER_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
    httpx.InvalidURL,
)


def headers_wait(connect: float, read: float) -> float:
    """The bound on the wait for the headers, the connect included: ``read``, or just past
    the connect's bound when that is not shorter, so a connect that times out stays a
    ``ConnectTimeout`` (never sent, so retried) rather than a ``ReadTimeout``."""
    return read if connect < read else connect + _AFTER_CONNECT_S


def may_have_reached(exc: BaseException) -> bool:
    """False only when ``exc`` proves the request never reached the upstream."""
    return not isinstance(exc, _NEVER_SENT)


def _translate(exc: BaseException, method: str, target: str) -> httpx.TransportError:
    # aiohttp's messages name host, port, OS error or the bad status line, never a request
    # header, and ``target`` has no userinfo, so no credential can end up in the message.
    kind = next((out for cls, out in _ERRORS if isinstance(exc, cls)), httpx.TransportError)
    return kind(f"{method} {target}: {type(exc).__name__}: {exc}")


class _AiohttpAnswer:
    """An aiohttp response as an ``Answer``."""

    __slots__ = ("_method", "_response", "_target", "headers", "readany", "status")

    def __init__(self, response: aiohttp.ClientResponse, method: str, target: str) -> None:
        self.status = response.status
        self.headers: Sequence[tuple[bytes, bytes]] = response.raw_headers
        self.readany: Callable[[], Awaitable[bytes]] = response.content.readany
        self._response = response
        self._method = method
        self._target = target

    def failed(self, exc: BaseException) -> httpx.TransportError:
        self._response.close()
        return _translate(exc, self._method, self._target)

    async def aclose(self) -> None:
        if self._response.content.at_eof():
            self._response.release()  # fully read: back to the pool
        else:
            # A half-read connection cannot be reused; closing it tells the upstream we left.
            self._response.close()


class _ResponseStream(httpx.AsyncByteStream):
    """An answer's body for httpx's callers, the read bound applied to each read."""

    __slots__ = ("_answer", "_read_s")

    def __init__(self, answer: _AiohttpAnswer, read_s: float | None) -> None:
        self._answer = answer
        self._read_s = read_s

    async def __aiter__(self) -> AsyncIterator[bytes]:
        answer, read_s = self._answer, self._read_s
        try:
            while True:
                if read_s is None:
                    chunk = await answer.readany()
                else:
                    async with asyncio.timeout(read_s):
                        chunk = await answer.readany()
                if not chunk:
                    return
                yield chunk
        except RAW_ERRORS as exc:
            raise answer.failed(exc) from exc
        except BaseException:  # cancelled, or the consumer stopped early
            await answer.aclose()
            raise

    async def aclose(self) -> None:
        await self._answer.aclose()


def as_upstream(transport: httpx.AsyncBaseTransport) -> Upstream:
    """``transport`` itself when it is canary's (no httpx object per call), else adapted."""
    return transport if isinstance(transport, AiohttpTransport) else HttpxUpstream(transport)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Send requests over one pooled ``aiohttp.ClientSession``, created on first use.

    ``send`` is the proxy's way in (``Upstream``: no httpx object per call). As an httpx
    transport, timeouts come from ``request.extensions["timeout"]``: ``connect`` bounds DNS
    plus connect, ``read`` bounds the wait for the headers and for each next chunk; ``write``
    and ``pool`` do not apply (the pool is unbounded). A request without that extension
    gets ``connect_timeout`` and no read timeout. A ``session`` passed in is borrowed: its
    resend of idempotent requests is turned off, and ``aclose`` leaves it open.
    """

    def __init__(
        self,
        *,
        connect_timeout: float = 10.0,
        keepalive_s: float = 30.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._keepalive_s = keepalive_s
        self._owns_session = session is None
        self._session = session
        if session is not None:
            session._retry_connection = False  # see the module docstring
        self._timeouts: dict[float | None, aiohttp.ClientTimeout] = {}
        self._urls: dict[str, tuple[yarl.URL, str]] = {}
        self._origins: dict[str, Origin | None] = {}
        self._wire = WirePool(keepalive_s)

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=0,
            limit_per_host=0,
            keepalive_timeout=self._keepalive_s,
            ttl_dns_cache=300,
            enable_cleanup_closed=NEEDS_CLEANUP_CLOSED,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),  # never carry one user's cookies to another
            auto_decompress=False,
            # aiohttp stops reading a connection once 2 x this is buffered unread: with a
            # slow client, 32 KiB per stream waits here instead of 128 KiB.
            read_bufsize=_READ_BUFSIZE,
            request_class=_ExactRequest,
            timeout=aiohttp.ClientTimeout(total=None),
        )
        # aiohttp re-sends idempotent requests once after a reset; whether to retry a request
        # that may have reached the provider is the caller's decision, not the pool's.
        session._retry_connection = False
        self._session = session
        return session

    def pool(self) -> aiohttp.ClientSession:
        """The pooled session, opened on first use (WebSocket sessions share its connector)."""
        return self._session if self._session is not None else self._open()

    def _timeout(self, connect: float | None) -> aiohttp.ClientTimeout:
        """aiohttp's bound on the connect only (one per value, shared)."""
        timeout = self._timeouts.get(connect)
        if timeout is None:
            if len(self._timeouts) >= 64:  # values come from config; bound them anyway
                self._timeouts.clear()
            # No sock_read: aiohttp would re-arm that timer on every read of every stream.
            timeout = aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect)
            self._timeouts[connect] = timeout
        return timeout

    def _target(self, target: str) -> tuple[yarl.URL, str]:
        """``target`` parsed once (upstream URLs are few, parsing one is not cheap), without
        userinfo (aiohttp would turn it into an Authorization header), and as shown in errors."""
        known = self._urls.get(target)
        if known is None:
            if len(self._urls) >= 4096:
                self._urls.clear()
            url = yarl.URL(target, encoded=True)
            if url.raw_user is not None or url.raw_password is not None:
                url = url.with_user(None)
            known = self._urls[target] = (url, str(url))
        return known

    async def send(self, request: Outgoing) -> Answer:
        """A plain call goes out on the lean wire client (``canary.proxy.wire``), the rest
        through aiohttp."""
        body = request.body
        if type(body) is bytes and request.method in METHODS:
            origin = self._origin(request.url)
            if origin is not None:
                head = wire_head(request.method, origin.shown, request.headers)
                return await self._wire.send(request.method, origin, head, body, request.connect_s)
        return await self._send_aiohttp(request)

    def _origin(self, target: str) -> Origin | None:
        """``target`` split for the wire once (targets are few: base URL and path)."""
        try:
            return self._origins[target]
        except KeyError:
            if len(self._origins) >= 4096:
                self._origins.clear()
            origin = self._origins[target] = origin_of(target)
            return origin

    async def _send_aiohttp(self, request: Outgoing) -> Answer:
        session = self._session if self._session is not None else self._open()
        method = request.method
        url, shown = self._target(request.url)
        try:
            # Lower-cased names, as ASGI delivers them: aiohttp merges repeated names
            # case-sensitively and would drop "X-A: 1" before "x-a: 2". It writes UTF-8, so
            # strict UTF-8 decoding round-trips the bytes exactly.
            headers = [(name.lower().decode(), value.decode()) for name, value in request.headers]
        except UnicodeDecodeError:
            # from None: the decode error would carry the header's bytes, maybe an API key.
            raise httpx.LocalProtocolError(
                f"{method} {shown}: a request header is not UTF-8"
            ) from None
        try:
            response = await session.request(
                method,
                url,  # the client's raw path and query, untouched
                headers=headers,
                data=request.body or None,
                allow_redirects=False,
                timeout=self._timeout(request.connect_s),
            )
        except RAW_ERRORS as exc:
            raise _translate(exc, method, shown) from exc
        return _AiohttpAnswer(response, method, shown)

    def _timeouts_of(
        self, request: httpx.Request
    ) -> tuple[float | None, float | None, float | None]:
        """The connect bound, the read bound (each next chunk) and the headers' bound."""
        given = request.extensions.get("timeout")
        if given is None:
            connect, read = self._connect_timeout, None
        else:
            connect, read = given.get("connect"), given.get("read")
        if read is None or connect is None:
            return connect, read, read
        return connect, read, headers_wait(connect, read)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        stream = request.stream
        # A ByteStream is joined as it is, without an async iteration.
        content = (
            b"".join(stream) if isinstance(stream, httpx.ByteStream) else await request.aread()
        )
        connect, read_s, headers_s = self._timeouts_of(request)
        outgoing = Outgoing(request.method, str(request.url), request.headers.raw, content, connect)
        try:
            # One timer bounds the wait for the headers (the connect included).
            async with asyncio.timeout(headers_s) if headers_s else contextlib.nullcontext():
                answer = await self._send_aiohttp(outgoing)
        except TimeoutError as exc:
            raise _translate(exc, request.method, self._target(outgoing.url)[1]) from exc
        assert isinstance(answer, _AiohttpAnswer)
        response = answer._response
        version = b"HTTP/1.0" if response.version == aiohttp.HttpVersion10 else b"HTTP/1.1"
        return httpx.Response(
            answer.status,
            headers=answer.headers,
            stream=_ResponseStream(answer, read_s),
            extensions={
                "http_version": version,
                "reason_phrase": (response.reason or "").encode("ascii", "ignore"),
            },
            request=request,
        )

    async def aclose(self) -> None:
        self._wire.close()
        if self._session is not None and self._owns_session:
            await self._session.close()
