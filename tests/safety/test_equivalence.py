"""The model audit's verdicts and the bounded search for an answer's model (SPEC §9)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from canary.safety.equivalence import (
    PEEK_BYTES,
    Ask,
    Facts,
    classify,
    compare,
    echoed_model,
    summarize,
)


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


def test_compare_judges_the_shadow_against_the_clients_answer() -> None:
    """Ratios are shadow / primary; questions that do not apply stay None."""
    primary = Facts(200, True, 1.0, 0.2, 10, 20, "stop", "gpt-4.1", '{"a": 1}', ("f",))
    cheap = Facts(200, True, 0.5, 0.1, 30, 10, "length", "gpt-4o-mini", "not json", ())
    ask = Ask("gpt-4.1", deterministic=True, json=True, tools=True)
    pair = compare(primary, cheap, ask)
    assert pair.both_ok and pair.latency_ratio == 0.5 and pair.ttfb_ratio == 0.5
    assert pair.prompt_equal is False and pair.prompt_ratio == 3.0
    assert pair.completion_ratio == 0.5 and pair.finish_agree is False
    assert pair.model_mismatch and pair.exact is False
    assert pair.json_agree is False and pair.tools_agree is False
    same = compare(primary, primary, Ask("gpt-4.1", False, False, False))
    assert same.prompt_equal and same.exact is None and same.json_agree is None
    failed = compare(primary, Facts(503, False, 0.1), ask)
    assert not failed.both_ok and failed.prompt_equal is None and not failed.model_mismatch


def test_summarize_gives_shares_and_medians_over_the_pairs() -> None:
    """exact_match is None without temperature-0 pairs; shares count only known answers."""
    primary = Facts(200, True, 1.0, 0.2, 10, 20, "stop", "m", "x")
    slow = Facts(200, True, 3.0, 0.4, 10, 20, "stop", "m", "x")
    pairs = [compare(primary, slow, Ask("m", False, False, False))] * 4
    summary = summarize(pairs)
    assert summary["pairs"] == 4 and summary["status_agreement"] == 1.0
    assert summary["latency_ratio_p50"] == 3.0 and summary["ttfb_ratio_p50"] == 2.0
    assert summary["prompt_tokens_match"] == 1.0 and summary["exact_match"] is None
    assert summarize([])["status_agreement"] is None
