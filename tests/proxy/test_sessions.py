"""Session flow in process (``canary.proxy.session``): the choosing, the fallback and the
verdicts, with a fake upstream; the e2e tests run the same over real sockets."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from canary.config.store import ConfigStore
from canary.observe.meter import Meter
from canary.proxy.plane import Plane
from canary.proxy.session import Sessions
from canary.proxy.sockets import Handshake, Refused, UpstreamSocket
from canary.proxy.transport import HttpxUpstream
from canary.safety.breaker import Breakers
from canary.safety.limits import MemoryLimiter
from canary.safety.windows import Stats
from canary.types import FRAMES

ROUTES = """
backends:
  legacy: {base_url: "http://legacy.test/v1", api_key: sk-legacy}
  relay: {base_url: "http://relay.test/v1", api_key: sk-relay}
routes:
  - name: rt
    match: {paths: [/v1/realtime]}
    weights: {legacy: 0.001, relay: 100}
    fallback: %s
"""


class Upstream:
    """An upstream that says one thing, then closes normally when we close."""

    protocol = "realtime"
    close_code = None
    closed = False

    def __init__(self) -> None:
        self.queue: asyncio.Queue[aiohttp.WSMessage] = asyncio.Queue()
        self.queue.put_nowait(aiohttp.WSMessage(aiohttp.WSMsgType.TEXT, '{"type":"hi"}', None))

    async def receive(self) -> aiohttp.WSMessage:
        return await self.queue.get()

    async def send_str(self, data: str) -> None: ...

    async def send_bytes(self, data: bytes) -> None: ...

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        self.closed = True
        self.queue.put_nowait(aiohttp.WSMessage(aiohttp.WSMsgType.CLOSING, None, None))
        return True


class Sockets:
    """relay refuses every handshake with ``status``; legacy accepts."""

    def __init__(self, status: int) -> None:
        self.status = status  # 0: the connect fails
        self.seen: list[Handshake] = []

    async def connect(self, handshake: Handshake) -> UpstreamSocket:
        self.seen.append(handshake)
        if "relay.test" in handshake.url:
            if not self.status:
                raise httpx.ConnectError("GET ws://relay.test/v1/realtime: refused")
            raise Refused(self.status, "application/json", b'{"error": {"message": "no"}}')
        return Upstream()


class Writer:
    """The server's frame writer: records each frame as ("written", data), then the client
    leaves (as ``send`` does below)."""

    def __init__(self, sent: list[Any], inbox: asyncio.Queue[dict[str, Any]]) -> None:
        self.sent, self.inbox = sent, inbox

    def write_text(self, data: str) -> bool:
        self.sent.append(("written", data))
        self.inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
        return True

    def write_binary(self, data: bytes) -> bool:
        return self.write_text(data.decode())


async def _session(
    tmp_path: Path, fallback: bool, status: int, writer: bool = False
) -> tuple[list[Any], Plane, Sockets]:
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES % str(fallback).lower())
    store = ConfigStore(str(path))
    stats = Stats(window_s=60.0, clock=lambda: 0.0)
    breakers = Breakers(stats, lambda: 0.0)
    store.listeners.append(breakers.apply)
    store.load_initial()
    sockets = Sockets(status)
    upstream = HttpxUpstream(httpx.MockTransport(lambda r: httpx.Response(500)))
    plane = Plane(store, stats, breakers, MemoryLimiter(), upstream, Meter(lambda: 0.0),
                  clock=lambda: 0.0, rng=random.Random(7), sockets=sockets)  # fmt: skip
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    inbox.put_nowait({"type": "websocket.connect"})
    sent: list[Any] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "websocket.send":  # the client has its frame: it leaves
            inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})

    scope = {
        "type": "websocket",
        "path": "/v1/realtime",
        "raw_path": b"/v1/realtime",
        "query_string": b"model=m",
        "headers": [(b"authorization", b"Bearer client")],
        "subprotocols": ["realtime"],
        "extensions": {"websocket.http.response": {}},
    }
    if writer:
        scope["extensions"][FRAMES] = Writer(sent, inbox)
    await asyncio.wait_for(Sessions(plane)(scope, inbox.get, send), 5)
    return sent, plane, sockets


async def test_a_canary_4xx_handshake_is_answered_by_the_baseline(tmp_path: Path) -> None:
    """A canary refusing with 404 while the baseline accepts: the client gets the baseline's
    session, marked as a fallback, and the canary's refusal is its error (``rejected``)."""
    sent, plane, sockets = await _session(tmp_path, True, 404)
    accept = sent[0]
    assert accept["type"] == "websocket.accept" and accept["subprotocol"] == "realtime"
    headers = dict(accept["headers"])
    assert headers[b"x-canary-backend"] == b"legacy"
    assert headers[b"x-canary-fallback"] == b"relay"
    assert sent[1] == {"type": "websocket.send", "text": '{"type":"hi"}'}
    assert plane.meter.failures == {("relay", "rejected"): 1}
    assert plane.meter.sessions["legacy"][:3] == [0, 1, 0]
    assert [h.url for h in sockets.seen] == [
        "ws://relay.test/v1/realtime?model=m",
        "ws://legacy.test/v1/realtime?model=m",
    ]


async def test_a_servers_frame_writer_carries_the_sessions_frames(tmp_path: Path) -> None:
    """A server that offers a frame writer (``canary.types.FRAMES``) gets the upstream's
    frames through it; the handshake's answer still goes through ``send``."""
    sent, _, _ = await _session(tmp_path, True, 404, writer=True)
    assert sent[0]["type"] == "websocket.accept"
    assert sent[1] == ("written", '{"type":"hi"}')


async def test_a_failed_connect_is_the_canarys_error_and_falls_back(tmp_path: Path) -> None:
    """A canary that cannot be reached: counted as ``connect``, the baseline serves."""
    sent, plane, _ = await _session(tmp_path, True, 0)
    assert dict(sent[0]["headers"])[b"x-canary-backend"] == b"legacy"
    assert plane.meter.failures == {("relay", "connect"): 1}


async def test_without_fallback_the_upstreams_refusal_goes_to_the_client(tmp_path: Path) -> None:
    """No fallback: the upstream's status and body reach the client through the denial
    response, and a 401 from the backend counts against it."""
    sent, plane, _ = await _session(tmp_path, False, 401)
    assert sent[0]["type"] == "websocket.http.response.start" and sent[0]["status"] == 401
    assert dict(sent[0]["headers"])[b"x-canary-backend"] == b"relay"
    assert sent[1]["body"] == b'{"error": {"message": "no"}}'
    assert plane.meter.failures == {("relay", "401"): 1}
    assert "legacy" not in plane.meter.sessions
