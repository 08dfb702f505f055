"""Flow tests: the whole app in-process, the upstream an ``httpx.MockTransport``."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import structlog
import structlog.testing
from asgi_lifespan import LifespanManager

from canary.serve.app import create_app
from tests.helpers import Chunks, Handler, Upstream, no_sleep, prometheus_samples, serving

UPSTREAM_KEY = "sk-upstream-legacy-0123456789"
RELAY_KEY = "sk-upstream-relay-9876543210"
CLIENT_KEY = "ck-client-abcdef123456"
ADMIN = "admin-token-xyz987"

BASE = f"""
backends:
  legacy:
    base_url: http://legacy.test/v1
    api_key: {UPSTREAM_KEY}
    timeout_s: 5
  relay:
    base_url: http://relay.test/v1
    api_key: {RELAY_KEY}
    model_map: {{gpt-4.1: relay-gpt-4.1}}
routes:
  - name: beta
    match:
      headers: {{x-tenant: beta}}
    weights: {{relay: 100}}
  - name: claude
    match:
      paths: [/v1/chat/completions]
      models: ["claude-*"]
    weights: {{legacy: 100}}
  - name: chat
    match:
      paths: [/v1/chat/completions]
    weights: {{legacy: 50, relay: 50}}
    sticky: header:x-user-id
  - name: default
    match:
      paths: [/v1/models, /v1/embeddings, /v1/echo]
    weights: {{legacy: 100}}
