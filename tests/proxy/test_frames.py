"""The frame relay of a WebSocket session (``canary.proxy.frames``), in process.

Both sides are fakes here (an ASGI client, an aiohttp-like upstream); the e2e tests
(``tests/e2e/test_sessions_e2e.py``) run the same relay between real sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canary.proxy.events import Scan
from canary.proxy.frames import relay

Frame = tuple[str, Any]  # ("text", str) | ("bytes", bytes)


class FakeUpstream:
    """An upstream that sends ``frames``, then ends as ``end`` says, and records ours."""

    def __init__(self, frames: list[Frame], end: int | None) -> None:
        self.queue: asyncio.Queue[aiohttp.WSMessage] = asyncio.Queue()
        for kind, data in frames:
            msg_type = aiohttp.WSMsgType.TEXT if kind == "text" else aiohttp.WSMsgType.BINARY
            self.queue.put_nowait(aiohttp.WSMessage(msg_type, data, None))
        if end is None:  # dropped: no close frame
            self.queue.put_nowait(aiohttp.WSMessage(aiohttp.WSMsgType.CLOSED, None, None))
        elif end >= 0:  # a close frame with this code
            self.queue.put_nowait(aiohttp.WSMessage(aiohttp.WSMsgType.CLOSE, end, ""))
        # end < 0: the upstream stays open until we close it
        self.got: list[Frame] = []
        self.closed_with: int | None = None
        self.protocol = None
        self.close_code = None
        self.closed = False

    async def receive(self) -> aiohttp.WSMessage:
        return await self.queue.get()

    async def send_str(self, data: str) -> None:
        self.got.append(("text", data))

    async def send_bytes(self, data: bytes) -> None:
        self.got.append(("bytes", data))

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        self.closed_with, self.closed = code, True
        self.queue.put_nowait(aiohttp.WSMessage(aiohttp.WSMsgType.CLOSING, None, None))
        return True


class FakeClient:
    """An ASGI WebSocket client that sends ``frames`` then closes with ``code`` (None:
    it stays until the upstream ends)."""

    def __init__(self, frames: list[Frame], code: int | None) -> None:
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for kind, data in frames:
            self.inbox.put_nowait({"type": "websocket.receive", kind: data})
        if code is not None:
            self.inbox.put_nowait({"type": "websocket.disconnect", "code": code})
        self.got: list[Frame] = []
        self.closed_with: int | None = None

    async def receive(self) -> dict[str, Any]:
        return await self.inbox.get()

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "websocket.close":
            self.closed_with = message["code"]
        elif "text" in message:
            self.got.append(("text", message["text"]))
        else:
            self.got.append(("bytes", message["bytes"]))


class FakeWriter:
    """The server's frame writer for ``client``: takes a frame when ``takes`` says so (in
    turn, cycling), else declines it and the relay must ``send`` it."""

    def __init__(self, client: FakeClient, takes: list[bool]) -> None:
        self.client = client
        self.takes = takes or [True]
        self.n = 0

    def _take(self, frame: Frame) -> bool:
        take = self.takes[self.n % len(self.takes)]
        self.n += 1
        if take:
            self.client.got.append(frame)
        return take

    def write_text(self, data: str) -> bool:
        return self._take(("text", data))

    def write_binary(self, data: bytes) -> bool:
        return self._take(("bytes", data))


frames = st.lists(
    st.one_of(
        st.tuples(st.just("text"), st.text(max_size=300)),
        st.tuples(st.just("bytes"), st.binary(max_size=300)),
    ),
    max_size=25,
)


def _scan() -> Scan:
    return Scan(None, lambda tokens: None, lambda asked, named: None)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    down=frames,
    up=frames,
    ender=st.sampled_from(["client", "upstream"]),
    code=st.sampled_from([None, 1000, 1001, 1005, 1006, 1008, 1011, 3000, 4999]),
    takes=st.none() | st.lists(st.booleans(), max_size=4),
)
def test_frames_pass_unchanged_in_order_and_the_end_crosses(
    down: list[Frame], up: list[Frame], ender: str, code: int | None, takes: list[bool] | None
) -> None:
    """Whatever frames go each way and whoever ends, each side gets the other's frames in
    order, unchanged and typed, whether the server's frame writer takes them, declines
    some or is not there; the close code crosses (a code that cannot go in a frame becomes
    1000 or 1001); only an upstream that drops or fails with 1011 is a cut."""

    async def scenario() -> None:
        if ender == "client":  # the upstream sends all its frames and waits for our close
            upstream, client = FakeUpstream(down, -1), FakeClient(up, code or 1005)
        else:
            upstream, client = (
                FakeUpstream(down, code if code != 1006 else None),
                FakeClient(up, None),
            )
        writer = FakeWriter(client, takes) if takes is not None else None
        ending, tally = await asyncio.wait_for(
            relay(client.receive, client.send, upstream, _scan(), 30.0, writer), 5
        )
        if ender == "client":
            await asyncio.sleep(0)  # nothing to settle: the relay returned
            assert ending.by == "client" and not ending.cut
            assert upstream.got == up and tally.frames_in == len(up)
            want = code if code in (1000, 1001, 1008, 1011, 3000, 4999) else None
            assert upstream.closed_with == (want or (1000 if (code or 1005) == 1005 else 1001))
        else:
            assert client.got == down and tally.frames_out == len(down)
            dropped = code in (None, 1006)
            assert ending.cut == (dropped or code == 1011)
            assert client.closed_with == (1011 if dropped else (code if code != 1005 else 1000))

    asyncio.run(scenario())


def test_session_max_s_closes_both_sides_with_1001() -> None:
    """A session past ``server.session_max_s`` is closed with 1001 both ways."""

    async def scenario() -> None:
        upstream, client = FakeUpstream([("text", "hi")], -1), FakeClient([], None)
        ending, _ = await asyncio.wait_for(
            relay(client.receive, client.send, upstream, _scan(), 0.05), 5
        )
        assert ending.by == "limit"
        assert upstream.closed_with == 1001 and client.closed_with == 1001
        assert client.got == [("text", "hi")]

    asyncio.run(scenario())
