"""Requests as the provider gets them: client credentials never, the backend's key in the
header that backend reads, and request bodies decoded only when the route needs them."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.helpers import Upstream, no_sleep, serving

LEGACY_KEY = "sk-legacy-key-111"
RELAY_KEY = "sk-relay-key-222"
CLIENT_KEY = "ck-client-key-333"

ROUTES = f"""
backends:
  legacy: {{base_url: "http://legacy.test/v1", api_key: {LEGACY_KEY}}}
  relay:
    base_url: "http://relay.test/v1"
    api_key: {RELAY_KEY}
    api_key_header: x-api-key
    model_map: {{gpt-4.1: relay-4.1}}
routes:
  - name: mapped
    match: {{headers: {{x-to: relay}}}}
    weights: {{relay: 100}}
  - name: claude
    match: {{paths: ["/v1/messages*"]}}
    weights: {{legacy: 100}}
  - name: default
    weights: {{legacy: 100}}
auth: {{api_keys: {CLIENT_KEY}}}
server: {{max_body_bytes: 1000}}
"""


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


@pytest.fixture
async def client(tmp_path: Path, upstream: Upstream) -> AsyncIterator[httpx.AsyncClient]:
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES)
    async with serving(
        str(path), transport=httpx.MockTransport(upstream), sleep=no_sleep, watch=False
    ) as c:
        yield c


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        pytest.param({"authorization": f"Bearer {CLIENT_KEY}"}, "authorization", id="bearer"),
        pytest.param({"x-api-key": CLIENT_KEY}, "x-api-key", id="x-api-key"),
        pytest.param({"api-key": CLIENT_KEY}, "authorization", id="azure-api-key"),
    ],
)
async def test_client_keys_are_accepted_three_ways_and_never_forwarded(
    client: httpx.AsyncClient, upstream: Upstream, given: dict[str, str], sent: str
) -> None:
    """The client's key is checked wherever it comes and removed; the backend's key goes
    out in the scheme the client used (x-api-key in, x-api-key out; otherwise Bearer)."""
    r = await client.post(
        "/v1/messages", json={"model": "claude-sonnet-4"}, headers={**given, "x-api-key-x": "k"}
    )
    assert r.status_code == 200
    headers = dict(upstream.requests[-1].headers)
    assert CLIENT_KEY not in str(headers)
    assert {k: v for k, v in headers.items() if "key" in k or k == "authorization"} == {
        sent: f"Bearer {LEGACY_KEY}" if sent == "authorization" else LEGACY_KEY,
        "x-api-key-x": "k",
    }


async def test_api_key_header_sets_where_the_backend_key_goes(
    client: httpx.AsyncClient, upstream: Upstream
) -> None:
    """``api_key_header: x-api-key`` sends the relay's key there, whatever the client used;
    ``anthropic-version`` and ``anthropic-beta`` pass through."""
    extra = {"anthropic-version": "2023-06-01", "anthropic-beta": "tools-1"}
    r = await client.post(
        "/v1/chat/completions",
        json={"model": "gpt-4.1"},
        headers={"authorization": f"Bearer {CLIENT_KEY}", "x-to": "relay", **extra},
    )
    assert r.status_code == 200
    sent = upstream.requests[-1].headers
    assert sent["x-api-key"] == RELAY_KEY
    assert "authorization" not in sent
    assert {k: sent[k] for k in extra} == extra


async def test_count_tokens_is_not_an_unmetered_answer(
    client: httpx.AsyncClient, upstream: Upstream
) -> None:
    """count_tokens is free and carries no usage: it is not reported as an answer whose
    usage went unread, while a message without usage is."""
    upstream.handler = lambda request: httpx.Response(200, json={"input_tokens": 5})
    auth = {"x-api-key": CLIENT_KEY}
    body = {"model": "claude-sonnet-4", "messages": []}
    r = await client.post("/v1/messages/count_tokens", json=body, headers=auth)
    assert (r.status_code, r.headers["x-canary-route"]) == (200, "claude")
    assert (await client.get("/status")).json()["backends"]["legacy"]["unmetered_requests"] == 0
    await client.post("/v1/messages", json=body, headers=auth)
    assert (await client.get("/status")).json()["backends"]["legacy"]["unmetered_requests"] == 1


async def test_a_missing_or_wrong_key_is_refused_in_any_header(
    client: httpx.AsyncClient, upstream: Upstream
) -> None:
    for headers in ({}, {"x-api-key": "wrong"}, {"api-key": "wrong"}, {"authorization": "x"}):
        r = await client.get("/v1/models", headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
    assert upstream.requests == []


async def test_a_gzip_body_is_decoded_where_the_route_needs_it(
    client: httpx.AsyncClient, upstream: Upstream
) -> None:
    """On a model_map route a gzip or deflate body is read, mapped and sent decoded; on a
    route that does not read it, it goes out as it came, encoding and all."""
    body = orjson.dumps({"model": "gpt-4.1", "messages": []})
    auth = {"authorization": f"Bearer {CLIENT_KEY}"}
    for encoding, packed in (
        ("gzip", gzip.compress(body, mtime=0)),
        ("deflate", zlib.compress(body)),
    ):
        headers = {**auth, "x-to": "relay", "content-encoding": encoding}
        r = await client.post("/v1/chat/completions", content=packed, headers=headers)
        assert r.status_code == 200
        sent = upstream.requests[-1]
        assert orjson.loads(sent.content)["model"] == "relay-4.1"
        assert "content-encoding" not in sent.headers
    r = await client.post(
        "/v1/chat/completions",
        content=gzip.compress(body, mtime=0),
        headers={**auth, "content-encoding": "gzip"},
    )
    assert r.status_code == 200
    assert upstream.requests[-1].content == gzip.compress(body, mtime=0)
    assert upstream.requests[-1].headers["content-encoding"] == "gzip"


@pytest.mark.parametrize(
    ("content", "encoding", "status", "code"),
    [
        pytest.param(
            gzip.compress(b"{" + b" " * 5000 + b"}", mtime=0), "gzip", 413, "request_too_large"
        ),
        pytest.param(b"{}", "br", 415, "unsupported_encoding"),
        pytest.param(b"not gzip", "gzip", 400, "invalid_encoding"),
        pytest.param(b"{not json", "", 400, "invalid_json"),
        pytest.param(b'{"model": "\xff\xfe"}', "", 400, "invalid_json"),
    ],
)
async def test_a_body_the_route_cannot_read_is_refused_in_openai_shape(
    client: httpx.AsyncClient,
    upstream: Upstream,
    content: bytes,
    encoding: str,
    status: int,
    code: str,
) -> None:
    """A zip bomb gets 413 on its decoded size, another encoding 415, bad bytes 400."""
    headers = {"authorization": f"Bearer {CLIENT_KEY}", "x-to": "relay"}
    if encoding:
        headers["content-encoding"] = encoding
    r = await client.post("/v1/chat/completions", content=content, headers=headers)
    assert (r.status_code, r.json()["error"]["code"]) == (status, code)
    assert upstream.requests == []


async def test_a_retry_takes_its_qps_start_after_the_backoff_not_before(tmp_path: Path) -> None:
    """The provider sees a retry when it is sent, so its start is taken then: taken before
    a backoff of up to 10 s, it would leave the one-second log before the call."""
    import random

    from canary.config.store import ConfigStore
    from canary.observe.meter import Meter
    from canary.proxy.app import Proxy
    from canary.proxy.plane import Plane
    from canary.proxy.transport import HttpxUpstream
    from canary.safety.breaker import Breakers
    from canary.safety.limits import MemoryLimiter
    from canary.safety.windows import Stats

    path = tmp_path / "routes.yaml"
    path.write_text(
        "backends:\n  legacy: {base_url: 'http://legacy.test/v1', max_qps: 100}\n"
        "routes:\n  - name: all\n    weights: {legacy: 1}\nretry: {backoff_s: 0.5}\n"
    )
    store = ConfigStore(str(path))
    store.load_initial()
    events: list[str] = []
    answers = iter([httpx.Response(503, content=b"busy"), httpx.Response(200, content=b"ok")])

    class Recording(MemoryLimiter):
        async def acquire(self, backend: str, **kw: object) -> object:  # type: ignore[override]
            events.append("start")
            return await super().acquire(backend, **kw)  # type: ignore[arg-type]

    async def sleep(seconds: float) -> None:
        events.append("backoff")

    def upstream(request: httpx.Request) -> httpx.Response:
        events.append("call")
        return next(answers)

    clock = __import__("time").monotonic
    stats = Stats(60, clock)
    plane = Plane(
        store,
        stats,
        Breakers(stats, clock),
        Recording(clock=clock),
        HttpxUpstream(httpx.MockTransport(upstream)),
        Meter(clock),
        clock=clock,
        rng=random.Random(1),
        sleep=sleep,
        access_log=False,
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=Proxy(plane)), base_url="http://c"
    ) as c:
        r = await c.get("/v1/models")
    assert (r.status_code, r.content) == (200, b"ok")
    assert events == ["start", "call", "backoff", "start", "call"]
