"""WebSocket sessions end to end: the openai SDK -> ``canary serve`` -> two ``canary
simulate`` providers that each accept only their own key, all real processes."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import websockets
from websockets.asyncio.client import connect

from canary.tools.simulate.stats import fingerprint
from tests.helpers import (
    CLIENT_KEY,
    LEGACY_KEY,
    RELAY_KEY,
    ROOT,
    SECRETS,
    Stack,
    free_port,
    self_signed,
    simulator,
    tls_front,
    wait_until,
)

ROUTES = """
backends:
  legacy:
    base_url: ${{LEGACY_BASE_URL}}
    api_key: ${{LEGACY_API_KEY}}
    timeout_s: 10
  relay:
    base_url: ${{RELAY_BASE_URL}}
    api_key: ${{RELAY_API_KEY}}
    timeout_s: 10
routes:
  - name: direct
    match:
      paths: [/v1/realtime]
      headers: {{x-direct: "1"}}
    weights: {{relay: 100}}
  - name: sessions
    match:
      paths: [/v1/realtime, /v1/responses]
    weights: {{legacy: {legacy}, relay: {relay}}}
    sticky: header:x-user-id
    fallback: true
rollback:
  min_requests: 4
  max_error_rate: 0.5
auth:
  api_keys: ${{CANARY_API_KEYS:-}}
pricing:
  legacy: {{gpt-realtime: {{input: 4.0, output: 16.0}}, gpt-4.1: {{input: 2.0, output: 8.0}}}}
  relay: {{gpt-realtime: {{input: 2.0, output: 8.0}}, gpt-4.1: {{input: 1.0, output: 4.0}}}}
server:
  session_max_s: {max_s}
