"""AiohttpTransport against raw asyncio servers on 127.0.0.1, one per failure kind."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import TracebackType

import aiohttp
import httpx
import pytest

from canary.proxy.transport import AiohttpTransport, Outgoing, may_have_reached, read_all
from tests.helpers import serving

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
BOUND = 5.0  # generous bound on waits that should end at once; never reached when passing


class Upstream:
    """A raw server on 127.0.0.1 running ``handler`` for each connection it accepts."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0
        self.url = ""

    async def __aenter__(self) -> Upstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            # Cancelled by __aexit__: 3.11's start_server would log a cancelled handler as an error.
            with contextlib.suppress(asyncio.CancelledError):
                await self._handler(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """Read one request; return its head (request line and headers) and its body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return head, await reader.readexactly(length)


def build(
    method: str, url: str, *, connect: float = BOUND, read: float = BOUND, **kwargs: object
) -> httpx.Request:
    timeout = {"connect": connect, "read": read, "write": None, "pool": None}
    return httpx.Request(method, url, extensions={"timeout": timeout}, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def transport() -> AsyncIterator[AiohttpTransport]:
    transport = AiohttpTransport()
    yield transport
    await transport.aclose()


@pytest.mark.parametrize(
    ("method", "body"), [pytest.param("GET", b"", id="get"), pytest.param("POST", b"{}", id="post")]
)
async def test_forwards_request_exactly_and_returns_response(
    transport: AiohttpTransport, method: str, body: bytes
) -> None:
    """Headers, raw path and query, and body arrive exactly; the response comes back whole."""
    received: list[tuple[bytes, bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await read_request(reader))
        writer.write(
            b"HTTP/1.1 201 Created\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
            b"Content-Length: 5\r\n\r\nhello"
        )
        await reader.read()

    async with Upstream(handler) as upstream:
        headers = [("Authorization", "Bearer sk-1"), ("X-Tag", "one"), ("x-tag", "two")]
        request = build(
            method, upstream.url + "/v1/a%2Fb?x=%20y&x=2", headers=headers, content=body
        )
        response = await transport.handle_async_request(request)
        assert await response.aread() == b"hello"

    # Names go lower-cased (see handle_async_request); values, order and repeats exactly.
    expected = b"".join(
        name.lower() + b": " + value + b"\r\n" for name, value in request.headers.raw
    )
    assert received == [
        (f"{method} /v1/a%2Fb?x=%20y&x=2 HTTP/1.1\r\n".encode() + expected + b"\r\n", body)
    ]
    assert not {b"accept", b"accept-encoding", b"user-agent"} & {
        name.lower() for name, _ in request.headers.raw
    }
    assert request.headers["host"] == upstream.url.removeprefix("http://")
    assert response.status_code == 201
    assert response.reason_phrase == "Created"
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]


async def test_send_forwards_the_proxys_request_exactly(transport: AiohttpTransport) -> None:
    """The proxy's way in: raw pairs out as given (userinfo never made a header), the
    answer's raw headers and body back, the connection pooled once it is read."""
    received: list[tuple[bytes, bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            received.append(await read_request(reader))
            writer.write(
                b"HTTP/1.1 429 Too Many\r\nRetry-After: 1\r\nContent-Length: 4\r\n\r\nslow"
            )

    async with Upstream(handler) as upstream:
        url = upstream.url.replace("http://", "http://u:secret@") + "/v1/x?q=%20"
        headers = [(b"x-api-key", b"k"), (b"x-tag", b"one"), (b"x-tag", b"two")]
        for _ in range(2):
            answer = await transport.send(Outgoing("POST", url, headers, b"{}", BOUND))
            assert (answer.status, await read_all(answer)) == (429, b"slow")
            assert answer.headers[0] == (b"Retry-After", b"1")
            await answer.aclose()

    host = upstream.url.removeprefix("http://").encode()
    given = b"x-api-key: k\r\nx-tag: one\r\nx-tag: two\r\n"
    expected = b"POST /v1/x?q=%20 HTTP/1.1\r\nHost: " + host + b"\r\n" + given
    expected += b"Content-Length: 2\r\n\r\n"
    assert received == [(expected, b"{}")] * 2
    assert upstream.connections == 1


async def test_gzip_body_passes_through_compressed(transport: AiohttpTransport) -> None:
    """A gzip response arrives still compressed, with its Content-Encoding kept."""
    compressed = gzip.compress(b"hello " * 100)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(compressed), compressed)
        )
        await reader.read()

    async with Upstream(handler) as upstream:
        response = await transport.handle_async_request(build("GET", upstream.url))
        raw = b"".join([chunk async for chunk in response.aiter_raw()])

    assert response.headers["content-encoding"] == "gzip"
    assert raw == compressed


async def test_chunks_stream_as_they_arrive(transport: AiohttpTransport) -> None:
    """Each chunk reaches the caller before the upstream has sent the next one."""
    sent: list[bytes] = []
    wanted = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(CHUNKED_HEAD)
        for chunk in (b"one", b"two", b"three"):
            await wanted.wait()
            wanted.clear()
            sent.append(chunk)
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        writer.write(b"0\r\n\r\n")
        await reader.read()

    async with Upstream(handler) as upstream:
        response = await transport.handle_async_request(build("GET", upstream.url))
        wanted.set()
        received = []
        async for chunk in response.aiter_raw():
            received.append(chunk)
            assert received == sent  # nothing was held back, nothing arrived early
            wanted.set()

    assert received == [b"one", b"two", b"three"]


async def test_refused_is_connect_error(transport: AiohttpTransport) -> None:
    """A refused connection is ConnectError, never reached, with no userinfo in the message."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    with pytest.raises(httpx.ConnectError) as caught:
        await transport.handle_async_request(build("POST", f"http://u:secret@127.0.0.1:{port}/"))

    assert isinstance(caught.value.__cause__, aiohttp.ClientConnectorError)
    assert "secret" not in str(caught.value)
    assert not may_have_reached(caught.value)


@pytest.mark.skipif(sys.platform != "linux", reason="relies on Linux dropping SYNs to a full queue")
@pytest.mark.parametrize("read", [BOUND, 0.2], ids=["read-longer", "read-equal"])
async def test_full_accept_queue_is_connect_timeout(
    transport: AiohttpTransport, read: float
) -> None:
    """A SYN nobody answers is ConnectTimeout, never reached, even when the headers' bound
    (which includes the connect) is no longer than the connect bound."""
    # listen(0) queues one connection; Linux drops SYNs beyond it, so the next connect hangs.
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"

        with pytest.raises(httpx.ConnectTimeout) as caught:
            await transport.handle_async_request(build("POST", url, connect=0.2, read=read))

    assert isinstance(caught.value.__cause__, aiohttp.ConnectionTimeoutError)
    assert not may_have_reached(caught.value)


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_close_without_answer_is_remote_protocol_error(
    transport: AiohttpTransport, method: str
) -> None:
    """A close after the request was read is RemoteProtocolError, may have reached, never resent."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with Upstream(handler) as upstream:
        with pytest.raises(httpx.RemoteProtocolError) as caught:
            await transport.handle_async_request(build(method, upstream.url))

    assert isinstance(caught.value.__cause__, aiohttp.ServerDisconnectedError)
    assert may_have_reached(caught.value)
    assert upstream.connections == 1  # aiohttp's resend of idempotent requests is off


async def test_reset_is_read_error(transport: AiohttpTransport) -> None:
    """A reset after the request was read is ReadError, may have reached."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # linger 0: the close sends RST

    async with Upstream(handler) as upstream:
        with pytest.raises(httpx.ReadError) as caught:
            await transport.handle_async_request(build("POST", upstream.url))

    assert isinstance(caught.value.__cause__, aiohttp.ClientOSError)
    assert may_have_reached(caught.value)


async def test_bad_status_line_is_remote_protocol_error(transport: AiohttpTransport) -> None:
    """A reply that is not HTTP is RemoteProtocolError, may have reached, no header shown."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await reader.read()

    async with Upstream(handler) as upstream:
        request = build("POST", upstream.url, headers={"Authorization": "Bearer sk-secret"})
        with pytest.raises(httpx.RemoteProtocolError) as caught:
            await transport.handle_async_request(request)

    assert isinstance(caught.value.__cause__, aiohttp.ClientResponseError)
    assert "sk-secret" not in str(caught.value)
    assert may_have_reached(caught.value)


async def test_no_answer_is_read_timeout(transport: AiohttpTransport) -> None:
    """An upstream that never answers is ReadTimeout, may have reached."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()

    async with Upstream(handler) as upstream:
        with pytest.raises(httpx.ReadTimeout) as caught:
            await transport.handle_async_request(build("POST", upstream.url, read=0.2))

    assert isinstance(caught.value.__cause__, TimeoutError)
    assert may_have_reached(caught.value)


@pytest.mark.parametrize(
    "partial",
    [
        pytest.param(CHUNKED_HEAD + b"5\r\nhello\r\n", id="chunked"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", id="content-length"),
    ],
)
async def test_body_cut_short_is_remote_protocol_error(
    transport: AiohttpTransport, partial: bytes
) -> None:
    """A body the upstream stops sending midway raises RemoteProtocolError while streaming."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(partial)

    async with Upstream(handler) as upstream:
        response = await transport.handle_async_request(build("GET", upstream.url))
        received = []
        with pytest.raises(httpx.RemoteProtocolError) as caught:
            async for chunk in response.aiter_raw():
                received.append(chunk)
        await response.aclose()

    assert b"".join(received) == b"hello"
    assert isinstance(caught.value.__cause__, aiohttp.ClientPayloadError)
    assert may_have_reached(caught.value)


async def test_stall_midway_is_read_timeout(transport: AiohttpTransport) -> None:
    """An upstream that stalls after one chunk raises ReadTimeout while streaming."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(CHUNKED_HEAD + b"5\r\nhello\r\n")
        await reader.read()

    async with Upstream(handler) as upstream:
        response = await transport.handle_async_request(build("GET", upstream.url, read=0.2))
        received = []
        with pytest.raises(httpx.ReadTimeout) as caught:
            async for chunk in response.aiter_raw():
                received.append(chunk)
        await response.aclose()

    assert received == [b"hello"]
    assert isinstance(caught.value.__cause__, TimeoutError)


@pytest.mark.parametrize("path", ["httpx", "proxy"])
async def test_early_close_drops_upstream_connection(
    transport: AiohttpTransport, path: str
) -> None:
    """Closing a half-read answer closes the upstream connection instead of pooling it: as
    an httpx transport (aiohttp), and on the proxy's way in (the wire client)."""
    saw: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(CHUNKED_HEAD + b"5\r\nhello\r\n")
        saw.set_result(await reader.read())

    async with Upstream(handler) as upstream:
        if path == "httpx":
            response = await transport.handle_async_request(build("GET", upstream.url))
            assert await anext(response.aiter_raw()) == b"hello"
            await response.aclose()
        else:
            answer = await transport.send(Outgoing("POST", upstream.url, [], b"{}", BOUND))
            assert await answer.readany() == b"hello"
            await answer.aclose()

        assert await asyncio.wait_for(saw, BOUND) == b""


async def test_connection_is_reused(transport: AiohttpTransport) -> None:
    """Two sequential requests, each read to the end, share one upstream connection."""
    requests = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        while not reader.at_eof():
            with contextlib.suppress(asyncio.IncompleteReadError):
                await read_request(reader)
                requests += 1
                writer.write(OK)

    async with Upstream(handler) as upstream:
        for _ in range(2):
            response = await transport.handle_async_request(build("POST", upstream.url))
            assert await response.aread() == b"ok"

    assert (upstream.connections, requests) == (1, 2)


async def test_reused_connection_closed_by_upstream_is_not_resent(
    transport: AiohttpTransport,
) -> None:
    """A pooled connection the upstream closes on the next request fails it, without a resend."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await read_request(reader)  # then close without answering, like a keep-alive expiry

    async with Upstream(handler) as upstream:
        response = await transport.handle_async_request(build("GET", upstream.url))
        assert await response.aread() == b"ok"
        with pytest.raises(httpx.RemoteProtocolError) as caught:
            await transport.handle_async_request(build("GET", upstream.url))

    assert may_have_reached(caught.value)
    assert upstream.connections == 1


@pytest.mark.parametrize("path", ["httpx", "proxy"])
async def test_cancel_while_waiting_for_headers_closes_connection(
    transport: AiohttpTransport, path: str
) -> None:
    """Cancelling a request awaiting its headers propagates CancelledError and closes the
    socket: as an httpx transport (aiohttp), and on the proxy's way in (the wire client)."""
    arrived = asyncio.Event()
    saw: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        arrived.set()
        saw.set_result(await reader.read())

    async with Upstream(handler) as upstream:
        if path == "httpx":
            sent = transport.handle_async_request(build("POST", upstream.url))
        else:
            sent = transport.send(Outgoing("POST", upstream.url, [], b"{}", BOUND))
        task: asyncio.Task[object] = asyncio.create_task(sent)
        await asyncio.wait_for(arrived.wait(), BOUND)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        assert await asyncio.wait_for(saw, BOUND) == b""


async def test_cancel_while_streaming_closes_connection(transport: AiohttpTransport) -> None:
    """Cancelling a task reading the body propagates CancelledError and closes the socket."""
    saw: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    first = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(CHUNKED_HEAD + b"5\r\nhello\r\n")
        saw.set_result(await reader.read())

    async def consume(response: httpx.Response) -> None:
        async for _ in response.aiter_raw():
            first.set()

    async with Upstream(handler) as upstream:
        response = await transport.handle_async_request(build("GET", upstream.url))
        task = asyncio.create_task(consume(response))
        await asyncio.wait_for(first.wait(), BOUND)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        assert await asyncio.wait_for(saw, BOUND) == b""
        await response.aclose()


async def test_unsupported_scheme_is_never_reached(transport: AiohttpTransport) -> None:
    """A URL aiohttp cannot send is UnsupportedProtocol, never reached."""
    with pytest.raises(httpx.UnsupportedProtocol) as caught:
        await transport.handle_async_request(httpx.Request("GET", "ftp://127.0.0.1/file"))

    assert isinstance(caught.value.__cause__, aiohttp.NonHttpUrlClientError)
    assert not may_have_reached(caught.value)


async def test_non_utf8_header_is_refused_without_its_value(transport: AiohttpTransport) -> None:
    """A header aiohttp cannot send byte-exact is refused before any I/O, its value not shown."""
    request = build("GET", "http://127.0.0.1:9/", headers={"Authorization": b"sk-\xff"})

    with pytest.raises(httpx.LocalProtocolError) as caught:
        await transport.handle_async_request(request)

    assert "sk-" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is not None  # suppressed, but kept for a debugger


@pytest.mark.parametrize(
    ("exc", "reached"),
    [
        (httpx.PoolTimeout("pool"), False),
        (httpx.InvalidURL("url"), False),
        (httpx.WriteError("write"), True),
        (asyncio.CancelledError(), True),
    ],
)
def test_may_have_reached_is_false_only_for_proof(exc: BaseException, reached: bool) -> None:
    """Only errors that prove the request never left say it did not reach the upstream."""
    assert may_have_reached(exc) is reached


async def test_borrowed_session_is_used_and_left_open() -> None:
    """A session passed in carries the requests, never resends them, and outlives the transport."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with aiohttp.ClientSession() as session, Upstream(handler) as upstream:
        transport = AiohttpTransport(session=session)
        with pytest.raises(httpx.RemoteProtocolError):
            await transport.handle_async_request(build("GET", upstream.url))
        await transport.aclose()

        assert not session.closed
        assert upstream.connections == 1


async def test_works_under_async_client() -> None:
    """httpx.AsyncClient drives the transport and closes it."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await reader.read()

    client = httpx.AsyncClient(transport=AiohttpTransport(), timeout=BOUND)
    async with Upstream(handler) as upstream, client:
        response = await client.get(upstream.url)

    assert response.status_code == 200
    assert response.text == "ok"


ROUTES = """
backends:
  legacy: {{base_url: "{url}/v1", timeout_s: 0.2}}
routes:
  - name: all
    weights: {{legacy: 100}}
"""
SSE_HEAD = CHUNKED_HEAD.replace(b"\r\n\r\n", b"\r\nContent-Type: text/event-stream\r\n\r\n")
EVENT = b'data: {"choices": []}\n\n'


@pytest.mark.parametrize(
    ("sent", "status"),
    [
        pytest.param(b"", 504, id="no-headers"),
        pytest.param(SSE_HEAD + b"%x\r\n" % len(EVENT) + EVENT + b"\r\n", 200, id="mid-stream"),
    ],
)
async def test_a_silent_upstream_is_cut_after_timeout_s_through_the_router(
    tmp_path: Path, sent: bytes, status: int
) -> None:
    """timeout_s bounds the wait for the headers (504) and for each next chunk of a stream
    (the stream ends in an error event), with no timer per read."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(sent)
        await reader.read()  # then silence, the connection open

    async with Upstream(handler) as upstream:
        routes = tmp_path / "routes.yaml"
        routes.write_text(ROUTES.format(url=upstream.url))
        async with serving(str(routes), transport=AiohttpTransport(), watch=False) as client:
            body = {"model": "m", "stream": True, "messages": []}
            response = await asyncio.wait_for(client.post("/v1/chat/completions", json=body), BOUND)

    assert response.status_code == status
    if status == 504:
        assert response.json()["error"]["code"] == "upstream_timeout"
    else:
        assert response.content.startswith(EVENT)
        assert b'"error"' in response.content[len(EVENT) :]


async def test_a_retryable_answer_whose_body_stalls_is_cut_after_timeout_s(
    tmp_path: Path,
) -> None:
    """A 503 whose body stops short, read whole before a retry, is bounded like any read:
    the call ends as a 504 instead of holding its slot and connection."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 503 Busy\r\nContent-Length: 100\r\n\r\npartial")
            await reader.read()  # then silence, the connection open

    async with Upstream(handler) as upstream:
        routes = tmp_path / "routes.yaml"
        routes.write_text(ROUTES.format(url=upstream.url))
        async with serving(str(routes), transport=AiohttpTransport(), watch=False) as client:
            body = {"model": "m", "messages": []}
            response = await asyncio.wait_for(client.post("/v1/chat/completions", json=body), BOUND)

    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
