"""An httpx transport that sends requests through a pooled aiohttp session, with exact errors.

The proxy keeps httpx as its client API (``httpx.Request``/``httpx.Response``, and
``httpx.MockTransport`` in unit tests), but httpx's own httpcore pool costs ~1.7 ms CPU per
proxied request against ~0.4 ms for an aiohttp pool. The ``httpx-aiohttp`` package maps every
aiohttp connection error to ``httpx.ConnectTimeout``, even a reset after the request reached
the provider; retries and fallback must know better, since an LLM call received twice is billed
twice. So canary owns this small transport, and ``may_have_reached`` answers that question.

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

Timeouts cost no timer per chunk: one ``asyncio.timeout`` bounds the wait for the headers
(aiohttp's ``sock_read`` would re-arm a timer on every read). The relay reads the body straight
from aiohttp through ``raw_body`` and bounds it with its own coarse deadline; anyone else
iterating ``response.stream`` gets the read bound applied per read, as before.

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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Protocol

import aiohttp
import httpx
import yarl
from aiohttp.connector import NEEDS_CLEANUP_CLOSED
from multidict import CIMultiDict

__all__ = ["RAW_ERRORS", "AiohttpTransport", "RawBody", "may_have_reached", "raw_body"]


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


def may_have_reached(exc: BaseException) -> bool:
    """False only when ``exc`` proves the request never reached the upstream."""
    return not isinstance(exc, _NEVER_SENT)


def _translate(exc: BaseException, method: str, target: str) -> httpx.TransportError:
    # aiohttp's messages name host, port, OS error or the bad status line, never a request
    # header, and ``target`` has no userinfo, so no credential can end up in the message.
    kind = next((out for cls, out in _ERRORS if isinstance(exc, cls)), httpx.TransportError)
    return kind(f"{method} {target}: {type(exc).__name__}: {exc}")


# What a read of aiohttp's body may raise (besides cancellation); ``RawBody.failed`` maps it.
RAW_ERRORS = (aiohttp.ClientError, OSError)


class RawBody(Protocol):
    """The upstream body as aiohttp reads it, for a consumer that bounds its own waits.

    ``readany()`` is the next chunk as it arrives (``b""`` at the end), with no timer of
    its own; it raises one of ``RAW_ERRORS``, which ``failed`` turns into httpx's error."""

    readany: Callable[[], Awaitable[bytes]]

    def failed(self, exc: BaseException) -> httpx.TransportError: ...


class _ResponseStream(httpx.AsyncByteStream):
    """The body as chunks arrive; closing early drops the connection instead of pooling it."""

    __slots__ = ("_method", "_read_s", "_response", "_target", "readany")

    def __init__(
        self, response: aiohttp.ClientResponse, method: str, target: str, read_s: float | None
    ) -> None:
        self._response = response
        self._method = method
        self._target = target
        self._read_s = read_s
        self.readany: Callable[[], Awaitable[bytes]] = response.content.readany

    def failed(self, exc: BaseException) -> httpx.TransportError:
        self._response.close()
        return _translate(exc, self._method, self._target)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        # The generic path (not the relay's): the read bound applies to each read.
        read, read_s = self.readany, self._read_s
        try:
            while True:
                if read_s is None:
                    chunk = await read()
                else:
                    async with asyncio.timeout(read_s):
                        chunk = await read()
                if not chunk:
                    return
                yield chunk
        except RAW_ERRORS as exc:
            raise self.failed(exc) from exc
        except BaseException:  # cancelled, or the consumer stopped early
            self._response.close()
            raise

    async def aclose(self) -> None:
        if self._response.content.at_eof():
            self._response.release()  # fully read: back to the pool
        else:
            # A half-read connection cannot be reused; closing it tells the upstream we left.
            self._response.close()


