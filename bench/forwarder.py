"""The raw floor canary is held to: one ASGI callable, one aiohttp pool, no framework.

    .venv/bin/python bench/forwarder.py --port P --upstream http://127.0.0.1:S/v1

Every POST under ``/v1/`` goes to the one upstream with its body and headers (hop-by-hop
ones aside), and its status, headers and body come back, the body relayed chunk by chunk
as it arrives, so an SSE stream goes out event by event. No routing, no framework objects, no
limits, timeouts, windows, breaker, metering or access log: what any Python proxy on
uvicorn (uvloop, httptools) and aiohttp pays before it does anything of canary's.
``GET /healthz`` says it is up. ``bench/forwarder_starlette.py`` is the same job through
Starlette's router, request and response: the second, higher floor.
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import uvicorn

HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"date", b"server"})
SSE_HOP = HOP | {b"content-length"}  # an SSE body goes out chunked, as canary sends it
# The client's headers that stay behind: hop-by-hop ones, and those aiohttp sets itself.
UNSENT = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"host", b"content-length", b"te"}
)


class Forwarder:
    """``POST /v1/...`` -> the upstream's ``/...``, answered as it arrives."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan: nothing to open or close up front
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            return
        if scope["path"] == "/healthz":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        if self.session is None:  # in the server's loop; unbounded, as canary's pool
            connector = aiohttp.TCPConnector(limit=0)
            self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k not in UNSENT]
        given = dict(scope["headers"])
        data: Any
        if given.get(b"content-type", b"application/json").startswith(b"application/json"):
            data = await _whole(receive)
        else:  # an upload streams through as it arrives, as canary streams it
            data = _chunks(receive)
            if b"content-length" in given:
                headers.append(("content-length", given[b"content-length"].decode()))
        url = self.upstream + scope["path"][3:]
        async with self.session.post(url, data=data, headers=headers) as up:
            hop = SSE_HOP if up.content_type == "text/event-stream" else HOP
            kept = [(k, v) for k, v in up.raw_headers if k.lower() not in hop]
            await send({"type": "http.response.start", "status": up.status, "headers": kept})
            async for chunk in up.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})


async def _whole(receive: Any) -> bytes:
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body


async def _chunks(receive: Any) -> Any:
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
        if message.get("body"):
            yield message["body"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL, ending in /v1")
    args = parser.parse_args()
    # uvicorn set as canary sets it (canary.serve.server): no Server header, no
    # X-Forwarded-For rewriting, so the two differ only in what runs per call.
    uvicorn.run(Forwarder(args.upstream), host="127.0.0.1", port=args.port, loop="uvloop",
                http="httptools", log_level="warning", access_log=False, server_header=False,
                proxy_headers=False)  # fmt: skip
