"""Routing choice: first match wins, weighted picks, sticky keys only move onto a raised weight."""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping

import pytest

from canary.config.loader import parse_config
from canary.config.model import Route
from canary.proxy.router import BUCKETS, bucket_of, match_route, pick

BACKENDS = """\
backends:
  legacy: {base_url: "http://127.0.0.1:9101/v1"}
  relay: {base_url: "http://127.0.0.1:9102/v1"}
"""
ROUTES = """\
routes:
  - name: chat-beta
    match:
      paths: [/v1/chat/completions]
      headers: {X-Tenant: beta, x-region: eu}
      models: [gpt-4.1, "claude-*"]
    weights: {relay: 100}
  - name: chat
    match:
      paths: [/v1/chat/completions, /v1/completions]
    weights: {legacy: 90, relay: 10}
  - name: claude
    match:
      models: ["claude-*"]
    weights: {relay: 1}
  - name: default
    weights: {legacy: 100}
"""
KEYS = [f"user-{i}" for i in range(20_000)]


def routes_of(text: str) -> tuple[Route, ...]:
    return parse_config((BACKENDS + text).encode(), "routes.yaml", environ={}).routes


class Headers:
    """Request headers looked up case-insensitively, as Starlette's ``Headers`` does."""

    def __init__(self, **headers: str) -> None:
        self.values = {k.replace("_", "-").lower(): v for k, v in headers.items()}

    def __call__(self, name: str) -> str | None:
        return self.values.get(name.lower())


class Model:
    """The body's ``model``, counting how often the router had to read it."""

    def __init__(self, value: str | None) -> None:
        self.value = value
        self.calls = 0

    def __call__(self) -> str | None:
        self.calls += 1
        return self.value


class FixedRandom(random.Random):
    """An RNG whose every draw is the same number."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def share(picks: list[str], backend: str) -> float:
    return 100 * Counter(picks)[backend] / len(picks)


def sticky(weights: Mapping[str, float], keys: list[str] = KEYS) -> list[str]:
    rng = random.Random(0)
    return [pick(weights, key, rng) for key in keys]


# --- match_route -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "headers", "model", "expected"),
    [
        pytest.param(
            "/v1/chat/completions",
            Headers(x_tenant="beta", x_region="eu"),
            "claude-3-opus",
            "chat-beta",
            id="all-predicates-match",
        ),
        pytest.param(
            "/v1/chat/completions",
            Headers(X_TENANT="beta", X_Region="eu"),
            "gpt-4.1",
            "chat-beta",
            id="header-names-any-case",
        ),
        pytest.param(
            "/v1/chat/completions",
            Headers(x_tenant="beta"),
            "gpt-4.1",
            "chat",
            id="every-header-must-match",
        ),
        pytest.param(
            "/v1/chat/completions",
            Headers(x_tenant="Beta", x_region="eu"),
            "gpt-4.1",
            "chat",
            id="header-values-exact",
        ),
        pytest.param(
            "/v1/chat/completions",
            Headers(x_tenant="beta", x_region="eu"),
            "gpt-4.1-mini",
            "chat",
            id="model-glob-is-anchored",
        ),
        pytest.param(
            "/v1/chat/completions",
            Headers(x_tenant="beta", x_region="eu"),
            None,
            "chat",
            id="no-model-in-body",
        ),
        pytest.param("/v1/completions", Headers(), "gpt-4.1", "chat", id="second-path"),
        pytest.param("/v1/chat/completions/", Headers(), "x", "default", id="paths-are-exact"),
        pytest.param("/v1/embeddings", Headers(), "claude-3-haiku", "claude", id="model-glob"),
        pytest.param("/v1/embeddings", Headers(), "gpt-4.1", "default", id="catch-all"),
    ],
)
def test_match_route_checks_paths_headers_and_model_globs(
    path: str, headers: Headers, model: str | None, expected: str
) -> None:
    """A route matches when its exact paths, every header and a model glob all match."""
    route = match_route(routes_of(ROUTES), path, headers, Model(model))

    assert route is not None
    assert route.name == expected


def test_first_matching_route_wins() -> None:
    """When several routes match, the first one in the file is chosen."""
    routes = routes_of(
        """\
routes:
  - name: first
    match: {paths: [/v1/chat/completions]}
    weights: {legacy: 1}
  - name: second
    match: {paths: [/v1/chat/completions]}
    weights: {relay: 1}
  - name: catch-all
    weights: {legacy: 1}
