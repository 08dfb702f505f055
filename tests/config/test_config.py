"""routes.yaml: the SPEC example, ${VAR} expansion, located errors, hostile files, secrets."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from canary.config.loader import MAX_FILE_BYTES, load_config, parse_config
from canary.config.model import (
    DEFAULT_MAX_BODY_BYTES,
    Auth,
    Config,
    Match,
    Price,
    Readiness,
    Retry,
    Rollback,
    Server,
    State,
    Sticky,
    digest,
    redact_url,
)
from canary.errors import ConfigError, ConfigProblem

# SPEC section 2, verbatim.
SPEC_EXAMPLE = """\
backends:
  legacy:
    base_url: ${LEGACY_BASE_URL:-http://127.0.0.1:9101/v1}
    api_key: ${LEGACY_API_KEY:-}          # sent upstream as Bearer; never logged
    max_concurrency: 50                   # in-flight requests to this backend
    max_qps: 100                          # request starts per second
    timeout_s: 120                        # wait for response headers, and for
                                          # each next chunk of a stream
    model_map: {}                         # client model -> upstream model name
  relay:
    base_url: ${RELAY_BASE_URL:-http://127.0.0.1:9102/v1}
    api_key: ${RELAY_API_KEY:-}
    max_concurrency: 50
    max_qps: 100

routes:                                   # first match wins
  - name: chat
    match:
      paths: [/v1/chat/completions]       # exact paths; omitted = any
      models: [gpt-4.1, "claude-*"]       # glob on body "model"; omitted = any
      headers: {x-tenant: beta}           # all must match; omitted = none
    weights: {legacy: 90, relay: 10}      # integers or decimals, any sum > 0
    baseline: legacy                      # where rollback and fallback send traffic;
                                          # omitted = the first backend in weights
    sticky: header:x-user-id              # or body:user; omitted = per request
    fallback: true                        # retry a failed canary call on baseline
  - name: default
    weights: {legacy: 100}

rollback:
  window_s: 60            # sliding window for error rates
  min_requests: 100       # no verdict below this many calls in the window
  max_error_rate: 0.05    # trip when a non-baseline backend's rate exceeds it
  open_s: 300             # stay rolled back this long before probing
  probe_requests: 10      # calls let through half-open before closing again
  auto_resume: true       # false: stay rolled back until routes.yaml changes

readiness:                # "ready for full migration"
  min_requests: 500
  max_error_rate: 0.05

retry:
  max_attempts: 3         # per backend, on 429/502/503/504 and connect errors
  backoff_s: 0.5          # exponential with jitter; honours Retry-After
  budget: 0.2             # retries may add at most this share of traffic

state:
  redis_url: ${REDIS_URL:-}   # empty: in-process state; set: shared by replicas

auth:
  api_keys: ${CANARY_API_KEYS:-}      # comma-separated client keys; empty = open
  admin_token: ${CANARY_ADMIN_TOKEN:-}

pricing:                  # USD per million tokens, for cost and ROI
  legacy: {gpt-4.1: {input: 8.00, output: 8.00}}
  relay:  {gpt-4.1: {input: 1.10, output: 1.10}}
"""

# Distinctive secrets, so a leak is found by a plain substring search.
SECRET_ENV = {
    "LEGACY_API_KEY": "sk-legacy-SECRET-1a2b",
    "RELAY_API_KEY": "sk-relay-SECRET-3c4d",
    "REDIS_URL": "redis://default:redis-SECRET-5e6f@cache.internal:6379/0",
    "CANARY_API_KEYS": "client-SECRET-7a8b, client-SECRET-9c0d",
    "CANARY_ADMIN_TOKEN": "admin-SECRET-e1f2",
}
SECRETS = {
    "sk-legacy-SECRET-1a2b",
    "sk-relay-SECRET-3c4d",
    "redis-SECRET-5e6f",
    "client-SECRET-7a8b",
    "client-SECRET-9c0d",
    "admin-SECRET-e1f2",
}

# Building blocks whose line numbers the error cases below rely on.
BACKENDS = """\
backends:
  legacy:
    base_url: http://127.0.0.1:9101/v1
  relay:
    base_url: http://127.0.0.1:9102/v1
"""
ROUTE = BACKENDS + "routes:\n  - name: chat\n"  # the route's own keys start on line 8
WEIGHTS = "    weights: {legacy: 90, relay: 10}\n"
VALID = ROUTE + WEIGHTS  # 8 lines; a top-level section appended starts on line 9
LEGACY = """\
routes:
  - name: chat
    weights: {legacy: 90, relay: 10}
backends:
  relay:
    base_url: http://127.0.0.1:9102/v1
  legacy:
"""  # legacy's own keys start on line 8
LEGACY_URL = "    base_url: http://127.0.0.1:9101/v1\n"

MINIMAL = """\
backends:
  only:
    base_url: http://127.0.0.1:9101/v1
routes:
  - name: all
    weights: {only: 1}
"""


def parse(text: str | bytes, env: Mapping[str, str] | None = None) -> Config:
    raw = text.encode() if isinstance(text, str) else text
    return parse_config(raw, "routes.yaml", environ={} if env is None else env)


def problems_of(text: str | bytes, env: Mapping[str, str] | None = None) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        parse(text, env)
    assert str(info.value) == "\n".join(str(p) for p in info.value.problems)
    return info.value.problems


# --- the SPEC example and defaults -------------------------------------------------------


def test_spec_example_parses_into_typed_values() -> None:
    """The whole SPEC section 2 example parses, with every default expanded, into typed values."""
    config = parse(SPEC_EXAMPLE)

    legacy, relay = config.backends["legacy"], config.backends["relay"]
    assert list(config.backends) == ["legacy", "relay"]
    assert (legacy.name, legacy.base_url, legacy.api_key) == (
        "legacy",
        "http://127.0.0.1:9101/v1",
        "",
    )
    assert (legacy.max_concurrency, legacy.max_qps, legacy.timeout_s) == (50, 100.0, 120.0)
    assert isinstance(legacy.max_concurrency, int)
    assert dict(legacy.model_map) == {}
    assert (relay.base_url, relay.api_key) == ("http://127.0.0.1:9102/v1", "")
    assert (relay.max_concurrency, relay.max_qps, relay.timeout_s) == (50, 100.0, 120.0)

    chat, default = config.routes
    assert chat.name == "chat"
    assert chat.match == Match(
        paths=frozenset({"/v1/chat/completions"}),
        models=("gpt-4.1", "claude-*"),
        headers=(("x-tenant", "beta"),),
    )
    assert chat.match.model_pattern is not None
    assert dict(chat.weights) == {"legacy": 90.0, "relay": 10.0}
    assert chat.baseline == "legacy"
    assert chat.sticky == Sticky("header", "x-user-id")
    assert chat.fallback is True
    assert default.name == "default"
    assert default.match == Match()
    assert dict(default.weights) == {"legacy": 100.0}
    assert (default.baseline, default.sticky, default.fallback) == ("legacy", None, False)

    assert config.rollback == Rollback(
        window_s=60, min_requests=100, max_error_rate=0.05, open_s=300, probe_requests=10
    )
    assert config.rollback.auto_resume is True
    assert config.readiness == Readiness(min_requests=500, max_error_rate=0.05)
    assert config.retry == Retry(max_attempts=3, backoff_s=0.5, budget=0.2)
    assert config.state == State(redis_url="")
    assert config.auth == Auth()
    assert config.secrets() == frozenset()
    assert {b: dict(models) for b, models in config.pricing.items()} == {
        "legacy": {"gpt-4.1": Price(input=8.0, output=8.0)},
        "relay": {"gpt-4.1": Price(input=1.1, output=1.1)},
    }
    assert config.server == Server(max_body_bytes=DEFAULT_MAX_BODY_BYTES)
    assert (config.path, config.version) == (
        "routes.yaml",
        hashlib.sha256(SPEC_EXAMPLE.encode()).hexdigest(),
    )


def test_spec_example_takes_values_from_the_environment() -> None:
    """With the SPEC's variables set, URLs, keys, Redis URL and client keys come from them."""
    env = {
        **SECRET_ENV,
        "LEGACY_BASE_URL": "https://legacy.example.com/v1/",
        "RELAY_BASE_URL": "https://relay.example.com/openai/v1",
    }
    config = parse(SPEC_EXAMPLE, env)

    assert config.backends["legacy"].base_url == "https://legacy.example.com/v1"
    assert config.backends["legacy"].api_key == "sk-legacy-SECRET-1a2b"
    assert config.backends["relay"].base_url == "https://relay.example.com/openai/v1"
    assert config.backends["relay"].api_key == "sk-relay-SECRET-3c4d"
    assert config.state.redis_url == SECRET_ENV["REDIS_URL"]
    assert set(config.auth.api_key_digests) == {
        digest("client-SECRET-7a8b"),
        digest("client-SECRET-9c0d"),
    }
    assert config.auth.admin_token_digest == digest("admin-SECRET-e1f2")


def test_minimal_config_gets_defaults_for_everything_omitted() -> None:
    """One backend and one route are enough; every optional section and key takes its default."""
    config = parse(MINIMAL)

    (backend,) = config.backends.values()
    assert (backend.name, backend.api_key, backend.max_concurrency, backend.max_qps) == (
        "only",
        "",
        None,
        None,
    )
    assert (backend.timeout_s, dict(backend.model_map)) == (120.0, {})
    (route,) = config.routes
    assert route.match == Match(paths=None, models=None, headers=())
    assert route.match.model_pattern is None
    assert (route.baseline, route.sticky, route.fallback) == ("only", None, False)
    assert config.rollback == Rollback()
    assert config.readiness == Readiness()
    assert config.retry == Retry()
    assert config.state == State()
    assert config.auth == Auth()
    assert dict(config.pricing) == {}
    assert config.server == Server()


def test_baseline_defaults_to_the_first_backend_in_weights() -> None:
    """Without ``baseline``, a route's baseline is the first backend listed in its weights."""
    config = parse(ROUTE + "    weights: {relay: 10, legacy: 90}\n")

    assert config.routes[0].baseline == "relay"


def test_weights_accept_decimals() -> None:
    """Weights may be decimals and are kept as given, in the file's units."""
    config = parse(ROUTE + "    weights: {legacy: 99.5, relay: 0.5}\n")

    assert dict(config.routes[0].weights) == {"legacy": 99.5, "relay": 0.5}


def test_version_is_the_sha256_of_the_file_bytes(tmp_path: Path) -> None:
    """``version`` is the SHA-256 of the bytes read, so even a comment edit changes it."""
    path = tmp_path / "routes.yaml"
    path.write_bytes(VALID.encode())
    edited = VALID + "# a comment\n"

    config = load_config(path, environ={})

    assert config.version == hashlib.sha256(VALID.encode()).hexdigest()
    assert config.path == str(path)
    assert parse(edited).version == hashlib.sha256(edited.encode()).hexdigest()
    assert parse(edited).version != config.version


# --- ${VAR} expansion --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "env", "expected"),
    [
        pytest.param("${KEY}", {"KEY": "sk-set"}, "sk-set", id="plain-set"),
        pytest.param("${KEY}", {"KEY": ""}, "", id="plain-empty"),
        pytest.param("${KEY:-fallback}", {"KEY": "sk-set"}, "sk-set", id="default-set"),
        pytest.param("${KEY:-fallback}", {}, "fallback", id="default-unset"),
        pytest.param("${KEY:-fallback}", {"KEY": ""}, "fallback", id="default-empty"),
        pytest.param("${KEY:-}", {}, "", id="empty-default-unset"),
        pytest.param("pre-${KEY}-post", {"KEY": "mid"}, "pre-mid-post", id="embedded"),
        pytest.param('"${KEY:-fall#back}"', {}, "fall#back", id="quoted-default"),
    ],
)
def test_variables_expand_from_the_environment(
    reference: str, env: dict[str, str], expected: str
) -> None:
    """``${VAR}`` takes the variable's value; ``${VAR:-default}`` also covers unset and empty."""
    config = parse(LEGACY + LEGACY_URL + f"    api_key: {reference}\n", env)

    assert config.backends["legacy"].api_key == expected


def test_a_quoted_default_keeps_its_spaces() -> None:
    """``"${VAR:-two words}"`` expands to the default with its space (in a field that may
    hold one: an upstream key may not, see below)."""
    text = VALID + '    match: {headers: {x-tenant: "${TENANT:-two words}"}}\n'

    assert parse(text).routes[0].match.headers == (("x-tenant", "two words"),)


def test_several_variables_expand_inside_one_value() -> None:
    """Several references in one scalar all expand, each with its own default."""
    text = BACKENDS.replace(
        "http://127.0.0.1:9101/v1", "http://${HOST:-127.0.0.1}:${PORT:-9101}/v1"
    )
    config = parse(text + "routes:\n  - name: chat\n" + WEIGHTS, {"PORT": "9201"})

    assert config.backends["legacy"].base_url == "http://127.0.0.1:9201/v1"


def test_unset_variable_without_default_names_the_variable_and_line() -> None:
    """An unset ``${VAR}`` with no default is an error naming the variable, line and key path."""
    problems = problems_of(LEGACY + LEGACY_URL + "    api_key: ${LEGACY_API_KEY}\n", {"OTHER": "x"})

    assert [(p.line, p.path) for p in problems] == [(9, "backends.legacy.api_key")]
    assert "LEGACY_API_KEY" in problems[0].message
    assert str(problems[0]).startswith("routes.yaml:9: backends.legacy.api_key: ")


def test_plain_scalar_expansion_is_retyped() -> None:
    """A plain ``${VAR:-default}`` is typed as YAML would type the expanded text."""
    text = (
        LEGACY
        + LEGACY_URL
        + "    max_concurrency: ${CONC:-50}\n    max_qps: ${QPS:-100}\n"
        + "rollback:\n  min_requests: ${MIN:-100}\n  auto_resume: ${AUTO:-true}\n"
    )

    defaults = parse(text)
    overridden = parse(text, {"CONC": "7", "QPS": "2.5", "MIN": "250", "AUTO": "false"})

    legacy = defaults.backends["legacy"]
    assert (legacy.max_concurrency, legacy.max_qps) == (50, 100.0)
    assert isinstance(legacy.max_concurrency, int)
    assert (defaults.rollback.min_requests, defaults.rollback.auto_resume) == (100, True)
    legacy = overridden.backends["legacy"]
    assert (legacy.max_concurrency, legacy.max_qps) == (7, 2.5)
    assert (overridden.rollback.min_requests, overridden.rollback.auto_resume) == (250, False)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("007", id="leading-zero"),
        pytest.param("1_000", id="underscore"),
        pytest.param("0x1F", id="hex"),
        pytest.param("12.50", id="decimal"),
        pytest.param("1:30", id="sexagesimal"),
        pytest.param("yes", id="yaml11-bool"),
        pytest.param("null", id="null"),
        pytest.param("~", id="tilde"),
    ],
)
@pytest.mark.parametrize(
    "quoted", [pytest.param(False, id="plain"), pytest.param(True, id="quoted")]
)
def test_secret_from_environment_is_kept_verbatim(value: str, quoted: bool) -> None:
    """A key whose text looks like a YAML number, bool or null reaches the config unchanged."""
    ref = '"${KEY}"' if quoted else "${KEY}"
    text = LEGACY + LEGACY_URL + f"    api_key: {ref}\nauth:\n  admin_token: {ref}\n"

    config = parse(text, {"KEY": value})

    assert config.backends["legacy"].api_key == value
    assert config.auth.admin_token_digest == digest(value)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("a: b\n- c", id="mapping-and-list"),
        pytest.param("x\nmax_qps: 1\ntimeout_s: 5", id="sibling-keys"),
        pytest.param("{evil: 1}", id="flow-mapping"),
        pytest.param("*anchor", id="alias"),
    ],
)
def test_environment_value_cannot_inject_structure(value: str) -> None:
    """An environment value holding YAML syntax is one string: it adds no keys or items."""
    text = LEGACY + LEGACY_URL + "    api_key: ${KEY}\n"
    if " " in value or "\n" in value:  # a key with a newline or a space is refused as such,
        found = problems_of(text, {"KEY": value})  # and adds nothing else
        message = "contains a control character" if "\n" in value else "has whitespace inside"
        assert [p.path for p in found] == ["backends.legacy.api_key"]
        assert found[0].message.startswith(message)
        return

    config = parse(text, {"KEY": value})

    legacy = config.backends["legacy"]
    assert legacy.api_key == value
    assert (legacy.max_qps, legacy.timeout_s, legacy.max_concurrency) == (None, 120.0, None)