"""


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


@pytest.fixture
def routes(tmp_path: Path) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(BASE)
    return path


@pytest.fixture
async def client(routes: Path, upstream: Upstream) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        str(routes),
        transport=httpx.MockTransport(upstream),
        sleep=no_sleep,
        rng=random.Random(7),
        watch=False,
    )
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://canary"
        ) as c,
    ):
        c.app = app  # type: ignore[attr-defined]
        yield c


def chat(model: str = "gpt-4.1", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body["error"]) >= {"message", "type", "code"}
    return body["error"]  # type: ignore[no-any-return]


async def test_forwards_path_query_body_and_swaps_authorization(
    client: httpx.AsyncClient, upstream: Upstream
) -> None:
    """Method, raw path, query and body go through; hop-by-hop and the client key do not."""
    body = b'{"input": "x",   "model": "text-embedding-3-small"}'
    r = await client.post(
        "/v1/embeddings?a=%20b&a=2",
        content=body,
        headers={
            "authorization": "Bearer client-secret",
            "connection": "keep-alive",
            "te": "trailers",
            "x-custom": "kept",
            "content-type": "application/json",
        },
    )
    assert r.status_code == 200
    sent = upstream.requests[-1]
    assert str(sent.url) == "http://legacy.test/v1/embeddings?a=%20b&a=2"
    assert sent.content == body  # untouched: no route needed to parse it
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert sent.headers["x-custom"] == "kept"
    assert "te" not in sent.headers
    assert sent.headers.get("connection") != "keep-alive"
    assert sent.headers["x-request-id"] == r.headers["x-canary-request-id"]
    assert r.headers["x-canary-backend"] == "legacy"
    assert r.headers["x-canary-route"] == "default"
    assert r.headers["x-up"] == "1"
    assert "date" not in r.headers  # the upstream's Date is dropped; the server sets its own


async def test_client_request_id_is_passed_upstream(
    client: httpx.AsyncClient, upstream: Upstream
) -> None:
    """A sane x-request-id from the client is kept end to end."""
    r = await client.get("/v1/models", headers={"x-request-id": "req-42"})
    assert upstream.requests[-1].headers["x-request-id"] == "req-42"
    assert r.headers["x-canary-request-id"] == "req-42"


async def test_model_map_rewrites_model_for_that_backend_only(
    client: httpx.AsyncClient, upstream: Upstream
) -> None:
    """relay maps gpt-4.1 to its own name; legacy gets the body as sent."""
    await client.post("/v1/chat/completions", json=chat(), headers={"x-tenant": "beta"})
    assert orjson.loads(upstream.requests[-1].content)["model"] == "relay-gpt-4.1"
    await client.post("/v1/chat/completions", json=chat("claude-3"))
    assert upstream.requests[-1].url.host == "legacy.test"
    assert orjson.loads(upstream.requests[-1].content)["model"] == "claude-3"


@pytest.mark.parametrize(
    ("headers", "model", "route", "backend"),
    [
        pytest.param({"X-Tenant": "beta"}, "gpt-4.1", "beta", "relay", id="header"),
        pytest.param({}, "claude-3-opus", "claude", "legacy", id="model-glob"),
        pytest.param({"x-tenant": "gamma"}, "gpt-4.1", "chat", None, id="path"),
    ],
)
async def test_first_matching_route_wins(
    client: httpx.AsyncClient, headers: dict[str, str], model: str, route: str, backend: str | None
) -> None:
    """Routes are tried in order by header, model glob and path."""
    r = await client.post("/v1/chat/completions", json=chat(model), headers=headers)
    assert r.headers["x-canary-route"] == route
    if backend:
        assert r.headers["x-canary-backend"] == backend


async def test_no_route_is_404_in_openai_shape(client: httpx.AsyncClient) -> None:
    """A path no route matches gets a 404 the openai client understands."""
    r = await client.post("/v1/audio/speech", json={})
    assert r.status_code == 404
    assert error_of(r)["code"] == "no_route"


async def test_sticky_header_keeps_a_user_on_one_backend(client: httpx.AsyncClient) -> None:
    """Every request with the same x-user-id lands on the same backend at 50/50."""
    for user in ("alice", "bob", "carol", "dave"):
        seen = set()
        for _ in range(8):
            r = await client.post("/v1/chat/completions", json=chat(), headers={"x-user-id": user})
            seen.add(r.headers["x-canary-backend"])
        assert len(seen) == 1, user


async def test_unparsable_json_is_400_only_when_the_body_is_needed(
    client: httpx.AsyncClient, upstream: Upstream
) -> None:
    """The claude route needs the model, so broken JSON is refused; elsewhere it passes."""
    r = await client.post("/v1/chat/completions", content=b"{not json")
    assert r.status_code == 400
    assert error_of(r)["code"] == "invalid_json"
    assert upstream.requests == []
    r = await client.post("/v1/echo", content=b"{not json")
    assert r.status_code == 200
    assert upstream.requests[-1].content == b"{not json"


async def test_body_over_the_limit_is_413(routes: Path, upstream: Upstream) -> None:
    """A declared or streamed body over server.max_body_bytes is refused before upstream."""
    routes.write_text(BASE + "server: {max_body_bytes: 1000}\n")
    app = create_app(
        str(routes), transport=httpx.MockTransport(upstream), sleep=no_sleep, watch=False
    )

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"x" * 300

    async with (
        LifespanManager(app) as m,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=m.app), base_url="http://c") as c,
    ):
        r = await c.post("/v1/echo", content=b"x" * 1001)
        assert r.status_code == 413
        assert error_of(r)["code"] == "request_too_large"
        r = await c.post("/v1/echo", content=chunks())  # chunked: no content-length
        assert r.status_code == 413
        r = await c.post("/v1/echo", content=b"x" * 1000)
        assert r.status_code == 200
    assert len(upstream.requests) == 1


async def test_client_keys_are_required_when_configured(routes: Path, upstream: Upstream) -> None:
    """With auth.api_keys set, a missing or wrong key is 401 and never reaches upstream."""
    routes.write_text(BASE + f"auth: {{api_keys: 'other-key, {CLIENT_KEY}'}}\n")
    async with serving(
        str(routes), transport=httpx.MockTransport(upstream), sleep=no_sleep, watch=False
    ) as c:
        assert (await c.get("/v1/models")).status_code == 401
        r = await c.get("/v1/models", headers={"authorization": "Bearer wrong"})
        assert r.status_code == 401
        assert error_of(r)["code"] == "invalid_api_key"
        assert "wrong" not in r.text
        assert upstream.requests == []
        r = await c.get("/v1/models", headers={"authorization": f"Bearer {CLIENT_KEY}"})
        assert r.status_code == 200
        assert upstream.requests[-1].headers["authorization"] == f"Bearer {UPSTREAM_KEY}"


@pytest.mark.parametrize(
    ("exc", "status", "code", "tries"),
    [
        pytest.param(httpx.ConnectError("refused"), 502, "upstream_error", 3, id="connect"),
        pytest.param(httpx.ReadTimeout("slow"), 504, "upstream_timeout", 1, id="timeout"),
        pytest.param(httpx.RemoteProtocolError("closed"), 502, "upstream_error", 1, id="protocol"),
    ],
)
async def test_upstream_failures_become_openai_errors(
    client: httpx.AsyncClient,
    upstream: Upstream,
    exc: Exception,
    status: int,
    code: str,
    tries: int,
) -> None:
    """Transport failures map to 502/504 in OpenAI's shape; only a refused connect is retried."""

    def fail(request: httpx.Request) -> httpx.Response:
        raise exc

    upstream.handler = fail
    r = await client.get("/v1/models")
    assert r.status_code == status
    assert error_of(r)["code"] == code
    assert r.headers["x-canary-backend"] == "legacy"
    assert r.headers["x-canary-route"] == "default"
    assert UPSTREAM_KEY not in r.text
    assert len(upstream.requests) == tries  # a call that may have been billed is not resent
    backend = (await client.get("/status")).json()["backends"]["legacy"]
    assert (backend["requests"], backend["errors"]) == (tries, tries)


