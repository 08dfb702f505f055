"""The same-model test: the MMD statistic with a Hamming kernel, its permutation p-value,
and ``canary verify --distribution``'s budget and bounds (upstream an httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import json
import random
from argparse import Namespace
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from canary.config.loader import load_config
from canary.tools import distribution as same
from canary.tools.samemodel import PROMPTS, hamming, mmd_test, padded
from canary.tools.simulate.sampling import distribution


def _answers(model: str, prompt: str, n: int, rng: random.Random) -> list[str]:
    return [" ".join(distribution(model, prompt).sample(1.0, rng)) for _ in range(n)]


def test_known_answer() -> None:
    """Two prompts' answers all alike within each side and unlike across: MMD² = 2 exactly,
    and only the observed split and its mirror reach it (p near 1/3 at 2 answers a side)."""
    outcome = mmd_test([["aa", "aa"]], [["bb", "bb"]], rng=random.Random(0), prefix=2)
    assert outcome.statistic == pytest.approx(2.0)
    assert 0.25 < outcome.p_value < 0.42  # 2 of the 6 splits, by 2000 draws
    assert hamming(padded("abc", 4), padded("abd", 4)) == 3  # a, b and the padding match
    assert hamming(padded("ab", 4), padded("abcd", 4)) == 2  # one ended: it differs on


def test_the_permutation_count_is_honoured() -> None:
    """The p-value rests on exactly the given number of relabellings: (1 + hits) / (1 + B)."""

    class Counting(random.Random):
        draws = 0

        def sample(self, population: Any, k: int, **kw: Any) -> list[Any]:
            self.draws += 1
            return super().sample(population, k, **kw)

    rng = Counting(1)
    first = [["x y", "x z", "y y"], ["a", "b"]]
    second = [["x x", "z z", "y x"], ["b", "c"]]
    outcome = mmd_test(first, second, rng=rng, permutations=37)
    assert rng.draws == 37 * 2 and outcome.permutations == 37
    assert round(outcome.p_value * 38, 9) == round(outcome.p_value * 38)


def test_one_model_is_not_flagged_and_another_is() -> None:
    """Seeded: one model on both sides gives a large p; another model a p under 0.01."""
    rng = random.Random(1)
    prompts = PROMPTS[:6]
    base = [_answers("gpt-4.1", p, 15, rng) for p in prompts]
    honest = [_answers("gpt-4.1", p, 15, rng) for p in prompts]
    other = [_answers("gpt-4o-mini", p, 15, rng) for p in prompts]
    assert mmd_test(base, honest, rng=random.Random(0), permutations=200).p_value > 0.05
    assert mmd_test(base, other, rng=random.Random(0), permutations=200).p_value < 0.01


def test_unbalanced_prompts_use_the_smaller_side_and_too_few_raise() -> None:
    """A prompt short of answers on one side is cut to its smaller side, or left out."""
    outcome = mmd_test([["a", "b", "c"], ["a"]], [["a", "b"], ["b", "c"]], rng=random.Random(0))
    assert (outcome.prompts, outcome.samples) == (1, 2)
    with pytest.raises(ValueError, match="no prompt"):
        mmd_test([["a"]], [["b"]], rng=random.Random(0))


answer = st.text(alphabet="abc ", max_size=6)
sides = st.lists(
    st.tuples(st.lists(answer, min_size=2, max_size=4), st.lists(answer, min_size=2, max_size=4)),
    min_size=1,
    max_size=3,
)


@settings(max_examples=40, deadline=None)
@given(prompts=sides, seed=st.integers(0, 2**16), shuffle=st.randoms(use_true_random=False))
def test_p_value_properties(
    prompts: list[tuple[list[str], list[str]]], seed: int, shuffle: random.Random
) -> None:
    """p in [0, 1]; the same p with the two samples swapped, the prompts reordered and each
    side's answers reordered (the same relabellings are drawn, in a canonical order)."""
    first = [x[: min(len(x), len(y))] for x, y in prompts]
    second = [y[: min(len(x), len(y))] for x, y in prompts]
    p = mmd_test(first, second, rng=random.Random(seed), permutations=30).p_value
    assert 0 < p <= 1
    assert mmd_test(second, first, rng=random.Random(seed), permutations=30).p_value == p
    order = list(range(len(first)))
    shuffle.shuffle(order)
    mixed_first = [shuffle.sample(first[i], len(first[i])) for i in order]
    mixed_second = [shuffle.sample(second[i], len(second[i])) for i in order]
    again = mmd_test(mixed_first, mixed_second, rng=random.Random(seed), permutations=30)
    assert again.p_value == p


