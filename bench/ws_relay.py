"""A bare WebSocket relay, the floor canary's sessions are held to: aiohttp both ways.

    .venv/bin/python bench/ws_relay.py --port P --upstream ws://127.0.0.1:S/v1

Every WebSocket under ``/v1/`` is opened upstream at the same path and query, then
frames go both ways until either side closes: no routing, key swap, limits, metering,
close-code mapping or access log. ``GET /healthz`` says it is up.
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
import uvloop
from aiohttp import web


async def _pump(source: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
                sink: aiohttp.ClientWebSocketResponse | web.WebSocketResponse) -> None:  # fmt: skip
    async for msg in source:
        if msg.type is aiohttp.WSMsgType.TEXT:
            await sink.send_str(msg.data)
        elif msg.type is aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
    await sink.close()


def relay_app(upstream: str) -> web.Application:
    pool: list[aiohttp.ClientSession] = []

    async def session(request: web.Request) -> web.WebSocketResponse:
        if not pool:
            pool.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))
        target = upstream + request.path_qs[3:]
        up = await pool[0].ws_connect(target, max_msg_size=16 << 20)
        client = web.WebSocketResponse(max_msg_size=16 << 20)
        await client.prepare(request)
        await asyncio.gather(_pump(client, up), _pump(up, client))
        return client

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/v1/{tail:.*}", session)
    app.router.add_get("/healthz", healthz)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="ws:// base URL, ending in /v1")
    args = parser.parse_args()
    uvloop.install()
    web.run_app(relay_app(args.upstream), host="127.0.0.1", port=args.port, print=None,
                access_log=None)  # fmt: skip