"""
ENV = {
    "LEGACY_API_KEY": LEGACY_KEY,
    "RELAY_API_KEY": RELAY_KEY,
    "CANARY_API_KEYS": CLIENT_KEY,
}
USERS = [f"user-{i}" for i in range(10)]


@pytest.fixture(scope="module")
def sims() -> Iterator[tuple[str, str]]:
    """Two providers that refuse any key but their own (so a client key upstream fails)."""
    ports = free_port(), free_port()
    with (
        simulator(ports[0], "legacy", "--api-key", LEGACY_KEY),
        simulator(ports[1], "relay", "--api-key", RELAY_KEY),
    ):
        yield f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}"


def _start(
    stack_factory: Any, legacy: int = 50, relay: int = 50, max_s: float = 60, *args: str
) -> Stack:
    text = ROUTES.format(legacy=legacy, relay=relay, max_s=max_s)
    stack: Stack = stack_factory(text, env=ENV, args=list(args))
    return stack


async def _realtime(client: openai.AsyncOpenAI, user: str) -> tuple[int, int]:
    """One Realtime session: a message, a response; its usage as the SDK read it."""
    async with client.realtime.connect(
        model="gpt-realtime", extra_headers={"x-user-id": user}
    ) as conn:
        await conn.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "say hello"}],
            }
        )
        await conn.response.create()
        async for event in conn:
            if event.type == "response.done":
                usage = event.response.usage
                assert usage is not None
                return usage.input_tokens or 0, usage.output_tokens or 0
    raise AssertionError("the session ended before response.done")


async def _responses(client: openai.AsyncOpenAI, user: str) -> tuple[int, int]:
    """One Responses WebSocket session: one response.create, read to response.completed."""
    async with client.responses.connect(extra_headers={"x-user-id": user}) as conn:
        await conn.response.create(model="gpt-4.1", input="say hello")
        async for event in conn:
            if event.type == "response.completed":
                usage = event.response.usage
                assert usage is not None and event.response.model == "gpt-4.1"
                return usage.input_tokens, usage.output_tokens
    raise AssertionError("the session ended before response.completed")


def _sessions(stack: Stack) -> dict[str, dict[str, int]]:
    return {name: b["sessions"] for name, b in stack.status()["backends"].items()}


def _no_secret_in(stack: Stack) -> None:
    text = stack.output() + httpx.get(f"{stack.url}/metrics").text + str(stack.status())
    for secret in SECRETS:
        assert secret not in text


def test_openai_sdk_sessions_split_metered_and_sent_with_the_backends_keys(
    stack_factory: Any,
) -> None:
    """Realtime and Responses sessions from the openai SDK at 50/50: both backends serve
    some, each provider sees only its own key, and /status meters every token."""
    stack = _start(stack_factory)

    async def run() -> list[tuple[int, int]]:
        client = openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key=CLIENT_KEY)
        async with client:
            realtime = [_realtime(client, user) for user in USERS[:6]]
            responses = [_responses(client, user) for user in USERS[6:]]
            return await asyncio.gather(*realtime, *responses)

    usages = asyncio.run(run())
    wait_until(lambda: all(s["open"] == 0 for s in _sessions(stack).values()), what="closed")
    sessions, doc = _sessions(stack), stack.status()
    assert sessions["legacy"]["total"] > 0 and sessions["relay"]["total"] > 0
    assert sessions["legacy"]["total"] + sessions["relay"]["total"] == len(USERS)
    assert sessions["legacy"]["cut"] == sessions["relay"]["cut"] == 0
    for which, key in (("legacy", LEGACY_KEY), ("relay", RELAY_KEY)):
        stats = stack.sim(which, "/_sim/stats")
        assert stats["sessions"]["accepted"] == sessions[which]["total"]
        headers = stats["last_request"]["headers"]
        assert headers["authorization"] == f"Bearer {fingerprint(key)}"
        assert fingerprint(CLIENT_KEY) not in str(headers)
        tokens = doc["backends"][which]["tokens"]
        assert (tokens["input"], tokens["output"]) == (
            stats["tokens"]["prompt"],
            stats["tokens"]["completion"],
        )
        assert doc["backends"][which]["cost_usd"] > 0
    audits = [counts for models in doc["audit"].values() for counts in models.values()]
    assert sum(c["match"] for c in audits) == len(USERS)  # session.model / response.model
    assert sum(c["mismatch"] + c["absent"] for c in audits) == 0
    metered = sum(b["tokens"]["input"] + b["tokens"]["output"] for b in doc["backends"].values())
    assert metered == sum(a + b for a, b in usages) > 0

    def lines() -> list[str]:  # the access log is buffered: it may come a moment later
        return [line for line in stack.output().splitlines() if '"proxy.session"' in line]

    wait_until(lambda: len(lines()) == len(USERS), what="one access line per session")
    assert all('"frames_out"' in line and '"close_code"' in line for line in lines())
    _no_secret_in(stack)


def _node_sdk() -> str:
    """A directory with the openai Node SDK (and ``ws``) installed, cached under .venv."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed: the Node SDK check needs them")
    cache = ROOT / ".venv" / "node-sdk"
    if not (cache / "node_modules" / "openai" / "package.json").exists():
        cache.mkdir(parents=True, exist_ok=True)
        (cache / "package.json").write_text('{"name": "canary-e2e-node", "private": true}')
        install = ["npm", "install", "--no-audit", "--no-fund", "openai", "ws"]
        done = subprocess.run(install, cwd=cache, capture_output=True, timeout=300, check=False)
        if done.returncode != 0:
            pytest.skip(f"npm install openai ws failed (offline?): {done.stderr[-300:]!r}")
    shutil.copy(ROOT / "tests" / "e2e" / "node" / "sessions.mjs", cache / "sessions.mjs")
    return str(cache)