@pytest.mark.parametrize(("status", "counts"), [(500, 1), (503, 3), (400, 0), (404, 0)])
async def test_upstream_error_responses_pass_through_unchanged(
    client: httpx.AsyncClient, upstream: Upstream, status: int, counts: int
) -> None:
    """The provider's own error body and status reach the client; only 5xx count as errors.

    A 503 is tried three times (retry.max_attempts) before it is passed on, each one counted.
    """
    body = b'{"error": {"message": "provider says no", "type": "x", "code": "y"}}'
    upstream.handler = lambda request: httpx.Response(status, content=body)
    r = await client.get("/v1/models")
    assert (r.status_code, r.content) == (status, body)
    assert (await client.get("/status")).json()["backends"]["legacy"]["errors"] == counts


async def test_sse_is_relayed_chunk_by_chunk(client: httpx.AsyncClient, upstream: Upstream) -> None:
    """Each upstream chunk reaches the client as it was sent, [DONE] included."""
    chunks = [b'data: {"n": 1}\n\n', b'data: {"n": 2}\n\n', b"data: [DONE]\n\n"]
    upstream.handler = lambda r: httpx.Response(
        200, headers={"content-type": "text/event-stream"}, stream=Chunks(chunks)
    )
    async with client.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as r:
        got = [c async for c in r.aiter_raw()]
    assert b"".join(got) == b"".join(chunks)
    assert (await client.get("/status")).json()["backends"]["legacy"]["errors"] == 0


@pytest.mark.parametrize(
    "fail",
    [
        pytest.param(httpx.RemoteProtocolError("peer closed"), id="cut"),
        pytest.param(httpx.ReadTimeout("stalled"), id="stalled"),
        pytest.param(None, id="no-done"),
    ],
)
async def test_broken_sse_stream_ends_with_an_error_event(
    client: httpx.AsyncClient, upstream: Upstream, fail: Exception | None
) -> None:
    """A stream that breaks or ends before [DONE] ends with an OpenAI error event and counts."""
    stream = Chunks([b'data: {"n": 1}\n\n'], fail=fail)
    upstream.handler = lambda r: httpx.Response(
        200, headers={"content-type": "text/event-stream"}, stream=stream
    )
    r = await client.post("/v1/chat/completions", json=chat("claude-3", stream=True))
    events = [e for e in r.text.split("\n\n") if e]
    assert events[0] == 'data: {"n": 1}'
    last = orjson.loads(events[-1].removeprefix("data: "))
    assert last["error"]["code"] == "stream_cut"
    assert stream.closed
    assert (await client.get("/status")).json()["backends"]["legacy"]["errors"] == 1


async def test_status_reports_routes_and_backend_windows(
    client: httpx.AsyncClient,
) -> None:
    """/status has the config, the weights in file units and per-backend window figures."""
    for _ in range(3):
        await client.get("/v1/models")
    doc = (await client.get("/status")).json()
    assert doc["config"]["error"] is None
    assert len(doc["config"]["version"]) == 64
    assert doc["state"] == "memory"
    chat_route = next(r for r in doc["routes"] if r["name"] == "chat")
    assert chat_route["configured"] == {"legacy": 50, "relay": 50}
    assert chat_route["effective"] == {"legacy": 50, "relay": 50}
    assert chat_route["canary_percentage"] == 50.0
    legacy = doc["backends"]["legacy"]
    assert legacy["requests"] == 3
    assert legacy["in_flight"] == 0
    assert legacy["peak_concurrency"] >= 1
    assert set(legacy["latency_ms"]) == {"p50", "p95", "p99"}
    text = orjson.dumps(doc).decode()
    assert UPSTREAM_KEY not in text and RELAY_KEY not in text


