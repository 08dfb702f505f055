"""A bare forwarder, the floor canary's streams are held to: starlette + aiohttp, no routing.

    .venv/bin/python bench/forwarder.py --port P --upstream http://127.0.0.1:S/v1

Every POST under ``/v1/`` goes to the one upstream, an SSE body streamed back as it
arrives, any other read whole; no limits, timeouts, windows, breaker, metering or access
log. ``GET /healthz`` says it is up.
"""

from __future__ import annotations

import argparse

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"}


class Relay(Response):
    """The upstream body to the client as it arrives (no disconnect-listener task)."""

    def __init__(self, upstream: aiohttp.ClientResponse) -> None:
        self.upstream = upstream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        up = self.upstream
        headers = [(k, v) for k, v in up.raw_headers if k.lower().decode() not in HOP]
        await send({"type": "http.response.start", "status": up.status, "headers": headers})
        try:
            async for chunk in up.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            up.close()


def forwarder(upstream: str) -> Starlette:
    sessions: list[aiohttp.ClientSession] = []

    async def forward(request: Request) -> Response:
        if not sessions:
            connector = aiohttp.TCPConnector(limit=0)  # canary's pool is unbounded too
            sessions.append(aiohttp.ClientSession(connector=connector, auto_decompress=False))
        body = await request.body()
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        resp = await sessions[0].post(upstream + request.url.path[3:], data=body, headers=headers)
        if resp.content_type == "text/event-stream":
            return Relay(resp)
        kept = {k: v for k, v in resp.headers.items() if k.lower() not in HOP}
        return Response(await resp.read(), resp.status, kept)

    async def healthz(request: Request) -> Response:
        return Response("ok")

    routes = [Route("/v1/{path:path}", forward, methods=["POST"]), Route("/healthz", healthz)]
    return Starlette(routes=routes)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL, ending in /v1")
    args = parser.parse_args()
    app = forwarder(args.upstream)
    uvicorn.run(app, host="127.0.0.1", port=args.port, loop="uvloop", http="httptools",
                log_level="warning", access_log=False)  # fmt: skip