def test_environment_value_in_a_number_field_cannot_inject_structure() -> None:
    """YAML syntax from the environment in a number field is a bad number, not new keys."""
    text = ROUTE + "    weights:\n      legacy: 90\n      relay: ${W}\n"

    problems = problems_of(text, {"W": "1\n      extra: 5"})

    assert [(p.line, p.path) for p in problems] == [(10, "routes[0].weights.relay")]
    assert problems[0].message == "must be a number, not a string"


def test_environment_value_is_not_expanded_again_through_an_alias() -> None:
    """A value that itself reads ``${OTHER}`` is taken literally, also where an alias repeats it."""
    text = """\
routes:
  - name: chat
    weights: {legacy: 90, relay: 10}
backends:
  legacy:
    base_url: http://127.0.0.1:9101/v1
    api_key: &key ${KEY}
  relay:
    base_url: http://127.0.0.1:9102/v1
    api_key: *key
"""
    config = parse(text, {"KEY": "${ADMIN}", "ADMIN": "admin-SECRET"})

    assert config.backends["legacy"].api_key == "${ADMIN}"
    assert config.backends["relay"].api_key == "${ADMIN}"


# --- located errors ----------------------------------------------------------------------

ERROR_CASES = [
    # unknown keys, at every level
    pytest.param(VALID + "extras: 1\n", 9, "extras", "unknown key", id="unknown-top"),
    pytest.param(
        LEGACY + LEGACY_URL + "    api_token: sk-x\n",
        9,
        "backends.legacy.api_token",
        "unknown key",
        id="unknown-backend-key",
    ),
    pytest.param(
        VALID + "    priority: 1\n", 9, "routes[0].priority", "unknown key", id="unknown-route-key"
    ),
    pytest.param(
        VALID + "    match:\n      path: [/v1/chat/completions]\n",
        10,
        "routes[0].match.path",
        "unknown key",
        id="unknown-match-key",
    ),
    pytest.param(
        VALID + "rollback:\n  window: 60\n",
        10,
        "rollback.window",
        "unknown key",
        id="unknown-rollback-key",
    ),
    pytest.param(
        VALID + "readiness:\n  min_request: 5\n",
        10,
        "readiness.min_request",
        "unknown key",
        id="unknown-readiness-key",
    ),
    pytest.param(
        VALID + "retry:\n  attempts: 3\n",
        10,
        "retry.attempts",
        "unknown key",
        id="unknown-retry-key",
    ),
    pytest.param(
        VALID + "state:\n  redis: redis://cache:6379\n",
        10,
        "state.redis",
        "unknown key",
        id="unknown-state-key",
    ),
    pytest.param(
        VALID + "auth:\n  token: x\n", 10, "auth.token", "unknown key", id="unknown-auth-key"
    ),
    pytest.param(
        VALID + "pricing:\n  relay:\n    gpt-4.1: {input: 1, output: 1, cached: 0.5}\n",
        11,
        "pricing.relay.gpt-4.1.cached",
        "unknown key",
        id="unknown-price-key",
    ),
    pytest.param(
        VALID + "server:\n  max_body: 5\n",
        10,
        "server.max_body",
        "unknown key",
        id="unknown-server-key",
    ),
    # unknown backend names
    pytest.param(
        ROUTE + "    weights: {legacy: 90, relya: 10}\n",
        8,
        "routes[0].weights.relya",
        "unknown backend 'relya'",
        id="unknown-backend-in-weights",
    ),
    pytest.param(
        VALID + "    baseline: legacyy\n",
        9,
        "routes[0].baseline",
        "unknown backend 'legacyy'",
        id="unknown-backend-as-baseline",
    ),
    pytest.param(
        VALID + "pricing:\n  relya: {gpt-4.1: {input: 1, output: 1}}\n",
        10,
        "pricing.relya",
        "unknown backend 'relya'",
        id="unknown-backend-in-pricing",
    ),
    # negative numbers
    pytest.param(
        ROUTE + "    weights: {legacy: 90, relay: -1}\n",
        8,
        "routes[0].weights.relay",
        "must be >= 0",
        id="negative-weight",
    ),
    pytest.param(
        LEGACY + LEGACY_URL + "    max_qps: -5\n",
        9,
        "backends.legacy.max_qps",
        "must be > 0",
        id="negative-max-qps",
    ),
    pytest.param(
        VALID + "rollback:\n  max_error_rate: -0.1\n",
        10,
        "rollback.max_error_rate",
        "must be >= 0",
        id="negative-error-rate",
    ),
    pytest.param(
        VALID + "pricing:\n  relay: {gpt-4.1: {input: -1, output: 1}}\n",
        10,
        "pricing.relay.gpt-4.1.input",
        "must be >= 0",
        id="negative-price",
    ),
    # non-finite numbers
    pytest.param(
        ROUTE + "    weights: {legacy: .inf, relay: 10}\n",
        8,
        "routes[0].weights.legacy",
        "must be a finite number",
        id="infinite-weight",
    ),
    pytest.param(
        LEGACY + LEGACY_URL + "    timeout_s: -.inf\n",
        9,
        "backends.legacy.timeout_s",
        "must be a finite number",
        id="minus-infinite-timeout",
    ),
    pytest.param(
        VALID + "rollback:\n  max_error_rate: .nan\n",
        10,
        "rollback.max_error_rate",
        "must be a finite number",
        id="nan-error-rate",
    ),
    pytest.param(
        VALID + "retry:\n  backoff_s: .NaN\n",
        10,
        "retry.backoff_s",
        "must be a finite number",
        id="nan-backoff",
    ),
    # absurd numbers
    pytest.param(
        ROUTE + "    weights: {legacy: 90, relay: 1000001}\n",
        8,
        "routes[0].weights.relay",
        "must be <= 1000000",
        id="absurd-weight",
    ),
    pytest.param(
        LEGACY + LEGACY_URL + "    max_concurrency: 5000000\n",
        9,
        "backends.legacy.max_concurrency",
        "must be <= 1000000",
        id="absurd-concurrency",
    ),
    pytest.param(
        LEGACY + LEGACY_URL + "    max_qps: 1.0e+9\n",
        9,
        "backends.legacy.max_qps",
        "must be <= 1000000",
        id="absurd-qps",
    ),
    pytest.param(
        VALID + "rollback:\n  min_requests: 10000000\n",
        10,
        "rollback.min_requests",
        "must be <= 1000000",
        id="absurd-min-requests",
    ),
    pytest.param(
        VALID + "pricing:\n  relay: {gpt-4.1: {input: 1, output: 2000000}}\n",
        10,
        "pricing.relay.gpt-4.1.output",
        "must be <= 1000000",
        id="absurd-price",
    ),
    # weights and baseline
    pytest.param(
        ROUTE + "    weights: {legacy: 0, relay: 0}\n",
        8,
        "routes[0].weights",
        "must not all be zero",
        id="all-zero-weights",
    ),
    pytest.param(ROUTE + "    weights: {}\n", 8, "routes[0].weights", "", id="empty-weights"),
    pytest.param(
        ROUTE + "    fallback: true\n", 7, "routes[0].weights", "is required", id="missing-weights"
    ),
    pytest.param(
        ROUTE + "    weights: {legacy: 100}\n    baseline: relay\n",
        9,
        "routes[0].baseline",
        "'relay' is not in this route's weights",
        id="baseline-not-in-weights",
    ),
    # bad globs and paths
    pytest.param(
        VALID + '    match:\n      models: [gpt-4.1, "claude-[3"]\n',
        10,
        "routes[0].match.models[1]",
        "bad glob 'claude-[3'",
        id="unbalanced-glob",
    ),
    pytest.param(
        VALID + "    match:\n      paths: [v1/chat/completions]\n",
        10,
        "routes[0].match.paths[0]",
        "must start with '/'",
        id="relative-path",
    ),
    # bad types
    pytest.param(
        LEGACY + LEGACY_URL + "    max_qps: fast\n",
        9,
        "backends.legacy.max_qps",
        "must be a number, not a string",
        id="string-for-number",
    ),
    pytest.param(
        ROUTE + "    weights: {legacy: ninety, relay: 10}\n",
        8,
        "routes[0].weights.legacy",
        "must be a number, not a string",
        id="string-for-weight",
    ),
    pytest.param(
        LEGACY + LEGACY_URL + "    max_concurrency: true\n",
        9,
        "backends.legacy.max_concurrency",
        "must be a number, not a boolean",
        id="bool-for-number",
    ),
    pytest.param(
        VALID + "retry:\n  max_attempts: yes\n",
        10,
        "retry.max_attempts",
        "must be a number, not a boolean",
        id="yaml11-bool-for-number",
    ),
    pytest.param(
        LEGACY + LEGACY_URL + "    max_concurrency: 2.5\n",
        9,
        "backends.legacy.max_concurrency",
        "must be a whole number",
        id="fraction-for-integer",
    ),
    pytest.param(
        VALID + "rollback: [60, 100]\n",
        9,
        "rollback",
        "must be a mapping, not a list",
        id="list-for-mapping",
    ),
    pytest.param(
        ROUTE + "    weights: [legacy, relay]\n",
        8,
        "routes[0].weights",
        "must be a mapping, not a list",
        id="list-for-weights",
    ),
    pytest.param(
        BACKENDS + "routes: {chat: {weights: {legacy: 1}}}\n",
        6,
        "routes",
        "must be a non-empty list",
        id="mapping-for-routes",
    ),
    pytest.param(
        VALID + "    fallback: 1\n",
        9,
        "routes[0].fallback",
        "must be true or false, not int",
        id="number-for-bool",
    ),
    pytest.param(
        LEGACY + LEGACY_URL + "    api_key: {value: x}\n",
        9,
        "backends.legacy.api_key",
        "must be a string, not a mapping",
        id="mapping-for-string",
    ),
    # names, sticky, URLs
    pytest.param(
        VALID + "  - name: chat\n    weights: {legacy: 100}\n",
        9,
        "routes[1].name",
        "duplicate route name 'chat'",
        id="duplicate-route-name",
    ),
    pytest.param(
        VALID + "    sticky: cookie:session\n",
        9,
        "routes[0].sticky",
        "must be 'header:NAME' or 'body:FIELD'",
        id="sticky-unknown-source",
    ),
    pytest.param(
        VALID + '    sticky: "header:"\n',
        9,
        "routes[0].sticky",
        "must be 'header:NAME' or 'body:FIELD'",
        id="sticky-without-name",
    ),
    pytest.param(
        VALID + "    sticky: user\n",
        9,
        "routes[0].sticky",
        "must be 'header:NAME' or 'body:FIELD'",
        id="sticky-without-source",
    ),
    pytest.param(
        LEGACY + "    base_url: ftp://files.example.com/v1\n",
        8,
        "backends.legacy.base_url",
        "must be an http:// or https:// URL with a host",
        id="base-url-scheme",
    ),
    pytest.param(
        LEGACY + "    base_url: http:///v1\n",
        8,
        "backends.legacy.base_url",
        "must be an http:// or https:// URL with a host",
        id="base-url-without-host",
    ),
    pytest.param(
        LEGACY + "    base_url: 127.0.0.1:9101/v1\n",
        8,
        "backends.legacy.base_url",
        "must be an http:// or https:// URL with a host",
        id="base-url-without-scheme",
    ),
    pytest.param(
        LEGACY + "    max_qps: 5\n",
        7,
        "backends.legacy.base_url",
        "is required",
        id="base-url-missing",
    ),
    pytest.param(
        VALID + "state:\n  redis_url: http://cache:6379\n",
        10,
        "state.redis_url",
        "must be a redis://, rediss:// or unix:// URL",
        id="redis-url-scheme",
    ),
]


