"""Property: whatever a client sends, through every route shape, the router answers it,
and every answer the router makes itself is JSON in OpenAI's error shape, never a 5xx.

Route shapes (chosen by an ``x-shape`` header): a backend with ``model_map``; a
``models`` match; a ``body:`` sticky key; a ``header:`` sticky key; a plain route. Bodies
of any content type (JSON read whole, uploads streamed) and origins with CORS on.

And whole answers or none: a relay's JSON answer cut at any points reaches the client
whole, or not at all (the baseline's instead).
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import zlib
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import Chunks, Upstream, no_sleep, serving

T = TypeVar("T")

SHAPES = """
backends:
  legacy: {base_url: "http://legacy.test/v1", timeout_s: 5}
  relay:
    base_url: "http://relay.test/v1"
    timeout_s: 5
    model_map: {gpt-4.1: relay-4.1, claude-sonnet-4: relay-claude}
routes:
  - name: mapped
    match: {headers: {x-shape: mapped}}
    weights: {legacy: 50, relay: 50}
    fallback: true
  - name: models
    match: {headers: {x-shape: models}, models: ["gpt-*", "claude-*"]}
    weights: {legacy: 50, relay: 50}
  - name: body-sticky
    match: {headers: {x-shape: body}}
    weights: {legacy: 50, relay: 50}
    sticky: body:user
  - name: header-sticky
    match: {headers: {x-shape: header}}
    weights: {legacy: 50, relay: 50}
    sticky: header:x-user-id
  - name: held
    match: {headers: {x-shape: held}}
    weights: {legacy: 0, relay: 100}
    baseline: legacy
    fallback: true
  - name: plain
    weights: {legacy: 100}
rollback: {min_requests: 1000000}  # no circuit trips across examples: each stands alone
server:
  max_body_bytes: 4096
  max_upload_bytes: 4096
  hold_answer_bytes: 4096
  cors: {allow_origins: ["http://app.test"]}
"""
ANSWER = orjson.dumps(
    {
        "id": "x",
        "model": "gpt-4.1",
        "choices": [{"message": {"content": "hi " * 40}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 40},
    }
)


def _answer(request: httpx.Request) -> httpx.Response:
    """The provider: on the relay, ANSWER in pieces at ``x-cuts``, cut short with
    ``x-fail``; anywhere else, the recording upstream's plain answer."""
    cuts = request.headers.get("x-cuts")
    if cuts is None or request.url.host != "relay.test":
        return Upstream.ok(request)
    ends = [*sorted({int(c) % len(ANSWER) for c in cuts.split(",") if c}), len(ANSWER)]
    pieces = [ANSWER[a:b] for a, b in zip([0, *ends], ends, strict=False) if b > a]
    fail = request.headers.get("x-fail") == "1"
    if fail:
        pieces = pieces[:-1]  # the last piece never comes
    headers = {"content-type": "application/json", "content-length": str(len(ANSWER))}
    cut = httpx.RemoteProtocolError("peer closed connection") if fail else None
    return httpx.Response(200, headers=headers, stream=Chunks(pieces, cut))


Run = Callable[[Coroutine[Any, Any, T]], T]


@pytest.fixture(scope="module")
def app() -> Iterator[tuple[httpx.AsyncClient, Run[Any]]]:
    """One router on a loop of its own thread, shared by every example."""
    import tempfile
    from pathlib import Path

    folder = tempfile.TemporaryDirectory()
    path = Path(folder.name) / "routes.yaml"
    path.write_text(SHAPES)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(10)

    upstream = Upstream()
    upstream.handler = _answer
    cm = serving(str(path), transport=httpx.MockTransport(upstream), sleep=no_sleep, watch=False)
    client = run(cm.__aenter__())
    try:
        yield client, run
    finally:
        run(cm.__aexit__(None, None, None))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
        folder.cleanup()