"""
    )

    route = match_route(routes, "/v1/chat/completions", Headers(), Model("gpt-4.1"))

    assert route is not None
    assert route.name == "first"


def test_no_matching_route_gives_none() -> None:
    """Without a catch-all, a request no route matches gets ``None`` (a 404 upstream of here)."""
    routes = routes_of(ROUTES.split("  - name: default")[0])

    assert match_route(routes, "/v1/embeddings", Headers(), Model("gpt-4.1")) is None


@pytest.mark.parametrize(
    ("path", "headers", "expected"),
    [
        pytest.param("/v1/embeddings", Headers(), "default", id="path-failed"),
        pytest.param("/v1/chat/completions", Headers(x_tenant="beta"), "chat", id="header-failed"),
    ],
)
def test_model_is_not_read_when_an_earlier_predicate_fails(
    path: str, headers: Headers, expected: str
) -> None:
    """A route's model glob is not evaluated when its path or headers already failed."""
    routes = routes_of(
        """\
routes:
  - name: beta
    match:
      paths: [/v1/chat/completions]
      headers: {x-tenant: beta, x-region: eu}
      models: ["claude-*"]
    weights: {relay: 1}
  - name: chat
    match: {paths: [/v1/chat/completions]}
    weights: {legacy: 1}
  - name: default
    weights: {legacy: 1}
"""
    )
    model = Model("claude-3-opus")

    route = match_route(routes, path, headers, model)

    assert route is not None
    assert route.name == expected
    assert model.calls == 0


def test_model_is_not_read_when_no_route_needs_it() -> None:
    """Routes without a ``models`` match never make the router parse the body for ``model``."""
    routes = routes_of(
        """\
routes:
  - name: chat
    match: {paths: [/v1/chat/completions], headers: {x-tenant: beta}}
    weights: {legacy: 1}
  - name: default
    weights: {relay: 1}
"""
    )
    model = Model("gpt-4.1")

    for path in ("/v1/chat/completions", "/v1/embeddings"):
        match_route(routes, path, Headers(x_tenant="beta"), model)
        match_route(routes, path, Headers(), model)

    assert model.calls == 0


def test_model_is_read_once_when_a_route_needs_it() -> None:
    """A route whose paths and headers match reads the model, once."""
    model = Model("claude-3-opus")

    route = match_route(
        routes_of(ROUTES), "/v1/chat/completions", Headers(x_tenant="beta", x_region="eu"), model
    )

    assert route is not None
    assert route.name == "chat-beta"
    assert model.calls == 1


# --- pick without a key ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "backend", "expected", "tolerance", "draws"),
    [
        pytest.param({"legacy": 90, "relay": 10}, "relay", 10.0, 1.0, 10_000, id="90-10"),
        pytest.param({"legacy": 9, "relay": 1}, "relay", 10.0, 1.0, 10_000, id="units-free"),
        pytest.param({"legacy": 99.5, "relay": 0.5}, "relay", 0.5, 0.15, 100_000, id="decimals"),
        pytest.param({"a": 50, "b": 30, "c": 20}, "c", 20.0, 1.0, 10_000, id="three-backends"),
    ],
)
def test_weighted_picks_hold_the_configured_split(
    weights: dict[str, float], backend: str, expected: float, tolerance: float, draws: int
) -> None:
    """Per-request picks with a seeded RNG land within the tolerance of the configured share."""
    rng = random.Random(20240601)

    picks = [pick(weights, None, rng) for _ in range(draws)]

    assert set(picks) == set(weights)
    assert share(picks, backend) == pytest.approx(expected, abs=tolerance)


@pytest.mark.parametrize(
    "weights",
    [
        pytest.param({"legacy": 0, "relay": 100}, id="first-zero"),
        pytest.param({"legacy": 100, "relay": 0}, id="last-zero"),
        pytest.param({"a": 0, "b": 10, "c": 0}, id="both-ends-zero"),
    ],
)
@pytest.mark.parametrize(
    "draw",
    [
        pytest.param(0.0, id="lowest-draw"),
        pytest.param(0.5, id="middle-draw"),
        pytest.param(1.0 - 2**-53, id="highest-draw"),
    ],
)
def test_zero_weight_backend_is_never_picked(weights: dict[str, float], draw: float) -> None:
    """A backend at weight 0 is never chosen, even at the extreme draws of the RNG."""
    chosen = {name for name, w in weights.items() if w > 0}

    assert pick(weights, None, FixedRandom(draw)) in chosen
    assert set(sticky(weights, KEYS[:2000])) == chosen
    rng = random.Random(7)
    assert {pick(weights, None, rng) for _ in range(2000)} == chosen


# --- sticky picks ------------------------------------------------------------------------


def test_same_key_always_gets_the_same_backend() -> None:
    """A sticky key maps to one backend whatever the RNG's state, and leaves the RNG alone."""
    weights = {"legacy": 50, "relay": 50}
    rng = random.Random(1)
    state = rng.getstate()

    first = [pick(weights, key, rng) for key in KEYS[:5000]]
    again = [pick(weights, key, random.Random(99)) for key in KEYS[:5000]]

    assert first == again
    assert rng.getstate() == state
    assert set(first) == {"legacy", "relay"}


