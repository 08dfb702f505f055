"""The ``rollout`` block (SPEC §2, §10): parsed into ``Rollout``, every mistake located."""

from __future__ import annotations

import pytest

from canary.config.loader import parse_config
from canary.config.model import Analysis, Config
from canary.errors import ConfigError

HEAD = """\
backends:
  legacy: {base_url: http://127.0.0.1:1/v1}
  relay: {base_url: http://127.0.0.1:2/v1}
routes:
  - name: chat
    weights: {legacy: 90, relay: 10}
  - name: default
    weights: {legacy: 100}
"""


def parse(block: str) -> Config:
    return parse_config((HEAD + block).encode(), "routes.yaml", environ={})


def test_the_spec_block_parses_with_its_routes_resolved() -> None:
    """Omitted routes are every route with the backend in its weights."""
    cfg = parse(
        "rollout:\n  backend: relay\n  steps: [1, 5, 25, 50, 100]\n  step_s: 600\n"
        "  step_min_requests: 200\n  gates: [100]\n  analysis: {max_ttfb_ratio_p95: 1.5,"
        " max_model_mismatch_rate: 0.0}\n  webhooks: [https://hooks.example/x]\n"
    )
    r = cfg.rollout
    assert r is not None and r.routes == ("chat",) and r.gates == (100.0,)
    assert r.analysis == Analysis(0.02, 1.5, 1.5, 0.0) and "hooks" not in repr(r)


def test_no_block_is_no_rollout_and_null_turns_a_check_off() -> None:
    assert parse("").rollout is None
    r = parse("rollout:\n  backend: relay\n  analysis: {max_error_rate: null}\n").rollout
    assert r is not None and r.analysis.max_error_rate is None


@pytest.mark.parametrize(
    ("block", "path", "message"),
    [
        ("rollout: {backend: nope}", "rollout.backend", "unknown backend"),
        ("rollout: {backend: legacy}", "rollout.backend", "no route has"),
        ("rollout: {backend: relay, routes: [default]}", "rollout.routes[0]", "no weight"),
        ("rollout: {backend: relay, steps: [5, 1]}", "rollout.steps", "must increase"),
        ("rollout: {backend: relay, steps: [0, 101]}", "rollout.steps[0]", "must be > 0"),
        ("rollout: {backend: relay, gates: [7]}", "rollout.gates[0]", "not one of the steps"),
        ("rollout: {backend: relay, webhooks: [ftp://x]}", "rollout.webhooks[0]", "http"),
        ("rollout: {backend: relay, step_s: 0}", "rollout.step_s", "must be > 0"),
        ("rollout: {backend: relay, what: 1}", "rollout.what", "unknown key"),
    ],
)
def test_mistakes_are_located(block: str, path: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(block + "\n")
    assert any(p.path == path and message in p.message for p in info.value.problems), info.value
