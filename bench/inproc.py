"""canary's own CPU per request, in process: the ASGI app driven directly, upstream canned.

No sockets, no load generator: what remains is the router's code path (routing, limits,
windows, breaker, metering, access log), so a change to the hot path shows as a few
microseconds here long before it shows above the noise of ``make bench``.

    .venv/bin/python bench/inproc.py [--requests 20000] [--stream]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from canary.observe import logs
from canary.serve.app import create_app

ROUTES = """
backends:
  legacy: {base_url: "http://legacy.test/v1", api_key: "k1"}
  relay: {base_url: "http://relay.test/v1", api_key: "k2"}
routes:
  - name: chat
    match: {paths: [/v1/chat/completions]}
    weights: {legacy: 90, relay: 10}
    baseline: legacy
    fallback: true
pricing:
  legacy: {gpt-4.1: {input: 8, output: 8}}
  relay: {gpt-4.1: {input: 1.1, output: 1.1}}
"""

BODY = orjson.dumps({"model": "gpt-4.1", "messages": [{"role": "user", "content": "hello " * 40}]})
ANSWER = orjson.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4.1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi " * 60}}],
        "usage": {"prompt_tokens": 42, "completion_tokens": 60, "total_tokens": 102},
    }
)
CHUNK = (
    b'data: {"id":"c","object":"chat.completion.chunk",'
    b'"choices":[{"delta":{"content":"hi "}}],"usage":null}\n\n'
)
USAGE = b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":42,"completion_tokens":20}}\n\n'


def upstream(stream: bool) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if stream:
            parts = [CHUNK] * 20 + [USAGE, b"data: [DONE]\n\n"]
            return httpx.Response(
                200,
                headers={"content-type": "text/event-stream"},
                stream=httpx.ByteStream(b"".join(parts)),
            )
        return httpx.Response(
            200, headers={"content-type": "application/json"}, stream=httpx.ByteStream(ANSWER)
        )

    return httpx.MockTransport(handle)


async def main(n: int, stream: bool) -> None:
    workdir = Path(tempfile.mkdtemp())
    (workdir / "routes.yaml").write_text(ROUTES)
    app = create_app(str(workdir / "routes.yaml"), transport=upstream(stream), watch=False)
    body = BODY if not stream else BODY[:-1] + b',"stream":true}'
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "headers": headers,
    }

    async def send(_: Any) -> None:
        return None

    async def one() -> None:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # the client stays: the watcher is cancelled at the end
            return {"type": "http.disconnect"}

        await app(dict(scope), receive, send)

    async with app.control.router.lifespan_context(app.control):
        for _ in range(2000):  # warm caches, pools and the JIT-less interpreter's paths
            await one()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            await one()
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
    print(
        f"{'stream' if stream else 'json'}: {n} requests, {cpu / n * 1e6:.1f} us CPU/request, "
        f"{wall / n * 1e6:.1f} us wall/request",
        file=sys.stderr,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--stream", action="store_true")
    args = parser.parse_args()
    sys.stdout = open(os.devnull, "w")  # the access log goes nowhere, but is still rendered
    logs.configure(json=True)
    import uvloop

    uvloop.run(main(args.requests, args.stream))
