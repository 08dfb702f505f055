"""SSE framing on event boundaries: a stream's end mark and usage do not depend on where
reads happen to be cut, in every dialect."""

from __future__ import annotations

import random
from pathlib import Path

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canary.proxy.dialects import (
    ANTHROPIC,
    ANTHROPIC_UNBILLED,
    CHAT,
    RESPONSES,
    Dialect,
    dialect_of,
)
from canary.proxy.sse import Frames
from tests.helpers import Chunks, Upstream, no_sleep, prometheus_samples, serving


def _data(obj: object, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(obj) + b"\n\n"


def _chat_stream() -> bytes:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4.1", "usage": None}
    parts = [
        _data({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    ]
    for word in ("Hello", " there:", ' {"a": 1}', " done"):
        parts.append(_data({**chunk, "choices": [{"index": 0, "delta": {"content": word}}]}))
    parts.append(b": keep-alive\n\n")
    usage = {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}
    parts.append(_data({**chunk, "choices": [], "usage": usage}))
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


def _responses_stream() -> bytes:
    resp = {"id": "r1", "object": "response", "model": "gpt-4.1", "status": "in_progress"}
    parts = [_data({"type": "response.created", "response": resp}, "response.created")]
    for i, word in enumerate(("Hi", ": ", "there")):
        delta = {"type": "response.output_text.delta", "delta": word, "sequence_number": i}
        parts.append(_data(delta, "response.output_text.delta"))
    usage = {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}
    done = {**resp, "status": "completed", "usage": usage}
    parts.append(_data({"type": "response.completed", "response": done}, "response.completed"))
    return b"".join(parts)


def _anthropic_stream() -> bytes:
    usage = {
        "input_tokens": 20,
        "cache_creation_input_tokens": 3,
        "cache_read_input_tokens": 2,
        "cache_creation": {"ephemeral_5m_input_tokens": 3},
        "output_tokens": 1,
    }
    message = {"id": "m1", "type": "message", "model": "claude-sonnet-4", "usage": usage}
    parts = [_data({"type": "message_start", "message": message}, "message_start")]
    parts.append(_data({"type": "ping"}, "ping"))
    for word in ("Hel", "lo: ", "world"):
        delta = {"type": "content_block_delta", "index": 0, "delta": {"text": word}}
        parts.append(_data(delta, "content_block_delta"))
    end = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn"},
        "usage": {"output_tokens": 14},
    }
    parts.append(_data(end, "message_delta"))
    parts.append(_data({"type": "message_stop"}, "message_stop"))
    return b"".join(parts)


STREAMS = {
    "chat": (CHAT, _chat_stream(), (9, 12)),
    "responses": (RESPONSES, _responses_stream(), (7, 3)),
    "anthropic": (ANTHROPIC, _anthropic_stream(), (25, 14)),
}


def _read(dialect: Dialect, reads: list[bytes]) -> tuple[bool, tuple[int, int] | None]:
    frames = Frames()
    for read in reads:
        frames.feed(read)
    last = frames.last_events(1)
    complete = dialect.complete(last[0] if last else None)
    return complete, dialect.stream_usage(frames.first_event(), frames.last_events())


@pytest.mark.parametrize("name", list(STREAMS))
def test_every_two_piece_split_gives_the_same_verdict_and_usage(name: str) -> None:
    """Cut anywhere (inside JSON, before a ':', between CR and LF), a stream reads the same."""
    dialect, stream, usage = STREAMS[name]
    for cut in range(len(stream) + 1):
        assert _read(dialect, [stream[:cut], stream[cut:]]) == (True, usage), cut


@pytest.mark.parametrize("name", list(STREAMS))
def test_a_stream_cut_before_its_end_mark_is_incomplete_wherever_it_is_cut(name: str) -> None:
    """Any strict prefix of a stream lacks its end mark, however the reads fall."""
    dialect, stream, _ = STREAMS[name]
    end = stream.rindex(b"\n\n", 0, len(stream) - 2) + 2  # the start of the last event
    for cut in range(0, end + 1, 7):
        assert not _read(dialect, [stream[:cut]])[0], cut


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(list(STREAMS)), data=st.data())
def test_reads_cut_at_random_places_give_the_same_verdict(name: str, data: st.DataObject) -> None:
    """Property: any number of reads, cut anywhere, give the verdict of the whole stream."""
    dialect, stream, usage = STREAMS[name]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    reads = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert _read(dialect, reads) == (True, usage)


def test_crlf_streams_are_framed_too() -> None:
    """A provider that ends lines in CRLF frames its events with CRLF CRLF."""
    stream = _chat_stream().replace(b"\n", b"\r\n")
    for cut in range(0, len(stream) + 1, 5):
        assert _read(CHAT, [stream[:cut], stream[cut:]]) == (True, (9, 12))


def test_paths_choose_their_dialect() -> None:
    """One dict lookup per request picks the dialect; messages/* is Anthropic's too, but
    unbilled (count_tokens answers carry no usage)."""
    assert dialect_of("/v1/chat/completions") is CHAT
    assert dialect_of("/v1/responses") is RESPONSES
    assert dialect_of("/v1/messages") is ANTHROPIC
    assert dialect_of("/v1/messages/count_tokens") is ANTHROPIC_UNBILLED
    assert ANTHROPIC.billed and not ANTHROPIC_UNBILLED.billed
    assert not dialect_of("/v1/embeddings").end_marks


ROUTES = """
backends:
  legacy: {base_url: "http://legacy.test/v1", timeout_s: 5}
routes:
  - name: all
    weights: {legacy: 100}
"""


async def test_an_upstream_writing_its_stream_in_two_pieces_is_never_called_cut(
    tmp_path: Path,
) -> None:
    """Through the whole app, at every split position of a real chat stream: the client
    gets the stream byte for byte, no error event is added, no failure is counted, and
    the tokens are the provider's."""
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES)
    stream = _chat_stream()
    upstream = Upstream()
    cut = 0
    upstream.handler = lambda r: httpx.Response(
        200,
        headers={"content-type": "text/event-stream"},
        stream=Chunks([stream[:cut], stream[cut:]]),
    )
    app_kw = {"transport": httpx.MockTransport(upstream), "sleep": no_sleep, "watch": False}
    async with serving(str(path), rng=random.Random(1), **app_kw) as client:
        for cut in range(len(stream) + 1):
            r = await client.post("/v1/chat/completions", json={"model": "gpt-4.1", "stream": True})
            assert r.content == stream, cut
        samples = prometheus_samples((await client.get("/metrics")).text)
    assert not [k for k in samples if k[0] == "canary_upstream_failures_total"]
    n = len(stream) + 1
    tokens = {k[1]: v for k, v in samples.items() if k[0] == "canary_tokens_total"}
    assert sorted(tokens.values()) == [9 * n, 12 * n]