async def test_health_and_readiness(client: httpx.AsyncClient, tmp_path: Path) -> None:
    """/healthz is 200 while serving; /readyz is 200 with a config and 503 without one."""
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200
    bad = tmp_path / "bad.yaml"
    bad.write_text("backends: [\n")
    async with serving(
        str(bad), transport=httpx.MockTransport(Upstream()), sleep=no_sleep, watch=False
    ) as c:
        assert (await c.get("/readyz")).status_code == 503
        r = await c.get("/v1/models")
        assert r.status_code == 503
        assert error_of(r)["code"] == "no_config"
        assert "invalid YAML" in (await c.get("/status")).json()["config"]["error"]


async def test_unknown_control_path_is_404_in_openai_shape(client: httpx.AsyncClient) -> None:
    """Paths outside /v1 that canary does not serve get the same error shape."""
    r = await client.get("/nope")
    assert r.status_code == 404
    assert error_of(r)["code"] == "not_found"


async def test_admin_reload_needs_the_admin_token(routes: Path, upstream: Upstream) -> None:
    """Admin reload needs the token, applies a good file and keeps the last good on a bad one."""
    routes.write_text(BASE + f"auth: {{admin_token: {ADMIN}}}\n")
    app = create_app(
        str(routes), transport=httpx.MockTransport(upstream), sleep=no_sleep, watch=False
    )
    auth = {"authorization": f"Bearer {ADMIN}"}
    async with (
        LifespanManager(app) as m,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=m.app), base_url="http://c") as c,
    ):
        assert (await c.post("/admin/reload")).status_code == 401
        assert (
            await c.post("/admin/reload", headers={"authorization": "Bearer x"})
        ).status_code == 401
        first = (await c.get("/status")).json()["config"]["version"]

        routes.write_text(
            BASE.replace("{legacy: 50, relay: 50}", "{legacy: 0, relay: 1}")
            + f"auth: {{admin_token: {ADMIN}}}\n"
        )
        r = await c.post("/admin/reload", headers=auth)
        assert r.status_code == 200 and r.json()["changed"] is True
        r = await c.post("/v1/chat/completions", json=chat())
        assert r.headers["x-canary-backend"] == "relay"

        routes.write_text("routes: {oops\n")
        r = await c.post("/admin/reload", headers=auth)
        assert r.status_code == 422
        assert "invalid YAML" in r.json()["error"]
        doc = (await c.get("/status")).json()
        assert doc["config"]["version"] not in (None, first)
        assert "invalid YAML" in doc["config"]["error"]
        r = await c.post("/v1/chat/completions", json=chat())
        assert r.headers["x-canary-backend"] == "relay"  # the last good config still serves


async def test_admin_endpoints_are_off_without_a_token(client: httpx.AsyncClient) -> None:
    """With no admin_token configured, admin calls are refused, not open."""
    r = await client.post("/admin/reload")
    assert r.status_code == 403
    assert error_of(r)["code"] == "admin_disabled"


async def test_a_request_in_flight_finishes_on_the_config_it_started_with(
    routes: Path, upstream: Upstream
) -> None:
    """A reload during a call changes the next call's backend, not the running one's."""
    arrived, release = upstream.hold()
    routes.write_text(BASE + f"auth: {{admin_token: {ADMIN}}}\n")
    async with serving(
        str(routes), transport=httpx.MockTransport(upstream), sleep=no_sleep, watch=False
    ) as c:
        first = asyncio.create_task(c.get("/v1/models"))
        await asyncio.wait_for(arrived.wait(), 5)
        moved = BASE.replace(
            "paths: [/v1/models, /v1/embeddings, /v1/echo]\n    weights: {legacy: 100}",
            "paths: [/v1/models, /v1/embeddings, /v1/echo]\n    weights: {relay: 100}",
        )
        assert moved != BASE
        routes.write_text(moved + f"auth: {{admin_token: {ADMIN}}}\n")
        r = await c.post("/admin/reload", headers={"authorization": f"Bearer {ADMIN}"})
        assert r.json()["changed"] is True
        release.set()
        assert (await asyncio.wait_for(first, 5)).headers["x-canary-backend"] == "legacy"
        assert (await c.get("/v1/models")).headers["x-canary-backend"] == "relay"


