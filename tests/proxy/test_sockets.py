"""The upstream side of sessions (``canary.proxy.sockets``) against a real aiohttp server
on 127.0.0.1: what a refused handshake says, and an upstream that never closes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import httpx
import pytest
from aiohttp import web

from canary.proxy.sockets import AiohttpSockets, Handshake, Refused


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    """A server refusing ``/refuse`` with a JSON 403, and holding ``/mute`` open without
    ever reading a frame (so it never answers a close frame)."""

    async def refuse(_: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "barred", "code": "x"}}, status=403)

    async def mute(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoclose=False)
        await ws.prepare(request)
        await asyncio.sleep(30)  # cancelled when the test's server stops
        return ws

    app = web.Application()
    app.router.add_get("/refuse", refuse)
    app.router.add_get("/mute", mute)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"ws://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_refused_handshake_keeps_its_status_and_body(upstream: str) -> None:
    """aiohttp drops a refused handshake's body; canary keeps it for the client."""
    async with aiohttp.TCPConnector() as connector:
        sockets = AiohttpSockets(connector)
        with pytest.raises(Refused) as info:
            await sockets.connect(Handshake(upstream + "/refuse", [], (), 5.0))
        assert info.value.status == 403
        assert info.value.content_type.startswith("application/json")
        assert b'"barred"' in info.value.body
        with pytest.raises(httpx.ConnectError):  # nothing listens there
            await sockets.connect(Handshake("ws://127.0.0.1:1/x", [], (), 5.0))
        await sockets.aclose()


async def test_an_upstream_that_never_answers_our_close_is_let_go(upstream: str) -> None:
    """Closing waits for the upstream's close frame only up to the close timeout."""
    async with aiohttp.TCPConnector() as connector:
        sockets = AiohttpSockets(connector, close_timeout_s=0.3)
        ws = await sockets.connect(Handshake(upstream + "/mute", [], (), 5.0))
        began = time.monotonic()
        await ws.close(code=1000)
        assert ws.closed and time.monotonic() - began < 2.0
        await sockets.aclose()
