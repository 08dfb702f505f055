"""Whole answers or none (SPEC §3a): an answer past the hold streams; a streamed upload
reaches the backend byte for byte and is never replayed; Anthropic's 529 is retried like a
503. (A JSON answer cut anywhere: the property test in ``test_properties``.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from asgi_lifespan import LifespanManager

from canary.serve.app import create_app
from tests.helpers import Chunks, Upstream, no_sleep, serving

ROUTES = """
backends:
  legacy: {base_url: "http://legacy.test/v1", timeout_s: 5}
  relay: {base_url: "http://relay.test/v1", timeout_s: 5}
routes:
  - name: chat
    weights: {legacy: 0, relay: 100}
    baseline: legacy
    fallback: true
retry: {max_attempts: 2, backoff_s: 0}
server: {hold_answer_bytes: 4096}
"""


def _config(tmp_path: Path, text: str = ROUTES) -> str:
    path = tmp_path / "routes.yaml"
    path.write_text(text)
    return str(path)


async def test_an_answer_over_the_hold_streams_and_a_529_is_retried(tmp_path: Path) -> None:
    """Past ``hold_answer_bytes`` an answer streams as it comes; a 529 is tried again."""
    big = b'{"data": "' + b"x" * 10_000 + b'"}'
    upstream, seen = Upstream(), []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if len(seen) == 1:
            return httpx.Response(
                529, json={"type": "error", "error": {"type": "overloaded_error"}}
            )
        return httpx.Response(
            200,
            headers={"content-type": "application/json"},
            stream=Chunks([big[:5000], big[5000:]]),
        )

    upstream.handler = answer
    async with serving(
        _config(tmp_path), transport=httpx.MockTransport(upstream), sleep=no_sleep
    ) as c:
        r = await c.post("/v1/chat/completions", json={"model": "gpt-4.1"})
    assert r.status_code == 200 and r.content == big
    assert seen == ["relay.test", "relay.test"]  # retried on the same backend, no fallback
    assert "content-length" not in r.headers  # streamed: its length was never known


async def test_an_upload_streams_once_and_is_never_replayed(tmp_path: Path) -> None:
    """A multipart body reaches the backend whole, with the length the client declared; when
    the relay then fails, nothing is sent again (no retry, no fallback after bytes left)."""
    upstream, got = Upstream(), []

    async def answer(request: httpx.Request) -> httpx.Response:
        got.append((request.url.host, request.headers.get("content-length"), await request.aread()))
        return httpx.Response(503, json={"error": {"message": "busy"}})

    upstream.handler = answer
    body = b"--x\r\n" + bytes(range(256)) * 400 + b"\r\n--x--\r\n"
    async with serving(
        _config(tmp_path), transport=httpx.MockTransport(upstream), sleep=no_sleep
    ) as c:
        r = await c.post(
            "/v1/files", content=body, headers={"content-type": "multipart/form-data; boundary=x"}
        )
    assert r.status_code == 503  # the relay's own answer, passed through
    assert got == [("relay.test", str(len(body)), body)]


async def test_a_download_passes_through_as_it_arrives(tmp_path: Path) -> None:
    """An answer that is not JSON (file content, speech) reaches the client chunk by chunk:
    its first bytes go out while the upstream still holds the rest. (Driven over raw ASGI:
    httpx's ASGI transport would wait for the whole answer.)"""
    gate = asyncio.Event()

    class Gated(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"first"
            await gate.wait()
            yield b"rest"

    upstream = Upstream()
    upstream.handler = lambda request: httpx.Response(
        200, headers={"content-type": "audio/mpeg"}, stream=Gated()
    )
    sent: list[dict[str, Any]] = []
    first = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message.get("body") == b"first":
            first.set()

    async def receive() -> dict[str, Any]:
        if not sent:
            return {"type": "http.request", "body": b'{"input": "hi"}', "more_body": False}
        await asyncio.Event().wait()  # no disconnect
        raise AssertionError

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/audio/speech",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "http_version": "1.1",
    }
    app = create_app(_config(tmp_path), transport=httpx.MockTransport(upstream), sleep=no_sleep)
    async with LifespanManager(app) as m:
        call = asyncio.create_task(m.app(scope, receive, send))
        await asyncio.wait_for(first.wait(), 5)
        assert not call.done() and sent[0]["status"] == 200
        gate.set()
        await asyncio.wait_for(call, 5)
    assert b"".join(m.get("body", b"") for m in sent) == b"firstrest"