@pytest.mark.parametrize(("text", "line", "path", "message"), ERROR_CASES)
def test_error_names_file_line_and_key_path(text: str, line: int, path: str, message: str) -> None:
    """Each invalid value is one problem naming the file, its line and its key path."""
    problems = problems_of(text)

    assert [(p.file, p.line, p.path) for p in problems] == [("routes.yaml", line, path)]
    assert message in problems[0].message
    assert str(problems[0]) == f"routes.yaml:{line}: {path}: {problems[0].message}"


def test_error_string_has_the_documented_form() -> None:
    """A problem reads ``file:line: key.path: message``, exactly as SPEC shows it."""
    problems = problems_of(ROUTE + "    weights: {legacy: 90, relay: -1}\n")

    assert [str(p) for p in problems] == ["routes.yaml:8: routes[0].weights.relay: must be >= 0"]


def test_all_problems_are_reported_at_once_sorted_by_line() -> None:
    """Every problem in a file is reported in one error, in line order, not validation order."""
    text = """\
rollback:
  window_s: -1
backends:
  legacy:
    base_url: ftp://legacy
routes:
  - name: chat
    weights: {legacy: -1}
    sticky: cookie:x
pricing:
  nobody: {}
"""
    problems = problems_of(text)

    assert [(p.line, p.path) for p in problems] == [
        (2, "rollback.window_s"),
        (5, "backends.legacy.base_url"),
        (8, "routes[0].weights.legacy"),
        (9, "routes[0].sticky"),
        (11, "pricing.nobody"),
    ]