header_value = st.binary(max_size=40).filter(lambda b: not set(b) & {0, 10, 13})
json_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(
            st.sampled_from(["gpt-4.1", "claude-sonnet-4", "gpt-4o-mini"]), st.text(max_size=20)
        ),
        "user": st.one_of(st.text(max_size=20), st.integers(-(2**53), 2**53), st.none()),
        "stream": st.booleans(),
        "messages": st.just([{"role": "user", "content": "hi"}]),
    },
).map(orjson.dumps)
raw_bodies = st.one_of(
    json_bodies,
    st.binary(max_size=200),
    st.sampled_from([b"{not json", b"\xff\xfe{}", b"[1, 2]", b'"x"', b"", b"null", b"{}" * 3000]),
)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    body = draw(raw_bodies)
    encoding = draw(st.sampled_from(["", "gzip", "deflate", "br", "GZIP", "bogus", "gzip-bomb"]))
    headers: dict[str, Any] = {}
    if encoding == "gzip-bomb":
        body, encoding = gzip.compress(b"{" + b" " * 100_000 + b"}"), "gzip"
    elif encoding.lower() == "gzip":
        body = draw(st.sampled_from([gzip.compress(body), body]))  # or not really gzip
    elif encoding == "deflate":
        body = zlib.compress(body)
    if encoding:
        headers["content-encoding"] = encoding
    headers["x-shape"] = draw(st.sampled_from(["mapped", "models", "body", "header", "none"]))
    headers["content-type"] = draw(
        st.sampled_from(
            [
                "application/json",
                "text/plain",
                "",
                "x/y",
                "multipart/form-data; boundary=x",
                "application/octet-stream",
                "audio/wav",
                "application/vnd.api+json",
            ]
        )
    )
    if draw(st.booleans()):
        headers["origin"] = draw(st.sampled_from(["http://app.test", "http://evil.test", "null"]))
        if draw(st.booleans()):
            headers["access-control-request-method"] = "POST"
            headers["access-control-request-headers"] = draw(header_value)
    for name in ("x-user-id", "authorization", "x-api-key", "x-request-id"):
        if draw(st.booleans()):
            headers[name] = draw(header_value)
    path = draw(
        st.one_of(
            st.sampled_from(
                ["/v1/chat/completions", "/v1/responses", "/v1/messages", "/v1/models"]
            ),
            st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=30).map(
                lambda s: "/v1/" + s.lstrip("/")
            ),
        )
    )
    method = draw(st.sampled_from(["POST", "GET", "PUT", "DELETE", "OPTIONS"]))
    return {"method": method, "url": path, "content": body, "headers": headers}


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests())
def test_every_router_made_answer_is_an_openai_error_and_never_a_5xx(
    app: tuple[httpx.AsyncClient, Run[Any]], request: dict[str, Any]
) -> None:
    """Random bodies, encodings, headers and paths, through every route shape."""
    client, run = app
    try:
        r = run(client.request(**request))
    except httpx.InvalidURL:
        return  # the client library refuses to send it: nothing reached the router
    allowed = request["headers"].get("origin") == "http://app.test"
    if allowed and r.request.url.path.startswith("/v1/"):
        assert r.headers["access-control-allow-origin"] == "http://app.test"
    else:
        assert "access-control-allow-origin" not in r.headers
    if r.status_code == 204:  # an allowed origin's preflight, answered by canary itself
        assert allowed and request["method"] == "OPTIONS", r.headers
        return
    if r.headers.get("x-up") == "1":
        return  # the (fake) provider's own answer, passed through
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    error = orjson.loads(r.content)["error"]
    assert {type(error[k]) for k in ("message", "type", "code")} == {str}
    assert r.headers["content-type"] == "application/json"
    if r.request.url.path.startswith("/v1/"):  # httpx may normalise "/v1/." to "/v1"
        assert r.headers["x-canary-request-id"]


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(cuts=st.lists(st.integers(0, 10_000), max_size=6), fail=st.booleans())
def test_a_json_answer_reaches_the_client_whole_or_not_at_all(
    app: tuple[httpx.AsyncClient, Run[Any]], cuts: list[int], fail: bool
) -> None:
    """Cut at any points, a relay's JSON answer is never passed on in part: the client gets
    the relay's whole answer, or (cut short) the baseline's, with its exact length."""
    client, run = app
    headers = {"x-shape": "held", "x-cuts": ",".join(map(str, cuts)), "x-fail": str(int(fail))}
    r = run(client.post("/v1/chat/completions", json={"model": "gpt-4.1"}, headers=headers))
    assert r.status_code == 200
    if fail:
        assert r.headers["x-canary-backend"] == "legacy" and r.headers["x-up"] == "1"
        assert r.headers["x-canary-fallback"] == "relay"
    else:
        assert r.content == ANSWER and r.headers["content-length"] == str(len(ANSWER))
        assert r.headers["x-canary-backend"] == "relay"


def test_the_router_is_still_up_after_the_examples(
    app: tuple[httpx.AsyncClient, Run[Any]],
) -> None:
    """The process serves on after every example above."""
    client, run = app
    assert run(client.get("/healthz")).status_code == 200
    r = run(client.post("/v1/chat/completions", json={"model": "gpt-4.1"}))
    assert r.status_code == 200