# Tolerances are about three standard errors of 10,000 fixed buckets plus 20,000 sampled keys,
# except the 90/10 case, which must hold within one point.
@pytest.mark.parametrize(
    ("weights", "backend", "expected", "tolerance"),
    [
        pytest.param({"legacy": 90, "relay": 10}, "relay", 10.0, 1.0, id="90-10"),
        pytest.param({"legacy": 50, "relay": 50}, "relay", 50.0, 1.8, id="50-50"),
        pytest.param({"legacy": 99.5, "relay": 0.5}, "relay", 0.5, 0.3, id="decimals"),
        pytest.param({"a": 50, "b": 30, "c": 20}, "c", 20.0, 1.5, id="three-backends"),
    ],
)
def test_sticky_split_over_many_keys_holds_the_weights(
    weights: dict[str, float], backend: str, expected: float, tolerance: float
) -> None:
    """Over 20,000 distinct keys, the sticky split lands within the tolerance of the weights."""
    assert share(sticky(weights), backend) == pytest.approx(expected, abs=tolerance)


def test_raising_the_canary_weight_only_moves_keys_onto_it() -> None:
    """As relay goes 10 -> 20 -> 50 -> 90, no key ever leaves relay; keys only move onto it."""
    steps = [sticky({"legacy": 100 - r, "relay": r}) for r in (10, 20, 50, 90)]

    for before, after in itertools.pairwise(steps):
        moved_off = [k for k, b, a in zip(KEYS, before, after, strict=True) if b == "relay" != a]
        moved_on = [k for k, b, a in zip(KEYS, before, after, strict=True) if b != "relay" == a]
        assert moved_off == []
        assert moved_on  # not vacuous: each step moves some keys


def test_raising_relay_with_legacy_unchanged_only_moves_keys_onto_it() -> None:
    """With legacy's weight fixed at 90, raising relay never moves a key from relay to legacy."""
    steps = [sticky({"legacy": 90, "relay": r}) for r in (10, 20, 50, 90)]

    for before, after in itertools.pairwise(steps):
        assert all(a in (b, "relay") for b, a in zip(before, after, strict=True))
        assert before != after


@pytest.mark.parametrize(
    ("start", "raised", "backend"),
    [
        pytest.param({"a": 50, "b": 30, "c": 20}, [40, 80, 500], "c", id="raise-c"),
        pytest.param({"a": 50, "b": 30, "c": 20}, [31, 60, 1000], "b", id="raise-b"),
        pytest.param({"a": 10, "b": 45, "c": 45}, [20, 45, 90], "a", id="raise-a"),
        pytest.param({"a": 50, "b": 50, "c": 0}, [0.5, 5, 50], "c", id="from-zero"),
    ],
)
def test_raising_one_of_three_weights_only_moves_keys_onto_it(
    start: dict[str, float], raised: list[float], backend: str
) -> None:
    """With three backends, raising one backend's weight moves keys only onto that backend."""
    steps = [sticky(start)] + [sticky({**start, backend: w}) for w in raised]

    for before, after in itertools.pairwise(steps):
        assert all(a in (b, backend) for b, a in zip(before, after, strict=True))
        assert before != after


@pytest.mark.parametrize("seed", ["0", "12345"])
def test_bucket_of_and_sticky_picks_are_stable_across_processes(seed: str) -> None:
    """Another process, with another hash seed, puts each key in the same bucket and backend."""
    keys = ["user-1", "user-42", "", "ünïcode-ключ", "a" * 1000]
    weights = {"legacy": 90, "relay": 10}
    code = (
        "import json, random, sys\n"
        "from canary.proxy.router import bucket_of, pick\n"
        "keys, weights = json.loads(sys.argv[1]), json.loads(sys.argv[2])\n"
        "print(json.dumps({'buckets': [bucket_of(k) for k in keys],\n"
        "                  'backends': [pick(weights, k, random.Random()) for k in keys]}))\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(keys), json.dumps(weights)],
        env={**os.environ, "PYTHONHASHSEED": seed},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )

    buckets = [bucket_of(k) for k in keys]
    backends = [pick(weights, k, random.Random()) for k in keys]
    assert json.loads(result.stdout) == {"buckets": buckets, "backends": backends}
    assert all(0 <= bucket < BUCKETS for bucket in buckets)


def test_a_path_ending_in_star_matches_as_a_prefix() -> None:
    """``/v1/messages*`` takes /v1/messages and /v1/messages/count_tokens, nothing else."""
    routes = routes_of(
        "routes:\n  - name: claude\n    match: {paths: ['/v1/messages*', /v1/x]}\n"
        + "    weights: {relay: 1}\n  - name: default\n    weights: {legacy: 1}\n"
    )
    names = {
        path: match_route(routes, path, lambda _: None, lambda: None).name  # type: ignore[union-attr]
        for path in ("/v1/messages", "/v1/messages/count_tokens", "/v1/x", "/v1/x/y", "/v1/chat")
    }
    assert names == {
        "/v1/messages": "claude",
        "/v1/messages/count_tokens": "claude",
        "/v1/x": "claude",
        "/v1/x/y": "default",
        "/v1/chat": "default",
    }