# --- files that are not a config at all ---------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "line", "message"),
    [
        pytest.param(b"", None, "file is empty", id="empty"),
        pytest.param(b"  \n\n\t \n", None, "file is empty", id="whitespace"),
        pytest.param(b"# nothing but a comment\n", None, "holds no YAML document", id="comment"),
        pytest.param(b"backends:\n  legacy: \xff\n", None, "not valid UTF-8 (byte 20)", id="utf8"),
        pytest.param(b"backends:\n\tlegacy: 1\n", 2, "invalid YAML", id="tab-indent"),
        pytest.param(
            b"backends:\n  legacy:\n    base_url: a: b\n", 3, "invalid YAML", id="bad-mapping"
        ),
        pytest.param(b"routes: [\n  a,\n", 3, "invalid YAML", id="unclosed-flow"),
        pytest.param(b"a: 1\n---\nb: 2\n", 2, "invalid YAML", id="two-documents"),
        pytest.param(b"- backends\n- routes\n", 1, "must be a mapping, not a list", id="list"),
        pytest.param(b"just some text\n", 1, "must be a mapping, not a string", id="scalar"),
        pytest.param(b"a: &a [*a]\n", None, "nested too deeply", id="recursive-alias"),
    ],
)
def test_unusable_file_is_rejected_with_a_clear_message(
    raw: bytes, line: int | None, message: str
) -> None:
    """A file that is empty, not UTF-8, not YAML or not a mapping gets one clear problem."""
    problems = problems_of(raw)

    assert len(problems) == 1
    assert problems[0].line == line
    assert message in problems[0].message