# --- the verb ------------------------------------------------------------------------------

ROUTES = """
backends:
  legacy: {base_url: "http://legacy.test/v1", api_key: sk-legacy-SECRET, max_concurrency: 3}
  relay: {base_url: "http://relay.test/v1", api_key: sk-relay-SECRET, max_qps: 50}
routes:
  - name: chat
    weights: {legacy: 90, relay: 10}
    baseline: legacy
pricing:
  legacy: {gpt-4.1: {input: 8.00, output: 8.00}}
  relay: {gpt-4.1: {input: 1.10, output: 1.10}}
"""


def _args(config: Path, **over: Any) -> Namespace:
    values = {
        "config": str(config),
        "backend": None,
        "against": None,
        "model": "gpt-4.1",
        "max_usd": 0.5,
        "json": True,
        "prompts": 4,
        "samples": 6,
        "alpha": 0.01,
        "concurrency": 8,
    }
    return Namespace(**{**values, **over})


class Upstream:
    """A mock provider: the model's sampled answer; counts calls and the most in flight."""

    def __init__(self, fail_first: int = 0) -> None:
        self.calls = 0
        self.paced_s = 0.0
        self.in_flight: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.fail_first = fail_first
        self.rng = random.Random(3)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.calls += 1
        serial = self.calls
        self.in_flight[host] = self.in_flight.get(host, 0) + 1
        self.peak[host] = max(self.peak.get(host, 0), self.in_flight[host])
        for _ in range(3):  # let the others start: the bound is what stops them
            await asyncio.sleep(0)
        self.in_flight[host] -= 1
        if serial <= self.fail_first:
            return httpx.Response(503, json={"error": {"message": "busy"}})
        body = json.loads(request.content)
        assert body["temperature"] == 1 and body["max_tokens"] == same.MAX_TOKENS
        prompt = body["messages"][0]["content"]
        text = " ".join(distribution(body["model"], prompt).sample(1.0, self.rng))
        usage = {"prompt_tokens": 10, "completion_tokens": 5}
        return httpx.Response(
            200, json={"choices": [{"message": {"content": text}}], "usage": usage}
        )


def _run(
    tmp_path: Path, upstream: Upstream, capsys: pytest.CaptureFixture[str], **over: Any
) -> tuple[int, str, str]:
    config = tmp_path / "routes.yaml"
    config.write_text(ROUTES)
    cfg = load_config(str(config))
    clock = [0.0]

    async def sleep(seconds: float) -> None:
        clock[0] += seconds  # paced starts move the fake clock, not the test's time

    seams = same.Seams(httpx.MockTransport(upstream), lambda: clock[0], sleep)
    code = same.run_distribution(cfg, _args(config, **over), Console(), False, seams)
    upstream.paced_s = clock[0]  # how far the pacing moved the fake clock
    out, err = capsys.readouterr()
    return code, out, err