async def test_a_client_that_stops_reading_releases_the_upstream(
    routes: Path, upstream: Upstream
) -> None:
    """A client whose socket never drains holds the upstream at most timeout_s + 1 s."""
    routes.write_text(BASE.replace("timeout_s: 5", "timeout_s: 0.1"))
    stream = Chunks([b'data: {"n": 1}\n\n', b"data: [DONE]\n\n"])
    upstream.handler = lambda r: httpx.Response(
        200, headers={"content-type": "text/event-stream"}, stream=stream
    )
    app = create_app(
        str(routes), transport=httpx.MockTransport(upstream), sleep=no_sleep, watch=False
    )
    stuck = asyncio.Event()
    messages = iter([{"type": "http.request", "body": b"", "more_body": False}])

    async def receive() -> dict[str, Any]:
        try:
            return next(messages)
        except StopIteration:
            await asyncio.Event().wait()  # the client neither sends nor disconnects
            raise AssertionError("unreachable") from None

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            stuck.set()
            await asyncio.Event().wait()  # flow control: the write never drains

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/v1/models",
        "raw_path": b"/v1/models",
        "query_string": b"",
        "headers": [],
    }
    async with LifespanManager(app):
        await asyncio.wait_for(app(scope, receive, send), 10)  # bounded, not hung
        assert stuck.is_set()
        assert stream.closed
        doc = app.stats.window("legacy").snapshot()
        assert (doc.in_flight, doc.errors) == (0, 0)  # the client's fault, not the backend's


FALLBACK = """
backends:
  legacy: {base_url: "http://legacy.test/v1"}
  relay: {base_url: "http://relay.test/v1", model_map: {gpt-4.1: relay-4.1}}
routes:
  - name: chat
    weights: {legacy: 0, relay: 100}
    baseline: legacy
    fallback: true
rollback: {min_requests: 1000}
"""


@pytest.fixture
async def fallback_client(tmp_path: Path, upstream: Upstream) -> AsyncIterator[httpx.AsyncClient]:
    path = tmp_path / "routes.yaml"
    path.write_text(FALLBACK)
    async with serving(
        str(path), transport=httpx.MockTransport(upstream), sleep=no_sleep, watch=False
    ) as c:
        yield c


def relay_fails_with(failure: Any) -> Handler:
    """An upstream where relay fails as given and legacy answers normally."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.host == "relay.test":
            if isinstance(failure, Exception):
                raise failure
            return failure(request)  # type: ignore[no-any-return]
        return Upstream.ok(request)

    return handle


@pytest.mark.parametrize(
    ("failure", "tries"),
    [
        pytest.param(httpx.ConnectError("refused"), 3, id="connect"),
        pytest.param(httpx.ReadTimeout("slow"), 1, id="timeout"),
        pytest.param(lambda r: httpx.Response(503, content=b"{}"), 3, id="503"),
        pytest.param(lambda r: httpx.Response(429, content=b"{}"), 3, id="429"),
        pytest.param(lambda r: httpx.Response(401, content=b"{}"), 1, id="401-key-refused"),
        pytest.param(lambda r: httpx.Response(402, content=b"{}"), 1, id="402-credit-spent"),
        pytest.param(lambda r: httpx.Response(403, content=b"{}"), 1, id="403-account-barred"),
        pytest.param(lambda r: httpx.Response(404, content=b"{}"), 1, id="404-rejected"),
        pytest.param(
            lambda r: httpx.Response(
                200,
                headers={"content-type": "text/event-stream"},
                stream=Chunks([], fail=httpx.RemoteProtocolError("cut before any chunk")),
            ),
            1,
            id="stream-cut-before-first-chunk",
        ),
    ],
)
async def test_failed_canary_call_falls_back_to_the_baseline(
    fallback_client: httpx.AsyncClient, upstream: Upstream, failure: Any, tries: int
) -> None:
    """A canary failure before any byte is retried if safe, then answered by the baseline."""
    upstream.handler = relay_fails_with(failure)
    r = await fallback_client.post("/v1/chat/completions", json=chat())
    assert r.status_code == 200
    assert r.headers["x-canary-backend"] == "legacy"
    assert r.headers["x-canary-fallback"] == "relay"
    assert [q.url.host for q in upstream.requests] == ["relay.test"] * tries + ["legacy.test"]
    assert orjson.loads(upstream.requests[0].content)["model"] == "relay-4.1"
    assert orjson.loads(upstream.requests[-1].content)["model"] == "gpt-4.1"  # baseline's map
    backends = (await fallback_client.get("/status")).json()["backends"]
    assert (backends["relay"]["requests"], backends["relay"]["errors"]) == (tries, tries)
    assert (backends["legacy"]["requests"], backends["legacy"]["errors"]) == (1, 0)


async def test_a_4xx_both_backends_give_is_the_clients_mistake(
    fallback_client: httpx.AsyncClient, upstream: Upstream
) -> None:
    """A 400 from the canary is made once more on the baseline; when the baseline refuses
    too, the client gets the baseline's answer and nobody's error count moves."""
    upstream.handler = lambda r: httpx.Response(400, content=r.url.host.encode())
    r = await fallback_client.post("/v1/chat/completions", json=chat())
    assert (r.status_code, r.content) == (400, b"legacy.test")
    assert r.headers["x-canary-fallback"] == "relay"
    assert [q.url.host for q in upstream.requests] == ["relay.test", "legacy.test"]
    backends = (await fallback_client.get("/status")).json()["backends"]
    assert (backends["relay"]["errors"], backends["legacy"]["errors"]) == (0, 0)
    samples = prometheus_samples((await fallback_client.get("/metrics")).text)
    assert not [k for k in samples if k[0] == "canary_upstream_failures_total"]


async def test_when_the_baseline_fails_too_the_client_gets_its_error(
    fallback_client: httpx.AsyncClient, upstream: Upstream
) -> None:
    """Fallback is tried once; the baseline's failure is answered as it is, still marked."""

    def both_down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("down")

    upstream.handler = both_down
    r = await fallback_client.post("/v1/chat/completions", json=chat())
    assert r.status_code == 502
    assert r.headers["x-canary-backend"] == "legacy"
    assert r.headers["x-canary-fallback"] == "relay"
    assert len(upstream.requests) == 6  # three tries on each: a refused connect is safe to retry