@pytest.mark.timeout(5)
def test_deep_nesting_is_refused_without_exhausting_the_stack() -> None:
    """Brackets nested 50,000 deep are one clear problem, not a crash of the reload."""
    problems = problems_of(b"backends: " + b"[" * 50_000 + b"]" * 50_000 + b"\n")

    # libyaml says "exceeded maximum nesting depth", the pure-Python parser "nested too deeply"
    assert len(problems) == 1
    assert "nest" in problems[0].message


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(lambda tmp: tmp / "missing.yaml", "No such file", id="missing"),
        pytest.param(lambda tmp: tmp, "Is a directory", id="directory"),
    ],
)
def test_unreadable_path_is_rejected_naming_the_file(
    make: Callable[[Path], Path], message: str, tmp_path: Path
) -> None:
    """A missing file or a directory is a ``cannot read`` problem naming the path."""
    path = make(tmp_path)

    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})

    (problem,) = info.value.problems
    assert (problem.file, problem.line) == (str(path), None)
    assert problem.message.startswith("cannot read") and message in problem.message
    assert str(path) in str(info.value)


def test_oversized_file_is_rejected_by_size(tmp_path: Path) -> None:
    """A file over 1 MiB is refused by size, even when its content would be valid."""
    path = tmp_path / "routes.yaml"
    path.write_bytes(VALID.encode() + b"#" * MAX_FILE_BYTES)

    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})

    (problem,) = info.value.problems
    assert f"larger than {MAX_FILE_BYTES} bytes" in problem.message
    assert "larger than" in problems_of(VALID + "#" * MAX_FILE_BYTES)[0].message