def test_openai_node_sdk_sessions_split_and_metered(stack_factory: Any, tmp_path: Path) -> None:
    """The openai Node SDK's Responses and Realtime WebSocket clients through canary at
    50/50 (Realtime over wss, through a TLS front, as that client only dials wss): both
    backends serve sessions with their own keys, and /status meters what they billed."""
    directory = _node_sdk()
    stack = _start(stack_factory)
    key, cert = self_signed(tmp_path)
    with tls_front(int(stack.url.rsplit(":", 1)[1]), key, cert) as port:
        args = ["node", "sessions.mjs", f"{stack.url}/v1", CLIENT_KEY, "8"]
        args.append(f"https://127.0.0.1:{port}/v1")
        env = {**os.environ, "NODE_EXTRA_CA_CERTS": str(cert)}
        done = subprocess.run(
            args, cwd=directory, capture_output=True, text=True, timeout=60, env=env
        )
    assert done.returncode == 0, done.stderr[-2000:]
    usages = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(usages) == 8 and all(out > 0 for _, out in usages)
    wait_until(lambda: all(s["open"] == 0 for s in _sessions(stack).values()), what="closed")

    def lines() -> list[str]:  # the access log is buffered: it may come a moment later
        return [line for line in stack.output().splitlines() if '"proxy.session"' in line]

    wait_until(lambda: len(lines()) == 8, what="one access line per session")
    assert sum('"/v1/realtime' in line for line in lines()) == 4
    assert sum('"/v1/responses' in line for line in lines()) == 4
    doc = stack.status()
    total = 0
    for which, key in (("legacy", LEGACY_KEY), ("relay", RELAY_KEY)):
        stats = stack.sim(which, "/_sim/stats")
        assert stats["sessions"]["accepted"] == doc["backends"][which]["sessions"]["total"] > 0
        assert stats["last_request"]["headers"]["authorization"] == f"Bearer {fingerprint(key)}"
        tokens = doc["backends"][which]["tokens"]
        assert tokens["output"] == stats["tokens"]["completion"]
        total += tokens["input"] + tokens["output"]
    assert total == sum(a + b for a, b in usages) > 0
    _no_secret_in(stack)


def test_a_relay_refusing_every_handshake_is_failed_over_and_tripped(stack_factory: Any) -> None:
    """A canary refusing every handshake (503): every client still gets its session from
    the baseline, and the canary's circuit opens."""
    stack = _start(stack_factory)
    stack.sim("relay", "/_sim/faults", {"session_refuse_status": 503})

    async def run() -> list[tuple[int, int]]:
        client = openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key=CLIENT_KEY)
        async with client:
            return await asyncio.gather(*(_realtime(client, user) for user in USERS))

    assert all(out > 0 for _, out in asyncio.run(run()))
    doc = stack.status()
    assert doc["backends"]["relay"]["circuit"] == "open"
    assert doc["backends"]["relay"]["sessions"]["total"] == 0
    assert stack.sim("legacy", "/_sim/stats")["sessions"]["accepted"] == len(USERS)
    assert stack.sim("relay", "/_sim/stats")["sessions"]["refused"] >= 4
    metrics = httpx.get(f"{stack.url}/metrics").text
    assert 'canary_upstream_failures_total{backend="relay",kind="5xx"}' in metrics


def test_a_relay_cutting_sessions_is_counted_as_cut(stack_factory: Any) -> None:
    """A provider that drops sessions mid-way (no close frame): the client gets 1011, and
    each is a ``session_cut`` of that backend."""
    stack = _start(stack_factory, legacy=0, relay=100)
    stack.sim("relay", "/_sim/faults", {"session_cut_after": 3})

    async def run() -> list[BaseException | tuple[int, int]]:
        client = openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key=CLIENT_KEY)
        async with client:
            calls = (_realtime(client, user) for user in USERS[:3])
            return await asyncio.gather(*calls, return_exceptions=True)

    for outcome in asyncio.run(run()):
        assert isinstance(outcome, websockets.ConnectionClosedError)
        assert outcome.rcvd is not None and outcome.rcvd.code == 1011
    wait_until(lambda: _sessions(stack)["relay"]["open"] == 0, what="closed")
    assert _sessions(stack)["relay"]["cut"] == 3
    metrics = httpx.get(f"{stack.url}/metrics").text
    assert 'canary_upstream_failures_total{backend="relay",kind="session_cut"} 3.0' in metrics
    assert 'canary_sessions_cut_total{backend="relay"} 3.0' in metrics


