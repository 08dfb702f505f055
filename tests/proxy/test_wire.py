"""The lean wire client (``canary.proxy.wire``) through ``AiohttpTransport.send``, the
proxy's way in, against raw asyncio servers on 127.0.0.1: one test per failure kind, and
a property test of the answer's framing split at random points."""

from __future__ import annotations

import asyncio
import itertools
import socket
import ssl
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canary.proxy.transport import AiohttpTransport, Outgoing, may_have_reached, read_all
from canary.proxy.wire import PAUSE_BYTES, WireAnswer, origin_of
from tests.helpers import self_signed
from tests.proxy.test_transport import BOUND, CHUNKED_HEAD, OK, Upstream, read_request


@pytest.fixture
async def transport() -> AsyncIterator[AiohttpTransport]:
    transport = AiohttpTransport()
    yield transport
    await transport.aclose()


def post(url: str, headers: list[tuple[bytes, bytes]] | None = None) -> Outgoing:
    return Outgoing("POST", url, headers or [], b"{}", BOUND)


async def test_a_plain_call_goes_on_the_wire_and_its_connection_is_reused(
    transport: AiohttpTransport,
) -> None:
    """The request leaves exactly; the answer whole; one connection for two calls."""
    received: list[tuple[bytes, bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            received.append(await read_request(reader))
            writer.write(b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 5\r\n\r\nhello")

    async with Upstream(handler) as upstream:
        for _ in range(2):
            answer = await transport.send(
                Outgoing("GET", upstream.url + "/v1/m?x=%20", [(b"x-tag", b"t")], b"", BOUND)
            )
            assert isinstance(answer, WireAnswer)
            assert (answer.status, await read_all(answer)) == (200, b"hello")
            assert list(answer.headers) == [(b"X-A", b"1"), (b"Content-Length", b"5")]
            await answer.aclose()

    host = upstream.url.removeprefix("http://").encode()
    head = b"GET /v1/m?x=%20 HTTP/1.1\r\nHost: " + host + b"\r\nx-tag: t\r\n\r\n"
    assert received == [(head, b"")] * 2
    assert upstream.connections == 1


async def test_an_answer_that_says_close_is_not_reused(transport: AiohttpTransport) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
        await reader.read()  # open until we close: the answer's word alone must do

    async with Upstream(handler) as upstream:
        for _ in range(2):
            answer = await transport.send(post(upstream.url))
            assert await read_all(answer) == b"ok"
            await answer.aclose()

    assert upstream.connections == 2


async def test_refused_is_connect_error_without_userinfo(transport: AiohttpTransport) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    with pytest.raises(httpx.ConnectError) as caught:
        await transport.send(post(f"http://u:secret@127.0.0.1:{port}/v1/x"))

    assert "secret" not in str(caught.value)
    assert not may_have_reached(caught.value)


@pytest.mark.skipif(sys.platform != "linux", reason="relies on Linux dropping SYNs to a full queue")
async def test_full_accept_queue_is_connect_timeout(transport: AiohttpTransport) -> None:
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1/x"
        with pytest.raises(httpx.ConnectTimeout) as caught:
            await transport.send(Outgoing("POST", url, [], b"{}", 0.2))

    assert not may_have_reached(caught.value)


async def test_close_without_answer_is_remote_protocol_error_never_resent(
    transport: AiohttpTransport,
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with Upstream(handler) as upstream:
        with pytest.raises(httpx.RemoteProtocolError) as caught:
            await transport.send(post(upstream.url))

    assert may_have_reached(caught.value)
    assert upstream.connections == 1


async def test_reset_is_read_error(transport: AiohttpTransport) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # linger 0: the close sends RST

    async with Upstream(handler) as upstream:
        with pytest.raises(httpx.ReadError) as caught:
            await transport.send(post(upstream.url))

    assert may_have_reached(caught.value)


async def test_garbage_is_remote_protocol_error_without_headers(
    transport: AiohttpTransport,
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await reader.read()

    async with Upstream(handler) as upstream:
        with pytest.raises(httpx.RemoteProtocolError) as caught:
            await transport.send(post(upstream.url, [(b"authorization", b"Bearer sk-secret")]))

    assert "sk-secret" not in str(caught.value)


async def test_a_body_cut_short_fails_and_a_close_delimited_one_is_whole(
    transport: AiohttpTransport,
) -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",  # cut
        b"HTTP/1.1 200 OK\r\n\r\nuntil the end",  # delimited by the close
    ]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answers.pop(0))

    async with Upstream(handler) as upstream:
        answer = await transport.send(post(upstream.url))
        with pytest.raises(httpx.RemoteProtocolError):
            await read_all(answer)
        await answer.aclose()
        answer = await transport.send(post(upstream.url))
        assert await read_all(answer) == b"until the end"
        await answer.aclose()

    assert upstream.connections == 2


@pytest.mark.parametrize(
    "value", [b"a\r\nx-injected: 1", b"a\nb", b"sk-\xff"], ids=["crlf", "lf", "not-utf8"]
)
async def test_a_header_that_cannot_go_is_refused_before_any_byte(
    transport: AiohttpTransport, value: bytes
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with Upstream(handler) as upstream:
        with pytest.raises(httpx.LocalProtocolError) as caught:
            await transport.send(post(upstream.url, [(b"authorization", value)]))

    assert upstream.connections == 0
    assert "sk-" not in str(caught.value) and "injected" not in str(caught.value)


async def test_early_hints_are_skipped(transport: AiohttpTransport) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK)
        await reader.read()

    async with Upstream(handler) as upstream:
        answer = await transport.send(post(upstream.url))
        assert (answer.status, await read_all(answer)) == (200, b"ok")
        assert list(answer.headers) == [(b"Content-Length", b"2")]
        await answer.aclose()


async def test_an_answer_not_taken_stops_the_reading(transport: AiohttpTransport) -> None:
    """Backpressure: a body nobody takes is not read past about ``PAUSE_BYTES``."""
    size = 4 << 20

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        writer.write(b"x" * size)
        await writer.drain()

    async with Upstream(handler) as upstream:
        answer = await transport.send(post(upstream.url))
        assert isinstance(answer, WireAnswer)
        conn = answer._conn
        for _ in range(10_000):  # loop turns (each polls the socket) until reading stops
            if conn.paused:
                break
            await asyncio.sleep(0)
        assert conn.paused
        assert conn.buffered <= PAUSE_BYTES + (256 << 10)  # one socket read past the mark
        assert len(await read_all(answer)) == size
        await answer.aclose()


async def test_an_idle_connection_past_keepalive_is_not_taken(
    transport: AiohttpTransport,
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(OK)

    async with Upstream(handler) as upstream:
        for n in range(2):
            answer = await transport.send(post(upstream.url))
            assert await read_all(answer) == b"ok"
            await answer.aclose()
            if n == 0:
                for idle in transport._wire._idle.values():
                    for conn in idle:
                        conn.idle_since -= transport._wire.keepalive_s + 1  # as if it idled

    assert upstream.connections == 2


def test_origin_of_targets() -> None:
    origin = origin_of("https://u:p@[::1]:8443/v1/chat?x=1")
    assert origin is not None
    assert (origin.host, origin.port, origin.tls) == ("::1", 8443, True)
    assert (origin.host_header, origin.path) == (b"[::1]:8443", b"/v1/chat?x=1")
    assert "p@" not in origin.shown
    plain = origin_of("http://relay.test/v1/x")
    assert plain is not None and (plain.port, plain.host_header) == (80, b"relay.test")
    raw = origin_of("http://x/v1/caf\xc3\xa9")  # bytes as the plane decodes them (latin-1)
    assert raw is not None and raw.path == b"/v1/caf\xc3\xa9"
    assert origin_of("http://x/v1/a b") is None
    assert origin_of("ftp://x/v1") is None
    assert origin_of("http://x:99999/v1") is None


async def test_https_upstream(transport: AiohttpTransport, tmp_path: Path) -> None:
    """TLS with the hostname checked: a self-signed certificate for 127.0.0.1, trusted."""
    key, cert = await asyncio.to_thread(self_signed, tmp_path)
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    transport._wire._tls = ssl.create_default_context(cafile=str(cert))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=served)
    port = server.sockets[0].getsockname()[1]
    try:
        answer = await transport.send(post(f"https://127.0.0.1:{port}/v1/x"))
        assert (answer.status, await read_all(answer)) == (200, b"ok")
        await answer.aclose()
        transport._wire._tls = ssl.create_default_context()  # not trusted: refused
        transport._wire.close()
        with pytest.raises(httpx.ConnectError):
            await transport.send(post(f"https://127.0.0.1:{port}/v1/x"))
    finally:
        server.close()


def _framed(body: bytes, framing: str, sizes: list[int]) -> bytes:
    if framing == "length":
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    if framing == "close":
        return b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body
    out, at = [CHUNKED_HEAD], 0
    for size in [*sizes, len(body)]:
        part = body[at : at + max(1, size)]
        if part:
            out.append(b"%x\r\n%s\r\n" % (len(part), part))
        at += len(part)
        if at >= len(body):
            break
    out.append(b"0\r\n\r\n")
    return b"".join(out)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    body=st.binary(max_size=3000),
    framing=st.sampled_from(["length", "chunked", "close"]),
    sizes=st.lists(st.integers(1, 700), max_size=6),
    cuts=st.lists(st.integers(0, 4000), max_size=5),
)
def test_any_framing_split_anywhere_reads_whole(
    body: bytes, framing: str, sizes: list[int], cuts: list[int]
) -> None:
    """Whatever the framing and wherever the writes split it, the body is read whole."""
    wire = _framed(body, framing, sizes)
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        for a, b in itertools.pairwise(points):
            writer.write(wire[a:b])
            await writer.drain()
            await asyncio.sleep(0)
        if framing != "close":
            await reader.read()

    async def run() -> None:
        transport = AiohttpTransport()
        try:
            async with Upstream(handler) as upstream:
                answer = await transport.send(post(upstream.url))
                assert answer.status == 200
                assert await read_all(answer) == body
                await answer.aclose()
        finally:
            await transport.aclose()

    asyncio.run(run())