@pytest.mark.timeout(5)
def test_alias_bomb_is_stopped_by_the_node_budget() -> None:
    """A billion-laughs alias bomb is refused by the node budget instead of hanging the reload."""
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    lines.append("routes: *i")

    problems = problems_of("\n".join(lines) + "\n")

    assert len(problems) == 1
    assert "YAML nodes" in problems[0].message


# --- secrets -----------------------------------------------------------------------------


@pytest.fixture
def secret_config() -> Config:
    text = SPEC_EXAMPLE.replace(
        "${RELAY_BASE_URL:-http://127.0.0.1:9102/v1}",
        "https://proxy-user:url-SECRET-77aa@relay.example.com/v1",
    )
    return parse(text, SECRET_ENV)


@pytest.mark.parametrize(
    "target",
    [
        pytest.param(lambda c: c, id="config"),
        pytest.param(lambda c: c.backends["legacy"], id="legacy"),
        pytest.param(lambda c: c.backends["relay"], id="relay"),
        pytest.param(lambda c: c.backends, id="backends"),
        pytest.param(lambda c: c.auth, id="auth"),
        pytest.param(lambda c: c.state, id="state"),
    ],
)
def test_secrets_never_appear_in_repr(
    secret_config: Config, target: Callable[[Config], object]
) -> None:
    """Upstream keys, client keys, the admin token and URL credentials are masked in reprs."""
    obj = target(secret_config)

    text = repr(obj) + str(obj)

    leaked = [s for s in (*SECRETS, "url-SECRET-77aa") if s in text]
    assert leaked == []
    assert "SECRET" not in text


