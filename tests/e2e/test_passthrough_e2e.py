"""End to end over real sockets, SPEC §3a: uploads and downloads of any size stream through
canary in bounded memory, a relay's truncated answers never reach a client, and a client
that stalls or oversends is refused without holding anything. ``canary serve`` in front
of two ``canary simulate`` processes; the official openai client is the caller."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import stack_routes

pytestmark = pytest.mark.e2e

MIB = 1 << 20
MESSAGES = [{"role": "user", "content": "hi"}]
# The chat route at 50/50 with fallback; uploads take the default route (legacy).
ROUTES = stack_routes(50, 50).replace(
    "    sticky: header:x-user-id\n", "    sticky: header:x-user-id\n    fallback: true\n"
)


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def _sparse(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        f.truncate(size)  # no disk written, read back as zeros
    return path


def _upload(client: Any, path: Path) -> Any:
    with path.open("rb") as f:  # the SDK streams a file object in chunks
        return client.files.create(file=f, purpose="batch")


def test_uploads_and_downloads_stream_in_bounded_memory(stack_factory: Any, tmp_path: Path) -> None:
    """A 200 MB multipart upload, then ten 50 MB ones at once, pass under the default
    config (whose JSON limit here is 100 kB) with the router's RSS growing under 64 MB;
    the file's content and a speech answer come back whole."""
    stack = stack_factory(ROUTES)
    pid = stack.router.pid
    before = _kib(pid, "VmRSS")
    client = stack.client(timeout=120)
    big = _upload(client, _sparse(tmp_path / "big.jsonl", 200 * MIB))
    assert big.bytes > 200 * MIB  # the file and its multipart framing
    assert big.purpose == "batch" and big.filename == "big.jsonl"
    assert _kib(pid, "VmHWM") - before < 64 * 1024, "a 200 MB upload was held in memory"

    small = _sparse(tmp_path / "small.jsonl", 50 * MIB)
    with ThreadPoolExecutor(10) as pool:
        sizes = list(pool.map(lambda _: _upload(client, small).bytes, range(10)))
    assert all(size > 50 * MIB for size in sizes)
    assert _kib(pid, "VmHWM") - before < 64 * 1024, "ten 50 MB uploads were held in memory"

    content = client.files.content(big.id)
    assert len(content.content) == big.bytes
    speech = client.audio.speech.create(model="tts-1", voice="alloy", input="hi")
    assert len(speech.content) == 256 << 10
    assert stack.sim("legacy", "/_sim/stats")["by_path"]["/v1/files"] == 11


def test_truncated_answers_never_reach_a_client(stack_factory: Any) -> None:
    """A relay that cuts every answer short of its content-length, at 50/50 with fallback:
    40 of 40 clients get a whole answer (the baseline's), and each cut is the relay's."""
    stack = stack_factory(ROUTES)
    stack.sim("relay", "/_sim/faults", {"truncate_rate": 1.0})
    client = stack.client()
    answered = []
    for i in range(40):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4.1", messages=MESSAGES, extra_headers={"x-user-id": f"u{i}"}
        )
        answer = raw.parse()
        assert answer.choices[0].message.content and answer.usage is not None
        answered.append((raw.headers["x-canary-backend"], raw.headers.get("x-canary-fallback")))
    cut = stack.sim("relay", "/_sim/stats")["cut"]
    assert 0 < cut < 40, "the draw should send some calls to the relay"
    assert answered.count(("legacy", "relay")) == cut
    assert all(backend == "legacy" for backend, _ in answered)
    relay = stack.status()["backends"]["relay"]
    assert relay["errors"] == cut


def _refusal(port: int, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send ``head`` and ``body``, then read until the router closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def _oversend(port: int, head: bytes) -> None:
    """A chunked body far past any limit: the router must refuse it and close mid-way."""
    block = b"x" * 65536
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        try:
            for _ in range(200):  # 13 MB at most
                sock.sendall(b"%x\r\n%s\r\n" % (len(block), block))
        except OSError:
            return  # refused and closed while we were still sending
        data = sock.recv(65536)
        assert b" 413 " in data.split(b"\r\n", 1)[0], data[:200]


@pytest.mark.parametrize("kind", ["application/json", "multipart/form-data; boundary=x"])
def test_a_stalled_or_oversized_body_is_refused_and_closed(stack_factory: Any, kind: str) -> None:
    """A client that stops sending its body (JSON or upload) gets 408 after
    ``client_timeout_s`` and its connection is closed; a body declared or counted past the
    limit gets 413 without the rest being read. No backend is charged for either."""
    limits = "server:\n  max_body_bytes: 100000\n  max_upload_bytes: 1000000\n"
    text = ROUTES.replace("server:\n  max_body_bytes: 100000\n", limits)
    stack = stack_factory(text + "  client_timeout_s: 1\n")
    port = int(stack.url.rsplit(":", 1)[1])
    path = b"/v1/chat/completions" if kind == "application/json" else b"/v1/files"
    head = b"POST " + path + b" HTTP/1.1\r\nhost: x\r\ncontent-type: " + kind.encode()

    started = time.monotonic()
    status, data = _refusal(port, head + b"\r\ncontent-length: 5000\r\n\r\n", b"{" * 100)
    assert status == 408 and b'"client_timeout"' in data, data
    assert time.monotonic() - started < 5

    status, data = _refusal(port, head + b"\r\ncontent-length: 2000000\r\n\r\n")
    assert status == 413 and b"request_too_large" in data, data
    _oversend(port, head + b"\r\ntransfer-encoding: chunked\r\n\r\n")
    backends = stack.status()["backends"]
    assert all(b["errors"] == 0 for b in backends.values())


def test_cors_preflight_and_stamps(stack_factory: Any) -> None:
    """An allowed origin's preflight is answered without a client key; its answers carry
    the CORS headers; another origin gets none."""
    text = ROUTES.replace("server:\n", 'server:\n  cors: {allow_origins: ["http://app.test"]}\n')
    stack = stack_factory(text, env={"CANARY_API_KEYS": "ck-1"})
    url = f"{stack.url}/v1/chat/completions"
    asked = "authorization, content-type, x-stainless-os, x-evil"
    pre = httpx.options(
        url,
        headers={
            "origin": "http://app.test",
            "access-control-request-method": "POST",
            "access-control-request-headers": asked,
        },
    )
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == "http://app.test"
    allowed = pre.headers["access-control-allow-headers"]
    assert "x-stainless-os" in allowed and "authorization" in allowed and "x-evil" not in allowed
    call = httpx.post(
        url,
        json={"model": "gpt-4.1", "messages": MESSAGES},
        headers={"origin": "http://app.test", "authorization": "Bearer ck-1"},
    )
    assert call.status_code == 200
    assert call.headers["access-control-allow-origin"] == "http://app.test"
    assert "x-canary-backend" in call.headers["access-control-expose-headers"]
    other = httpx.post(
        url,
        json={"model": "gpt-4.1", "messages": MESSAGES},
        headers={"origin": "http://evil.test", "authorization": "Bearer ck-1"},
    )
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers

    async def session() -> str:  # a browser sends its Origin on a WebSocket handshake too
        from websockets.asyncio.client import connect

        ws_url = stack.url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"
        headers = {"origin": "http://app.test", "authorization": "Bearer ck-1"}
        async with connect(ws_url, additional_headers=headers, open_timeout=5) as ws:
            return str(json.loads(await asyncio.wait_for(ws.recv(), 5))["type"])

    assert asyncio.run(session()) == "session.created"