def test_calls_are_bounded_and_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """2 x K x N calls, never more in flight per backend than its max_concurrency (or
    --concurrency), starts paced to max_qps; the JSON carries every field; the record
    lands beside the config."""
    upstream = Upstream(fail_first=2)  # two failures, tried again
    code, out, _ = _run(tmp_path, upstream, capsys, concurrency=5)
    assert code == 0
    assert upstream.calls == 2 * 4 * 6 + 2
    assert (upstream.peak["legacy.test"], upstream.peak["relay.test"]) == (3, 5)
    assert upstream.paced_s >= (24 - 1) / 50  # the relay's 24+ starts, 1/50 s apart
    doc = json.loads(out)["distribution"]
    assert set(doc) >= {
        "test",
        "p_value",
        "alpha",
        "verdict",
        "prompts",
        "samples",
        "calls",
        "cost_usd",
    }
    assert (doc["verdict"], doc["prompts"], doc["samples"], doc["calls"]) == ("same", 4, 6, 48)
    assert doc["cost_usd"] == pytest.approx(24 * (10 * 8 + 5 * 8 + 10 * 1.1 + 5 * 1.1) / 1e6)
    record = json.loads((tmp_path / "routes.yaml.verify.json").read_text())["distribution"]
    assert record["verdict"] == "same" and len(record["config_version"]) == 64 and record["at"]
    assert "SECRET" not in out + json.dumps(record)


def test_over_budget_refuses_and_sends_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The estimate is printed first; over --max-usd the exit is 2 and no call is made."""
    upstream = Upstream()
    code, _, err = _run(tmp_path, upstream, capsys, max_usd=0.0001)
    assert code == 2 and upstream.calls == 0
    assert err.index("estimated cost $") < err.index("refused")
    assert not (tmp_path / "routes.yaml.verify.json").exists()


def test_too_few_answers_is_no_verdict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every call failing: each tried ATTEMPTS times, then exit 2, no verdict, no record."""
    upstream = Upstream(fail_first=10_000)
    code, out, err = _run(tmp_path, upstream, capsys)
    assert code == 2 and out == "" and "no verdict: 48 of 48 calls failed" in err
    assert upstream.calls == 48 * same.ATTEMPTS
    assert not (tmp_path / "routes.yaml.verify.json").exists()


def test_default_plan_costs_under_ten_cents_at_example_prices(tmp_path: Path) -> None:
    """The defaults (K, N, MAX_TOKENS) stay under $0.10 at the example prices."""
    config = tmp_path / "routes.yaml"
    config.write_text(ROUTES)
    plan = same.Plan(
        ("legacy", "relay"), "gpt-4.1", PROMPTS[: same.DEFAULT_PROMPTS], same.DEFAULT_SAMPLES
    )
    usd = same.estimate_usd(load_config(str(config)), plan)
    assert usd is not None and usd < 0.10


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
answers = st.fixed_dictionaries(
    {},
    optional={
        "choices": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "message": json_values
                    | st.fixed_dictionaries({}, optional={"content": json_values})
                },
            )
            | json_values,
            max_size=2,
        )
        | json_values,
        "usage": st.fixed_dictionaries(
            {}, optional={"prompt_tokens": json_values, "completion_tokens": json_values}
        )
        | json_values,
    },
)


@given(answers | json_values)
def test_read_answer_takes_any_provider_json(answer: Any) -> None:
    """Whatever JSON a provider sends, the reader returns a text and counts, or None."""
    read = same.read_answer(answer)
    if read is not None:
        text, prompt, completion = read
        assert isinstance(text, str) and prompt >= 0 and completion >= 0


@given(json_values, st.integers(0, 2**16))
def test_the_simulator_samples_at_any_temperature(temperature: Any, seed: int) -> None:
    """Any ``temperature`` a client sends: the fixed reply (not a number) or an answer of
    vocabulary words, the mode at 0 and below, never an overflow at a tiny one."""
    from canary.tools.simulate.sampling import POSITIONS, VOCAB, temperature_of

    value = temperature_of({"temperature": temperature})
    if value is None:
        return
    dist = distribution("gpt-4.1", "a prompt")
    words = dist.sample(value, random.Random(seed))
    assert 1 <= len(words) <= POSITIONS and set(words) <= set(VOCAB)
    if value <= 0:
        assert words == dist.mode
    tiny = dist.sample(1e-300, random.Random(seed))  # the likeliest word at each position
    likeliest = [VOCAB[max(range(len(w)), key=w.__getitem__)] for w in dist.weights]
    assert list(tiny) == likeliest[: len(tiny)]