async def test_a_stream_broken_after_its_first_chunk_does_not_fall_back(
    fallback_client: httpx.AsyncClient, upstream: Upstream
) -> None:
    """Once bytes reached the client, the stream ends with an error event instead."""
    upstream.handler = relay_fails_with(
        lambda r: httpx.Response(
            200,
            headers={"content-type": "text/event-stream"},
            stream=Chunks([b'data: {"n": 1}\n\n'], fail=httpx.RemoteProtocolError("cut")),
        )
    )
    r = await fallback_client.post("/v1/chat/completions", json=chat(stream=True))
    assert r.headers["x-canary-backend"] == "relay"
    assert "stream_cut" in r.text
    assert len(upstream.requests) == 1


async def test_an_open_circuit_sends_the_canary_share_to_the_baseline(
    tmp_path: Path, upstream: Upstream
) -> None:
    """After the relay trips, calls go to legacy without touching relay; /status says so."""
    path = tmp_path / "routes.yaml"
    path.write_text(FALLBACK.replace("min_requests: 1000", "min_requests: 4, open_s: 600"))
    app = create_app(
        str(path), transport=httpx.MockTransport(upstream), sleep=no_sleep, watch=False
    )
    upstream.handler = relay_fails_with(httpx.ConnectError("refused"))
    async with (
        LifespanManager(app) as m,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=m.app), base_url="http://c") as c,
    ):
        for _ in range(4):
            r = await c.post("/v1/chat/completions", json=chat())
            assert r.status_code == 200  # every failure was answered by the fallback
        doc = (await c.get("/status")).json()
        assert doc["backends"]["relay"]["circuit"] == "open"
        assert doc["routes"][0]["effective"] == {"legacy": 100, "relay": 0}
        assert doc["routes"][0]["canary_percentage"] == 0.0
        assert doc["events"][0]["to"] == "open"
        assert doc["migration"]["ready_for_full_migration"] is False
        assert doc["migration"]["reason"].startswith("relay: circuit open since ")
        before = len(upstream.requests)
        for _ in range(5):
            r = await c.post("/v1/chat/completions", json=chat())
            assert (r.headers["x-canary-backend"], "x-canary-fallback" in r.headers) == (
                "legacy",
                False,
            )
        assert [q.url.host for q in upstream.requests[before:]] == ["legacy.test"] * 5


