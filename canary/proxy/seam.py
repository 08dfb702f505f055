"""The upstream seam's types: what the proxy sends (``Outgoing``) and reads (``Answer``).

``canary.proxy.transport`` sends them (aiohttp, and the lean wire client of
``canary.proxy.wire`` under it); ``HttpxUpstream`` sends them through any httpx transport
(an ``httpx.MockTransport`` in unit tests). ``WholeAnswer`` is an answer already read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import aiohttp
import httpx

# What a read of aiohttp's body may raise (besides cancellation); ``Answer.failed`` maps it.
RAW_ERRORS = (aiohttp.ClientError, OSError)


@dataclass(slots=True)
class Outgoing:
    """A request as the proxy sends it: the full target (the client's raw path and query),
    the headers exactly as they go, the body, and the bound on opening a connection."""

    method: str
    url: str
    headers: list[tuple[bytes, bytes]]
    body: bytes | AsyncIterator[bytes]  # an iterator streams an upload (canary.proxy.upload)
    connect_s: float | None = None


class Answer(Protocol):
    """An upstream's answer as the proxy reads it, with no timer of its own.

    ``headers`` are the raw pairs as received. ``readany()`` is the next chunk of the body
    as it arrives (``b""`` at the end); it raises ``httpx.TransportError``, or one of
    ``RAW_ERRORS``, which ``failed`` turns into httpx's error. ``aclose`` frees the
    connection: back to the pool when the body was read whole, else closed."""

    status: int
    headers: Sequence[tuple[bytes, bytes]]

    def readany(self) -> Awaitable[bytes]: ...

    def failed(self, exc: BaseException) -> httpx.TransportError: ...

    async def aclose(self) -> None: ...


class Upstream(Protocol):
    """Where the proxy's requests go: ``AiohttpTransport``, or any httpx transport
    behind ``HttpxUpstream`` (an ``httpx.MockTransport`` in unit tests)."""

    async def send(self, request: Outgoing) -> Answer: ...


async def read_all(answer: Answer) -> bytes:
    """The rest of ``answer``'s body, whole (for small bodies: error answers)."""
    chunks: list[bytes] = []
    try:
        while chunk := await answer.readany():
            chunks.append(chunk)
    except RAW_ERRORS as exc:
        raise answer.failed(exc) from exc
    return b"".join(chunks)


class _PlainAnswer:
    """An answer read from no aiohttp socket: its reads raise httpx's errors, if any."""

    __slots__ = ()

    def failed(self, exc: BaseException) -> httpx.TransportError:
        return httpx.ReadError(f"{type(exc).__name__}: {exc}")


class WholeAnswer(_PlainAnswer):
    """An answer already read whole: its body comes back in one read."""

    __slots__ = ("_body", "headers", "status")

    def __init__(self, status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self._body = body

    async def readany(self) -> bytes:
        body, self._body = self._body, b""
        return body

    async def aclose(self) -> None:
        self._body = b""


class _HttpxAnswer(_PlainAnswer):
    """An httpx response as an ``Answer``: its stream's errors are httpx's already."""

    __slots__ = ("_response", "headers", "readany", "status")

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.headers: Sequence[tuple[bytes, bytes]] = response.headers.raw
        self._response = response
        chunks = aiter(cast(httpx.AsyncByteStream, response.stream))

        async def readany() -> bytes:
            async for chunk in chunks:
                if chunk:
                    return chunk
            return b""

        self.readany = readany

    async def aclose(self) -> None:
        await self._response.aclose()


class _Streamed(httpx.AsyncByteStream):
    """An upload's chunks as httpx's request stream."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            yield chunk


class HttpxUpstream:
    """Any httpx transport as an ``Upstream``: the request built as httpx's, the headers
    as given (httpx adds Host), the connect bound in its timeout extension."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self.transport = transport

    async def send(self, request: Outgoing) -> Answer:
        connect = request.connect_s
        body = request.body
        built = httpx.Request(
            request.method,
            request.url,
            headers=request.headers,
            # final: no re-encoding, no length added
            stream=httpx.ByteStream(body) if isinstance(body, bytes) else _Streamed(body),
            extensions={"timeout": {"connect": connect, "read": None, "write": None, "pool": None}},
        )
        return _HttpxAnswer(await self.transport.handle_async_request(built))
