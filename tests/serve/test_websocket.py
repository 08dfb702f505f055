"""canary's WebSocket protocol (``canary.serve.websocket``): its frame writer, in process.

The protocol runs on a recording transport; a ``websockets`` client protocol makes the
handshake (with or without permessage-deflate) and parses every byte written, so a frame
is checked by another implementation than the one that wrote it. The e2e tests
(``tests/e2e/test_sessions_e2e.py``) run it between real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.types import Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.server import ServerState
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from canary.serve.drain import _is_session
from canary.serve.websocket import SessionProtocol
from canary.types import FRAMES, FrameWriter


class Wire(asyncio.Transport):
    """A transport that keeps what is written, for the client protocol to read."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Session:
    """A session on ``SessionProtocol``: the app's scope and send, the client's view."""

    def __init__(self, deflate: bool) -> None:
        self.scope: Scope = {}
        self.send: Send | None = None
        self.accepted = asyncio.Event()
        self.wire = Wire()
        config = Config(self.app, ws=SessionProtocol, interface="asgi3", log_level="critical")
        config.load()
        self.server = SessionProtocol(config, ServerState(), {})
        extensions = [ClientPerMessageDeflateFactory()] if deflate else None
        self.client = ClientProtocol(parse_uri("ws://127.0.0.1:8000/v1/x"), extensions=extensions)

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        self.scope, self.send = scope, send
        self.accepted.set()
        await asyncio.Event().wait()  # the test drives the session from here

    async def open(self) -> FrameWriter:
        self.server.connection_made(self.wire)
        self.client.send_request(self.client.connect())
        self.server.data_received(b"".join(self.client.data_to_send()))
        await asyncio.wait_for(self.accepted.wait(), 5)
        self.received()  # the 101
        writer: FrameWriter = self.scope["extensions"][FRAMES]
        return writer

    def received(self) -> list[tuple[str, Any]]:
        """What the client got since last asked: each message as ("text" | "bytes", data)."""
        self.client.receive_data(bytes(self.wire.out))
        self.wire.out.clear()
        got = []
        for event in self.client.events_received():
            if isinstance(event, Frame):
                kind = "text" if event.opcode is Opcode.TEXT else "bytes"
                data = event.data.decode() if kind == "text" else bytes(event.data)
                got.append((kind, data))
        return got

    def end(self) -> None:
        """The connection lost (if it was not yet) and the app's task cancelled."""
        if not self.server.disconnected:
            self.server.connection_lost(None)
        for task in list(self.server.tasks):
            task.cancel()


@pytest.fixture
async def closing() -> AsyncIterator[list[Session]]:
    """Sessions made by a test, ended after it."""
    made: list[Session] = []
    yield made
    for session in made:
        session.end()


messages = st.lists(
    st.tuples(
        st.sampled_from(["text", "bytes"]),
        st.sampled_from([0, 1, 125, 126, 127, 65535, 65536, 70000]),
        st.booleans(),  # through the writer, or through ASGI's send
    ),
    max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sent=messages, deflate=st.booleans())
def test_frames_written_directly_or_sent_arrive_whole_and_in_order(
    sent: list[tuple[str, int, bool]], deflate: bool
) -> None:
    """Text and binary frames of every header size (7-, 16- and 64-bit lengths), written by
    the writer or sent through ASGI in any mix, reach the client unchanged and in order,
    compressed or not."""

    async def scenario() -> None:
        session = Session(deflate)
        writer = await session.open()
        assert session.send is not None
        want = []
        for i, (kind, size, direct) in enumerate(sent):
            data: Any = (chr(97 + i % 26) * size) if kind == "text" else bytes([i]) * size
            want.append((kind, data))
            if direct:
                write = writer.write_text if kind == "text" else writer.write_binary
                assert write(data)
            else:
                await session.send({"type": "websocket.send", kind: data})
        assert session.received() == want
        session.end()

    asyncio.run(scenario())


async def test_with_permessage_deflate_written_frames_are_compressed(
    closing: list[Session],
) -> None:
    """A client that negotiated permessage-deflate gets the writer's frames compressed, as
    uvicorn's own (one compressor, whichever path a frame takes)."""
    session = Session(deflate=True)
    closing.append(session)
    writer = await session.open()
    assert writer.write_text("a" * 70000) and writer.write_binary(b"b" * 70000)
    assert len(session.wire.out) < 1000
    assert session.received() == [("text", "a" * 70000), ("bytes", b"b" * 70000)]


async def test_a_paused_transport_leaves_the_frame_to_send(closing: list[Session]) -> None:
    """While the transport asks to stop writing, the writer declines: ASGI's send waits for
    the drain, so flow control holds."""
    session = Session(deflate=False)
    closing.append(session)
    writer = await session.open()
    session.server.pause_writing()
    assert not writer.write_text("held") and not writer.write_binary(b"held")
    session.server.resume_writing()
    assert writer.write_text("goes")
    assert session.received() == [("text", "goes")]


async def test_after_a_close_either_way_the_writer_declines(closing: list[Session]) -> None:
    """Once the client's close frame is read, once the app sent its close, and once the
    connection is lost, the writer writes nothing and leaves the answer to ASGI's send."""
    by_client, by_app, lost = Session(False), Session(False), Session(False)
    closing += [by_client, by_app, lost]
    writers = [await s.open() for s in (by_client, by_app, lost)]

    by_client.client.send_close(1000)
    by_client.server.data_received(b"".join(by_client.client.data_to_send()))
    assert by_app.send is not None
    await by_app.send({"type": "websocket.close", "code": 1000})
    lost.server.connection_lost(None)

    for session, writer in zip((by_client, by_app, lost), writers, strict=True):
        session.wire.out.clear()
        assert not writer.write_text("late") and not writer.write_binary(b"late")
        assert session.wire.out == b""
    assert lost.send is not None
    with pytest.raises(ClientDisconnected):
        await lost.send({"type": "websocket.send", "text": "late"})


async def test_the_drain_knows_a_session_on_canarys_protocol() -> None:
    """The drain leaves open sessions to their timeout: it must tell canary's protocol
    from an HTTP connection, as it does uvicorn's own."""
    assert _is_session(Session(deflate=False).server)
    assert not _is_session(object())