def test_repr_still_says_which_secrets_are_set(secret_config: Config) -> None:
    """Masked reprs still show that a key is set and where a backend points."""
    assert "api_key='***'" in repr(secret_config.backends["legacy"])
    assert "https://relay.example.com/v1" in repr(secret_config.backends["relay"])
    assert repr(secret_config.auth) == "Auth(api_keys=2, admin_token=set)"
    assert repr(secret_config.state) == "State(redis_url='redis://cache.internal:6379/0')"


def test_secrets_lists_every_key_for_redaction(secret_config: Config) -> None:
    """``secrets()`` returns every key, token and password, URL credentials included."""
    assert secret_config.secrets() == SECRETS | {"url-SECRET-77aa"}


def test_client_keys_may_be_a_list() -> None:
    """``auth.api_keys`` accepts a YAML list as well as a comma-separated string."""
    config = parse(VALID + "auth:\n  api_keys: [key-one, ' key-two ']\n")

    assert config.auth.api_key_digests == (digest("key-one"), digest("key-two"))
    assert config.secrets() == {"key-one", "key-two"}


# --- upstream keys and the header that carries them ---------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("sk-pasted-1a2b\n", id="trailing-newline"),
        pytest.param("sk-pasted-1a2b\r\n", id="crlf"),
        pytest.param("  sk-pasted-1a2b\t ", id="spaces-and-tab"),
        pytest.param("\u00a0sk-pasted-1a2b\u2003", id="unicode-spaces"),
    ],
)
def test_surrounding_whitespace_of_an_upstream_key_is_stripped(value: str) -> None:
    """A key pasted from a file or a terminal keeps no whitespace around it."""
    config = parse(LEGACY + LEGACY_URL + "    api_key: ${KEY}\n", {"KEY": value})

    assert config.backends["legacy"].api_key == "sk-pasted-1a2b"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("sk-pasted 1a2b", "has whitespace inside it", id="space"),
        pytest.param("sk-pasted\u00a01a2b", "has whitespace inside it", id="no-break-space"),
        pytest.param("sk-pasted\u20131a2b", "non-ASCII character at position 10", id="en-dash"),
        pytest.param(
            "\u201csk-pasted-1a2b\u201d", "non-ASCII character at position 1", id="quotes"
        ),
        pytest.param("sk-pasted\t1a2b", "contains a control character", id="tab"),
    ],
)
def test_a_key_that_cannot_be_sent_is_a_located_error_that_does_not_quote_it(
    value: str, message: str
) -> None:
    """Inner whitespace or a non-ASCII character in an upstream key is an error at its line
    and key path; the message says what is wrong without printing the key."""
    problems = problems_of(LEGACY + LEGACY_URL + "    api_key: ${KEY}\n", {"KEY": value})

    assert [(p.file, p.line, p.path) for p in problems] == [
        ("routes.yaml", 9, "backends.legacy.api_key")
    ]
    assert message in problems[0].message
    text = str(ConfigError(problems))
    assert "pasted" not in text.replace("how it was pasted", "") and "1a2b" not in text


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param(
            "https://user:pw@api.example.com:8443/v1?key=abc#frag",
            "https://api.example.com:8443/v1",
            id="userinfo-query-fragment",
        ),
        pytest.param("redis://:pw@cache:6379/0", "redis://cache:6379/0", id="redis-password"),
        pytest.param("http://[::1]:9101/v1", "http://[::1]:9101/v1", id="ipv6"),
        pytest.param("http://127.0.0.1:9101/v1", "http://127.0.0.1:9101/v1", id="clean"),
        pytest.param("", "", id="empty"),
    ],
)
def test_redact_url_strips_userinfo_query_and_fragment(url: str, expected: str) -> None:
    """``redact_url`` keeps scheme, host, port and path and drops anything that may hold a key."""
    assert redact_url(url) == expected