async def test_readiness_turns_true_after_enough_healthy_calls(
    tmp_path: Path, upstream: Upstream
) -> None:
    """The verdict counts canary calls since the last change, with a reason until ready."""
    path = tmp_path / "routes.yaml"
    path.write_text(FALLBACK + "readiness: {min_requests: 3, max_error_rate: 0.05}\n")
    async with serving(
        str(path), transport=httpx.MockTransport(upstream), sleep=no_sleep, watch=False
    ) as c:
        migration = (await c.get("/status")).json()["migration"]
        assert migration["ready_for_full_migration"] is False
        assert migration["reason"] == "relay: 0 of 3 requests"
        for _ in range(3):
            await c.post("/v1/chat/completions", json=chat())
        migration = (await c.get("/status")).json()["migration"]
        assert migration["ready_for_full_migration"] is True


async def test_responses_api_streams_without_done_are_not_cut(
    fallback_client: httpx.AsyncClient, upstream: Upstream
) -> None:
    """Only chat and legacy completions must end with [DONE]; other event streams pass whole."""
    events = [b"event: response.created\ndata: {}\n\n", b"event: response.completed\ndata: {}\n\n"]
    upstream.handler = lambda r: httpx.Response(
        200,
        headers={"content-type": "text/event-stream", "content-length": "999"},
        stream=Chunks(events),
    )
    r = await fallback_client.post("/v1/responses", json=chat(stream=True))
    assert r.content == b"".join(events)
    assert "content-length" not in r.headers  # an SSE body may grow by an error event
    assert (await fallback_client.get("/status")).json()["backends"]["relay"]["errors"] == 0


async def test_a_header_that_cannot_be_forwarded_is_the_clients_400(
    client: httpx.AsyncClient, upstream: Upstream
) -> None:
    """A request the transport cannot write is refused as the client's error, not counted."""

    def unwritable(request: httpx.Request) -> httpx.Response:
        raise httpx.LocalProtocolError("a request header is not UTF-8")

    upstream.handler = unwritable
    r = await client.get("/v1/models")
    assert r.status_code == 400
    assert error_of(r)["code"] == "invalid_header"
    assert error_of(r)["type"] == "invalid_request_error"
    assert (await client.get("/status")).json()["backends"]["legacy"]["errors"] == 0


async def test_an_unexpected_failure_is_still_answered_in_openai_shape(
    client: httpx.AsyncClient, upstream: Upstream
) -> None:
    """Whatever goes wrong inside, the client gets a JSON 500 with the request id, the fault
    is counted and logged once with its traceback, and the access line has the status."""

    def broken(request: httpx.Request) -> httpx.Response:
        raise ValueError("something canary did not foresee")

    upstream.handler = broken
    with structlog.testing.capture_logs() as logs:
        r = await client.get("/v1/models")
    assert r.status_code == 500
    assert error_of(r)["code"] == "internal_error"
    assert "foresee" not in r.text
    assert r.headers["x-canary-request-id"]
    faults = [e for e in logs if e["event"] == "proxy.internal_error"]
    assert len(faults) == 1 and faults[0]["exc_info"]
    access = [e for e in logs if e["event"] == "proxy.request"]
    assert [(e["status"], e["outcome"]) for e in access] == [(500, "internal_error")]
    samples = prometheus_samples((await client.get("/metrics")).text)
    assert samples[("canary_internal_errors_total", ())] == 1


async def test_bodiless_statuses_lose_their_content_length(
    client: httpx.AsyncClient, upstream: Upstream
) -> None:
    """A 304 or 204 from upstream is relayed without a Content-Length the server would enforce."""
    upstream.handler = lambda r: httpx.Response(304, headers={"content-length": "10", "etag": "x"})
    r = await client.get("/v1/models")
    assert r.status_code == 304
    assert r.headers["etag"] == "x"
    assert "content-length" not in r.headers


async def test_headers_named_in_connection_are_not_forwarded(
    client: httpx.AsyncClient, upstream: Upstream
) -> None:
    """Headers a Connection header lists are hop-by-hop in both directions."""
    upstream.handler = lambda r: httpx.Response(
        200, headers={"connection": "x-hop-down", "x-hop-down": "internal"}, content=b"{}"
    )
    r = await client.get("/v1/models", headers={"connection": "x-hop-up", "x-hop-up": "1"})
    assert "x-hop-down" not in r.headers
    assert "x-hop-up" not in upstream.requests[-1].headers


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(b"/v1/../admin/keys", id="dot-dot"),
        pytest.param(b"/v1/%2e%2e/admin", id="encoded-dot-dot"),
        pytest.param(b"/v1/./models", id="dot"),
    ],
)
async def test_dot_segments_are_refused_before_any_upstream_call(
    routes: Path, upstream: Upstream, path: bytes
) -> None:
    """/v1/../x would reach any path on the provider with the backend's key: 400 instead."""
    app = create_app(
        str(routes), transport=httpx.MockTransport(upstream), sleep=no_sleep, watch=False
    )
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    decoded = path.decode().replace("%2e", ".")
    scope = {"type": "http", "method": "GET", "path": decoded, "raw_path": path}
    scope |= {"query_string": b"", "headers": []}
    async with LifespanManager(app):
        await app(scope, receive, send)
    assert sent[0]["status"] == 400
    assert b"invalid_path" in sent[1]["body"]
    assert upstream.requests == []