def raw_body(response: httpx.Response) -> RawBody | None:
    """The aiohttp body behind ``response`` when this transport made it, else None."""
    stream = response.stream
    return stream if isinstance(stream, _ResponseStream) else None


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Send httpx requests over one pooled ``aiohttp.ClientSession``, created on first use.

    Timeouts come from ``request.extensions["timeout"]``: ``connect`` bounds DNS plus connect,
    ``read`` bounds the wait for the headers and for each next chunk; ``write`` and ``pool`` do
    not apply (the pool is unbounded). A request without that extension gets ``connect_timeout``
    and no read timeout. A ``session`` passed in is borrowed: its resend of idempotent requests
    is turned off, and ``aclose`` leaves it open.
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
        self._urls: dict[str, yarl.URL] = {}

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

    def _timeouts_of(
        self, request: httpx.Request
    ) -> tuple[aiohttp.ClientTimeout, float | None, float | None]:
        """aiohttp's connect bound, the read bound (each next chunk) and the headers' bound.

        The headers' wait includes the connect; when the connect bound is not below the read
        bound, it ends just after it, so a connect that times out stays a ConnectTimeout
        (never sent, so retried) rather than a ReadTimeout."""
        given = request.extensions.get("timeout")
        if given is None:
            connect, read = self._connect_timeout, None
        else:
            connect, read = given.get("connect"), given.get("read")
        timeout = self._timeouts.get(connect)
        if timeout is None:
            if len(self._timeouts) >= 64:  # keys come from config; bound them anyway
                self._timeouts.clear()
            # No sock_read: aiohttp would re-arm that timer on every read of every stream.
            timeout = aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect)
            self._timeouts[connect] = timeout
        if read is None or connect is None or connect < read:
            return timeout, read, read
        return timeout, read, connect + _AFTER_CONNECT_S

    def _yarl(self, target: str) -> yarl.URL:
        """``target`` parsed once: upstream URLs are few, and parsing one is not cheap."""
        url = self._urls.get(target)
        if url is None:
            if len(self._urls) >= 4096:
                self._urls.clear()
            url = self._urls[target] = yarl.URL(target, encoded=True)
        return url

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session if self._session is not None else self._open()
        method = request.method
        url = request.url
        if url.userinfo:  # aiohttp would turn it into an Authorization header
            url = url.copy_with(userinfo=b"")
        target = str(url)
        stream = request.stream
        # The plane's body is a ByteStream: joined as it is, without an async iteration.
        content = (
            b"".join(stream) if isinstance(stream, httpx.ByteStream) else await request.aread()
        )
        try:
            # Lower-cased names, as ASGI delivers them: aiohttp merges repeated names
            # case-sensitively and would drop "X-A: 1" before "x-a: 2". It writes UTF-8, so
            # strict UTF-8 decoding round-trips the bytes exactly.
            headers = [
                (name.lower().decode(), value.decode()) for name, value in request.headers.raw
            ]
        except UnicodeDecodeError:
            # from None: the decode error would carry the header's bytes, maybe an API key.
            raise httpx.LocalProtocolError(
                f"{method} {target}: a request header is not UTF-8"
            ) from None
        timeout, read_s, headers_s = self._timeouts_of(request)
        try:
            # One timer bounds the wait for the headers (the connect included).
            async with asyncio.timeout(headers_s) if headers_s else contextlib.nullcontext():
                response = await session.request(
                    method,
                    self._yarl(target),  # the client's raw path and query, untouched
                    headers=headers,
                    data=content or None,
                    allow_redirects=False,
                    timeout=timeout,
                )
        except RAW_ERRORS as exc:
            raise _translate(exc, method, target) from exc
        version = b"HTTP/1.0" if response.version == aiohttp.HttpVersion10 else b"HTTP/1.1"
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            stream=_ResponseStream(response, method, target, read_s),
            extensions={
                "http_version": version,
                "reason_phrase": (response.reason or "").encode("ascii", "ignore"),
            },
            request=request,
        )

    async def aclose(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