def test_duplicate_keys_are_errors_not_last_wins() -> None:
    """A key written twice in one mapping is reported where the second one stands."""
    text = ROUTE + "    weights: {legacy: 90, relay: 10, relay: 50}\n"
    assert [str(p) for p in problems_of(text)] == [
        "routes.yaml:8: routes[0].weights.relay: duplicate key"
    ]


def test_unset_variable_is_reported_with_the_other_problems() -> None:
    """An unset ${VAR} does not hide the rest of validation."""
    text = VALID.replace("http://127.0.0.1:9101/v1", "${NOPE}") + "rollback: {window_s: -1}\n"
    found = [str(p) for p in problems_of(text)]
    assert any("environment variable NOPE is not set" in p for p in found)
    assert "routes.yaml:9: rollback.window_s: must be >= 1" in found


def test_header_and_list_values_from_the_environment_stay_verbatim() -> None:
    """``x-tenant: ${TENANT}`` with TENANT=007 matches "007", not YAML's 7."""
    text = (
        ROUTE
        + (
            "    match:\n"
            "      headers:\n"
            "        x-tenant: ${TENANT}\n"
            "      paths: [/v1/chat/completions]\n"
            "      models:\n"
            "        - ${MODEL}\n"
        )
        + WEIGHTS
    )
    config = parse(text, {"TENANT": "007", "MODEL": "0x1F"})
    assert config.routes[0].match.headers == (("x-tenant", "007"),)
    assert config.routes[0].match.models == ("0x1F",)


@pytest.mark.timeout(5)
def test_a_deeply_nested_document_is_rejected_promptly() -> None:
    """20,000 nested lists (40 KB) fail fast with a clear message, not a minutes-long stall."""
    found = problems_of("routes: " + "[" * 20_000 + "]" * 20_000 + "\n")
    assert found


def test_a_quoted_variable_in_a_number_field_is_read_as_a_number() -> None:
    """``{relay: "${W}"}`` (quoted inside a flow mapping) still gives a numeric weight."""
    config = parse(ROUTE + '    weights: {legacy: "${L}", relay: "${W}"}\n', {"L": "7.5", "W": "3"})
    assert config.routes[0].weights == {"legacy": 7.5, "relay": 3}
    found = problems_of(ROUTE + '    weights: {legacy: 1, relay: "${W}"}\n', {"W": "lots"})
    assert [str(p) for p in found] == [
        "routes.yaml:8: routes[0].weights.relay: must be a number, not a string"
    ]


def test_api_key_header_is_one_of_three_and_a_star_only_ends_a_path() -> None:
    """``api_key_header`` names where the backend's key goes; a '*' elsewhere is an error."""
    ok = parse(
        "backends:\n  a: {base_url: 'http://h/v1', api_key_header: X-Api-Key}\n"
        "  b: {base_url: 'http://h/v1'}\n"
        "routes:\n  - name: r\n    match: {paths: ['/v1/messages*']}\n    weights: {a: 1, b: 1}\n"
    )
    assert ok.backends["a"].api_key_header == "x-api-key"
    assert ok.backends["b"].api_key_header is None
    assert ok.routes[0].match.prefixes == ("/v1/messages",)
    found = problems_of(
        "backends:\n  a: {base_url: 'http://h/v1', api_key_header: bearer}\n"
        "routes:\n  - name: r\n    match: {paths: ['/v1/*/x']}\n    weights: {a: 1}\n"
    )
    assert [(p.path, p.line) for p in found] == [
        ("backends.a.api_key_header", 2),
        ("routes[0].match.paths[0]", 5),
    ]


@pytest.mark.parametrize(
    ("text", "model"),
    [
        pytest.param(VALID + "rollback: {nope: 1}\n", Rollback, id="rollback"),
        pytest.param(VALID + "readiness: {nope: 1}\n", Readiness, id="readiness"),
        pytest.param(VALID + "retry: {nope: 1}\n", Retry, id="retry"),
        pytest.param(VALID + "server: {nope: 1}\n", Server, id="server"),
        pytest.param(VALID + "pricing: {legacy: {m: {nope: 1}}}\n", Price, id="price"),
    ],
)
def test_a_section_takes_exactly_the_fields_of_its_dataclass(text: str, model: type) -> None:
    """An unknown key's hint lists the section's dataclass fields: the rules and the model agree."""
    (unknown,) = [p for p in problems_of(text) if "unknown key" in p.message]
    names = ", ".join(sorted(f.name for f in dataclasses.fields(model)))
    assert unknown.message == f"unknown key (expected one of: {names})"


def test_a_key_left_empty_takes_the_default_of_its_dataclass() -> None:
    """``window_s:`` with no value is as if omitted; a default float field loads as a float."""
    config = parse(
        VALID.replace("  legacy:\n", "  legacy:\n    timeout_s:\n")
        + "    fallback:\nrollback:\n  window_s:\n  auto_resume:\nretry:\n  unsafe:\n"
    )
    assert config.rollback == Rollback()
    assert config.retry == Retry()
    assert config.routes[0].fallback is False
    assert type(config.rollback.window_s) is float
    assert type(config.backends["legacy"].timeout_s) is float
