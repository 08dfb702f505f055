"""The model audit's verdicts and the bounded search for an answer's model (SPEC §9)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from canary.safety.equivalence import PEEK_BYTES, classify, echoed_model


@pytest.mark.parametrize(
    ("asked", "echoed", "verdict"),
    [
        ("gpt-4.1", "gpt-4.1", "match"),
        ("gpt-4.1", "GPT-4.1", "match"),
        ("gpt-4.1", "gpt-4.1-2025-04-14", "variant"),
        ("gpt-4-turbo", "gpt-4-turbo-0613", "variant"),
        ("claude-3-5-sonnet", "claude-3-5-sonnet-20241022", "variant"),
        ("claude-x", "claude-x@001", "variant"),
        ("gpt-4.1-2025-04-14", "gpt-4.1", "variant"),
        ("gpt-4.1", "openai/gpt-4.1", "variant"),
        ("gpt-4.1", "gpt-4o-mini", "mismatch"),
        ("gpt-4.1", "gpt-4.1-mini", "mismatch"),
        ("gpt-4.1", "gpt-4.1-nano-2025-04-14", "mismatch"),
        ("gpt-4", "gpt-4o", "mismatch"),
        ("gpt-4.1", None, "absent"),
        ("gpt-4.1", " ", "absent"),
    ],
)
def test_classify_tells_a_dated_name_from_another_model(
    asked: str, echoed: str | None, verdict: str
) -> None:
    """A date or version suffix is the same model; a size or family suffix is not."""
    assert classify(asked, echoed) == verdict


def test_echoed_model_reads_json_bodies_and_first_events() -> None:
    """The model of a chat body, an SSE chunk, Anthropic's message_start, Responses' created."""
    assert echoed_model(b'{"id":"x","object":"chat.completion","model":"gpt-4.1"}') == "gpt-4.1"
    chunk = b'data: {"id":"c","object":"chat.completion.chunk","model":"m-1","choices":[]}\n\n'
    assert echoed_model(chunk) == "m-1"
    start = b'event: message_start\ndata: {"type":"message_start","message":{"model":"claude-x"}}'
    assert echoed_model(start) == "claude-x"
    created = b'data: {"type":"response.created","response":{"id":"r","model":"gpt-4o"}}'
    assert echoed_model(created) == "gpt-4o"
    assert echoed_model(b'{"choices":[]}') is None


def test_echoed_model_is_bounded_to_the_first_bytes() -> None:
    """A model named past PEEK_BYTES is not looked for: the search costs a bounded scan."""
    body = b'{"pad":"' + b"x" * PEEK_BYTES + b'","model":"late"}'
    assert echoed_model(body) is None


@given(
    model=st.text(
        alphabet=st.characters(blacklist_characters='"\\', blacklist_categories=("Cs", "Cc")),
        min_size=1,
        max_size=32,  # 128 bytes of UTF-8 at most
    ),
    content=st.text(max_size=200),
)
def test_echoed_model_finds_the_answers_model_never_one_in_content(
    model: str, content: str
) -> None:
    """Whatever the content says (a quoted "model" included), the top-level name is read."""
    fake = f'"model": "decoy-{content}"'
    body = orjson.dumps({"id": "x", "model": model, "choices": [{"content": fake + content}]})
    assert echoed_model(body) == model
    only_content = orjson.dumps({"id": "x", "choices": [{"content": fake}]})
    assert echoed_model(only_content) is None


@given(st.binary(max_size=2 * PEEK_BYTES))
def test_echoed_model_never_raises_on_any_bytes(raw: bytes) -> None:
    """Any answer's first bytes give a name or None, never an exception."""
    found = echoed_model(raw)
    assert found is None or 1 <= len(found) <= 128