def _raw_handshake(port: int, path: str) -> socket.socket:
    """A WebSocket handshake on a plain socket, for what no client library would send."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {CLIENT_KEY}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def test_bad_session_input_gets_a_clean_answer_and_leaves_nothing_open(
    stack_factory: Any,
) -> None:
    """No route, no key, a refused handshake without fallback, garbage frames and
    clients that vanish: each an OpenAI-shaped answer or a close code, nothing leaked
    or left open; a browser's subprotocol key is checked, then removed upstream."""
    stack = _start(stack_factory, legacy=100, relay=0)
    base = stack.url.replace("http", "ws")
    auth = {"Authorization": f"Bearer {CLIENT_KEY}"}

    async def refused(path: str, headers: dict[str, str]) -> tuple[int, Any]:
        with pytest.raises(websockets.InvalidStatus) as info:
            async with connect(base + path, additional_headers=headers):
                pass
        response = info.value.response
        return response.status_code, json.loads(response.body)

    async def run() -> None:
        status, body = await refused("/v1/nowhere", auth)
        assert status == 404 and body["error"]["code"] == "no_route"
        status, body = await refused("/ws", auth)
        assert status == 404 and body["error"]["code"] == "not_found"
        status, body = await refused("/v1/realtime?model=m", {})
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        stack.sim("relay", "/_sim/faults", {"session_refuse_status": 403})
        status, body = await refused("/v1/realtime?model=m", {**auth, "x-direct": "1"})
        assert status == 403 and "Simulated refusal 403" in body["error"]["message"]
        protocols = ["realtime", f"openai-insecure-api-key.{CLIENT_KEY}"]
        url = base + "/v1/realtime?model=gpt-realtime"
        async with connect(url, subprotocols=protocols) as ws:  # type: ignore[arg-type]
            assert ws.subprotocol == "realtime"
            await ws.recv()  # session.created
            await ws.send("}{ not json")
            assert '"invalid_json"' in str(await ws.recv())
            await ws.send(b"\x00\xffbinary")
            assert await ws.recv() == b"\x00\xffbinary"

    asyncio.run(run())
    seen = stack.sim("legacy", "/_sim/stats")["last_request"]["headers"]
    assert seen["sec-websocket-protocol"] == "realtime"
    assert seen["authorization"] == f"Bearer {fingerprint(LEGACY_KEY)}"
    port = int(stack.url.rsplit(":", 1)[1])
    garbage = _raw_handshake(port, "/v1/realtime?model=m")
    garbage.sendall(b"\xff" * 16)  # a reserved opcode, unmasked: a protocol error
    assert garbage.recv(64)[:1] == b"\x88"  # a close frame back
    garbage.close()
    _raw_handshake(port, "/v1/realtime?model=m").close()  # vanishes without a close frame
    wait_until(lambda: _sessions(stack)["legacy"]["open"] == 0, what="sessions closed")
    wait_until(lambda: stack.sim("legacy", "/_sim/stats")["in_flight"] == 0, what="upstream")
    assert _sessions(stack)["legacy"]["total"] == 3
    _no_secret_in(stack)


def test_session_max_s_and_the_drain_close_sessions_with_1001(stack_factory: Any) -> None:
    """A session past ``server.session_max_s`` is closed with 1001; on SIGTERM an open
    session runs on until the drain timeout, then is closed with 1001 too."""
    stack = _start(stack_factory, 100, 0, 1, "--drain-timeout-s", "1")
    url = stack.url.replace("http", "ws") + "/v1/realtime?model=gpt-realtime"
    auth = {"Authorization": f"Bearer {CLIENT_KEY}"}

    async def closed_with(ws: Any) -> tuple[int, str]:
        with pytest.raises(websockets.ConnectionClosed) as info:
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()
        assert info.value.rcvd is not None
        return info.value.rcvd.code, info.value.rcvd.reason

    async def run() -> None:
        # Without permessage-deflate: frames go out as canary's own (``canary.serve.websocket``)
        async with connect(url, additional_headers=auth, compression=None) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            assert await closed_with(ws) == (1001, "session_max_s reached")
        version = stack.status()["config"]["version"]
        stack.save(ROUTES.format(legacy=100, relay=0, max_s=60))
        wait_until(lambda: stack.status()["config"]["version"] != version, what="reloaded")
        async with connect(url, additional_headers=auth) as ws:
            await ws.recv()
            stack.router.send_signal(signal.SIGTERM)
            code, _ = await closed_with(ws)
            assert code == 1001

    asyncio.run(run())
    assert stack.router.wait(timeout=10) == 0
    assert "server.drained" in stack.output()