async def test_a_429_is_retried_after_the_wait_the_provider_asked_for(
    routes: Path, upstream: Upstream
) -> None:
    """429 with Retry-After, then 200: the client gets the 200; the wait honoured the header."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    answers = iter([httpx.Response(429, headers={"retry-after": "2"}, content=b"{}")])
    upstream.handler = lambda r: next(answers, None) or Upstream.ok(r)
    async with serving(
        str(routes), transport=httpx.MockTransport(upstream), sleep=sleep, watch=False
    ) as c:
        r = await c.get("/v1/models")
        assert r.status_code == 200
        assert len(upstream.requests) == 2
        assert len(slept) == 1 and slept[0] >= 2
        legacy = (await c.get("/status")).json()["backends"]["legacy"]
        assert (legacy["requests"], legacy["errors"]) == (2, 1)  # the 429 counted once


async def test_a_backend_that_trips_gets_no_more_retries(
    tmp_path: Path, upstream: Upstream
) -> None:
    """Once the canary's circuit opens mid-retry, the call falls back at once."""
    path = tmp_path / "routes.yaml"
    path.write_text(FALLBACK.replace("min_requests: 1000", "min_requests: 1, open_s: 600"))
    upstream.handler = relay_fails_with(lambda r: httpx.Response(503, content=b"{}"))
    async with serving(
        str(path), transport=httpx.MockTransport(upstream), sleep=no_sleep, watch=False
    ) as c:
        r = await c.post("/v1/chat/completions", json=chat())
        assert (r.status_code, r.headers["x-canary-fallback"]) == (200, "relay")
        assert [q.url.host for q in upstream.requests] == ["relay.test", "legacy.test"]


LIMITED = """
backends:
  legacy: {base_url: "http://legacy.test/v1", max_qps: 2, max_concurrency: 1}
routes:
  - name: all
    weights: {legacy: 1}
server: {queue_timeout_s: 0.05}
"""


async def test_over_max_qps_is_a_local_429_not_a_backend_error(
    tmp_path: Path, upstream: Upstream
) -> None:
    """The third start within a second gets 429 with Retry-After and never reaches upstream."""
    path = tmp_path / "routes.yaml"
    path.write_text(LIMITED)
    clock = [1_000.0]
    async with serving(
        str(path),
        transport=httpx.MockTransport(upstream),
        sleep=no_sleep,
        clock=lambda: clock[0],
        watch=False,
    ) as c:
        assert [(await c.get("/v1/models")).status_code for _ in range(2)] == [200, 200]
        r = await c.get("/v1/models")
        assert r.status_code == 429
        assert error_of(r)["code"] == "rate_limit_exceeded"
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["x-canary-backend"] == "legacy"
        assert len(upstream.requests) == 2
        legacy = (await c.get("/status")).json()["backends"]["legacy"]
        assert legacy["errors"] == 0
        clock[0] += 1.01
        assert (await c.get("/v1/models")).status_code == 200


async def test_over_max_concurrency_waits_then_gets_429(tmp_path: Path, upstream: Upstream) -> None:
    """With one slot taken, a second call waits its bounded queue time, then gets 429."""
    path = tmp_path / "routes.yaml"
    path.write_text(LIMITED.replace("max_qps: 2, ", ""))
    arrived, release = upstream.hold()
    async with serving(
        str(path), transport=httpx.MockTransport(upstream), sleep=no_sleep, watch=False
    ) as c:
        first = asyncio.create_task(c.get("/v1/models"))
        await asyncio.wait_for(arrived.wait(), 5)
        second = await asyncio.wait_for(c.get("/v1/models"), 5)
        assert second.status_code == 429
        assert "max_concurrency" in error_of(second)["message"]
        release.set()
        assert (await first).status_code == 200
        assert len(upstream.requests) == 1
