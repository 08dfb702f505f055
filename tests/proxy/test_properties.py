"""Property: whatever a client sends, through every route shape, the router answers it,
and every answer the router makes itself is JSON in OpenAI's error shape, never a 5xx.

Route shapes (chosen by an ``x-shape`` header): a backend with ``model_map``; a
``models`` match; a ``body:`` sticky key; a ``header:`` sticky key; a plain route.
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

from tests.helpers import Upstream, no_sleep, serving

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
  - name: plain
    weights: {legacy: 100}
server: {max_body_bytes: 4096}
"""

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

    cm = serving(str(path), transport=httpx.MockTransport(Upstream()), sleep=no_sleep, watch=False)
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
    headers["content-type"] = draw(st.sampled_from(["application/json", "text/plain", "", "x/y"]))
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
    method = draw(st.sampled_from(["POST", "GET", "PUT", "DELETE"]))
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
    if r.headers.get("x-up") == "1":
        return  # the (fake) provider's own answer, passed through
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    error = orjson.loads(r.content)["error"]
    assert {type(error[k]) for k in ("message", "type", "code")} == {str}
    assert r.headers["content-type"] == "application/json"
    if r.request.url.path.startswith("/v1/"):  # httpx may normalise "/v1/." to "/v1"
        assert r.headers["x-canary-request-id"]


def test_the_router_is_still_up_after_the_examples(
    app: tuple[httpx.AsyncClient, Run[Any]],
) -> None:
    """The process serves on after every example above."""
    client, run = app
    assert run(client.get("/healthz")).status_code == 200
    r = run(client.post("/v1/chat/completions", json={"model": "gpt-4.1"}))
    assert r.status_code == 200
