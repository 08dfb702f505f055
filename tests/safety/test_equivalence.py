"""The model audit's verdicts and the bounded search for an answer's model (SPEC §9)."""

from __future__ import annotations

import random

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from canary.safety.equivalence import (
    MIN_SAME_MODEL_PAIRS,
    PEEK_BYTES,
    Ask,
    Facts,
    Pair,
    classify,
    compare,
    echoed_model,
    same_model_p,
    signed_rank_p,
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


# --- the same-model paired test -------------------------------------------------------------


def _pair(primary: str | None, shadow: str | None) -> Pair:
    facts = [Facts(200, True, 0.1, text=text) for text in (primary, shadow)]
    return compare(facts[0], facts[1], Ask("m", deterministic=False, json=False, tools=False))


def test_signed_rank_known_answer_and_edges() -> None:
    """Ten positive differences 1..10: W+ = 55 against a mean of 27.5, z = (27.5 - 0.5) /
    sqrt(96.25), p = 0.00592; no nonzero difference is no evidence (1.0)."""
    assert signed_rank_p([float(d) for d in range(1, 11)]) == pytest.approx(0.005922, abs=1e-5)
    assert signed_rank_p([0.0, 0.0]) == 1.0 == signed_rank_p([])
    assert signed_rank_p([1.0, -1.0] * 10) == pytest.approx(1.0)  # ties at mid-rank, balanced


def test_same_model_p_waits_for_its_pairs_and_reads_lengths() -> None:
    """None under MIN_SAME_MODEL_PAIRS pairs with both texts; then the lengths' test."""
    assert _pair("abc", "abcde").lengths == (3, 5)
    assert _pair("abc", None).lengths is None
    few = [_pair("a" * 10, "a" * 5)] * (MIN_SAME_MODEL_PAIRS - 1) + [_pair("x", None)] * 5
    assert same_model_p(few) is None and summarize(few)["same_model_p"] is None
    shorter = [_pair("a" * (10 + i % 7), "a" * (6 + i % 5)) for i in range(MIN_SAME_MODEL_PAIRS)]
    p = same_model_p(shorter)
    assert p is not None and p < 0.001


def test_the_signed_rank_test_keeps_its_false_alarm_rate() -> None:
    """Seeded: pairs of one model (the two lengths drawn alike) are flagged at p < 0.05 in
    about 5% of 400 windows of 40 pairs; a length shift of a quarter is caught in most."""
    rng = random.Random(5)

    def window(shift: float) -> list[float]:
        out = []
        for _ in range(40):
            typical = rng.randint(20, 400)  # each prompt its own length
            a = rng.gauss(typical, typical * 0.3)
            b = rng.gauss(typical * (1 - shift), typical * 0.3)
            out.append(round(b) - round(a))
        return out

    alarms = sum(signed_rank_p(window(0.0)) < 0.05 for _ in range(400))
    assert 8 <= alarms <= 32  # 2% .. 8%: the nominal 5% within sampling error
    caught = sum(signed_rank_p(window(0.25)) < 0.05 for _ in range(100))
    assert caught >= 80


@given(st.lists(st.integers(-50, 50), max_size=60), st.randoms(use_true_random=False))
def test_signed_rank_p_properties(differences: list[int], shuffle: random.Random) -> None:
    """p in [0, 1]; the same whatever the pairs' order and whichever side is called first."""
    values = [float(d) for d in differences]
    p = signed_rank_p(values)
    assert 0.0 <= p <= 1.0
    shuffle.shuffle(values)
    assert signed_rank_p(values) == pytest.approx(p)
    assert signed_rank_p([-v for v in values]) == pytest.approx(p)
