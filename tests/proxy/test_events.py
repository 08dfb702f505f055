"""Server events of a session (``canary.proxy.events``): outside input, read defensively."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from canary.proxy.events import Scan, event_type
from canary.proxy.session_wire import client_key_headers, model_of


def _scan() -> tuple[Scan, list[tuple[int, int]], list[tuple[str | None, str]]]:
    usage: list[tuple[int, int]] = []
    models: list[tuple[str | None, str]] = []
    return Scan(None, usage.append, lambda a, n: models.append((a, n))), usage, models


@settings(max_examples=300)
@given(
    st.one_of(
        st.text(max_size=400),
        st.builds(
            json.dumps,
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                lambda inner: (
                    st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=4)
                ),
                max_leaves=20,
            ),
        ),
    )
)
def test_any_frame_text_is_read_without_raising(text: str) -> None:
    """Garbage frames, both ways: never an exception, never a count from nonsense."""
    scan, usage, _ = _scan()
    scan.client(text)
    scan.server(text)
    assert all(a >= 0 and b >= 0 for a, b in usage)


@settings(max_examples=200)
@given(
    kind=st.sampled_from(["response.done", "response.completed"]),
    tin=st.integers(0, 10**9),
    tout=st.integers(0, 10**9),
    extra=st.dictionaries(
        st.sampled_from(["event_id", "status", "id", "output"]), st.text(max_size=30)
    ),
    spaced=st.booleans(),
)
def test_usage_is_metered_from_either_api(
    kind: str, tin: int, tout: int, extra: dict[str, str], spaced: bool
) -> None:
    """``response.done`` (Realtime) and ``response.completed`` (Responses) carry the usage,
    whatever else the event holds and however it is spaced; deltas are never parsed."""
    response = {**extra, "model": "gpt-x", "usage": {"input_tokens": tin, "output_tokens": tout}}
    event = {"type": kind, "event_id": "event_123", "response": response}
    text = json.dumps(event) if spaced else json.dumps(event, separators=(",", ":"))
    scan, usage, models = _scan()
    scan.server(json.dumps({"type": "response.output_text.delta", "delta": "usage"}))
    scan.server(text)
    assert usage == [(tin, tout)]
    assert models == ([] if kind == "response.done" else [(None, "gpt-x")])


def test_the_model_asked_comes_from_the_query_or_the_first_response_create() -> None:
    """``?model=`` names it (Realtime); else the client's first ``response.create``."""
    assert model_of(b"model=gpt-realtime&x=1") == "gpt-realtime"
    assert model_of(b"x=1") is None
    scan, _, models = _scan()
    scan.client('{"type":"response.create","model":"gpt-4.1","input":"hi"}')
    scan.server('{"type":"response.created","response":{"model":"gpt-4.1-2025"}}')
    scan.server('{"type":"session.updated","session":{"model":"other"}}')
    assert models == [("gpt-4.1", "gpt-4.1-2025")]  # one verdict per session
    assert event_type('{"type": "session.created"}') == "session.created"


def test_a_subprotocol_key_is_checked_as_a_bearer_key() -> None:
    """A browser sends its key as an ``openai-insecure-api-key.*`` subprotocol."""
    hdrs = client_key_headers({}, ["realtime", "openai-insecure-api-key.ck-1"])
    assert hdrs[b"authorization"] == b"Bearer ck-1"
    assert client_key_headers({b"authorization": b"Bearer a"}, ["x"]) == {
        b"authorization": b"Bearer a"
    }


def test_the_upstream_handshake_carries_the_backends_key_only() -> None:
    """Upstream: ws scheme, the client's keys, Sec-WebSocket-* and the subprotocol key
    dropped, the backend's key added, OpenAI-Beta kept, ``?model=`` through model_map."""
    from starlette.types import Scope

    from canary.config.model import Backend
    from canary.proxy.session_wire import Answer, handshake

    scope: Scope = {
        "type": "websocket",
        "path": "/v1/realtime",
        "raw_path": b"/v1/realtime",
        "query_string": b"model=gpt-realtime&x=1",
        "headers": [
            (b"authorization", b"Bearer client"),
            (b"x-api-key", b"client"),
            (b"sec-websocket-key", b"abc"),
            (b"sec-websocket-protocol", b"realtime, openai-insecure-api-key.client"),
            (b"openai-beta", b"realtime=v1"),
        ],
        "subprotocols": ["realtime", "openai-insecure-api-key.client"],
    }
    backend = Backend("relay", "https://r.example/v1", "sk-relay", model_map={"gpt-realtime": "rt"})

    async def send(_: object) -> None: ...

    out = handshake(scope, backend, Answer(send, b"rid", scope), 5.0)
    assert out.url == "wss://r.example/v1/realtime?model=rt&x=1"
    assert out.protocols == ("realtime",)
    headers = dict(out.headers)
    assert b"client" not in b"".join(v for _, v in out.headers)
    assert headers[b"x-api-key"] == b"sk-relay"  # the scheme the client used
    assert headers[b"openai-beta"] == b"realtime=v1"
    assert not any(k.startswith(b"sec-websocket-") for k in headers)
