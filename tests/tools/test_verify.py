"""``canary verify``: a budgeted battery of probes to both backends, judged for difference."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest

from canary.tools.verify import Row, judge
from tests.helpers import canary

ROUTES = """
backends:
  legacy: {{base_url: "{legacy}/v1", api_key: sk-legacy-verify-SECRET-1}}
  relay:
    base_url: "{relay}/v1"
    api_key: sk-relay-verify-SECRET-2
    api_key_header: x-api-key
    model_map: {{gpt-4.1: gpt-4.1-2025-04-14}}
routes:
  - name: chat
    weights: {{legacy: 90, relay: 10}}
    baseline: legacy
pricing:
  legacy: {{gpt-4.1: {{input: 8.00, output: 8.00}}}}
  relay: {{gpt-4.1: {{input: 1.10, output: 1.10}}}}
"""


@pytest.fixture
def routes(sims: tuple[str, str], tmp_path: Path) -> Path:
    for base in sims:
        httpx.post(base + "/_sim/reset").raise_for_status()
        faults = {"echo_model": None, "prompt_token_factor": 1.0, "substitute_model": None}
        httpx.post(base + "/_sim/faults", json=faults).raise_for_status()
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES.format(legacy=sims[0], relay=sims[1]))
    return path


def test_an_honest_relay_verifies_and_prints_no_key(routes: Path) -> None:
    """Every probe agrees (both lacking logprobs agree): exit 0, the table, no key."""
    done = canary("verify", "-c", str(routes))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "estimated cost $" in done.stdout and "equivalent" in done.stdout
    assert "both lack" in done.stdout  # the simulator offers no logprobs, on either side
    assert "SECRET" not in done.stdout + done.stderr


def test_a_substituting_relay_diverges_as_json(routes: Path, sims: tuple[str, str]) -> None:
    """Another model echoed, and twice the prompt tokens: exit 1, named in the JSON."""
    faults = {"echo_model": "gpt-4o-mini", "prompt_token_factor": 2.0}
    httpx.post(sims[1] + "/_sim/faults", json=faults).raise_for_status()
    done = canary("verify", "-c", str(routes), "--json")
    assert done.returncode == 1, done.stderr
    doc = json.loads(done.stdout)
    assert doc["equivalent"] is False
    assert {"echoed model", "prompt tokens (plain)"} <= set(doc["diverges"])
    assert "SECRET" not in done.stdout + done.stderr
    sent = httpx.get(sims[1] + "/_sim/stats").json()["last_request"]
    relay_key = "sha256:" + hashlib.sha256(b"sk-relay-verify-SECRET-2").hexdigest()[:12]
    assert sent["headers"]["x-api-key"] == relay_key  # its key in its own header
    assert sent["body"]["model"] == "gpt-4.1-2025-04-14"  # its model_map


def test_a_forging_relay_differs_only_in_its_temperature_0_answers(
    routes: Path, sims: tuple[str, str]
) -> None:
    """Another model's answers under the asked name, honest counts: the one row that sees
    it is the temperature-0 answers compared across the backends (issue #21)."""
    faults = {"substitute_model": "gpt-4o-mini", "substitute_rate": 1.0}
    httpx.post(sims[1] + "/_sim/faults", json=faults).raise_for_status()
    done = canary("verify", "-c", str(routes), "--json")
    assert done.returncode == 1, done.stderr
    doc = json.loads(done.stdout)
    assert doc["diverges"] == ["temperature-0 answers (across)"]
    row = next(p for p in doc["probes"] if p["probe"] == "temperature-0 answers (across)")
    assert (row["legacy"], row["relay"]) == ("6 prompts", "0 the same")


def test_over_budget_refuses_before_sending_anything(routes: Path, sims: tuple[str, str]) -> None:
    """The estimate comes first; over --max-usd nothing is sent and the exit is 2."""
    done = canary("verify", "-c", str(routes), "--max-usd", "0.0001")
    assert done.returncode == 2
    assert "refused" in done.stderr and "estimated cost $" in done.stdout
    for base in sims:
        assert httpx.get(base + "/_sim/stats").json()["requests"] == 0


def test_judge_compares_differences_not_capabilities() -> None:
    """Both lacking a feature agree; one lacking it differs; a dated name is no mismatch."""
    assert judge("logprobs offered", [False], [False], ("m", "m")).verdict == "both lack"
    assert judge("logprobs offered", [True], [False], ("m", "m")).verdict == "differs"
    row = judge("echoed model", ["gpt-4.1"], ["gpt-4.1-2025-04-14"], ("gpt-4.1", "gpt-4.1"))
    assert row == Row("echoed model", "gpt-4.1 (match)", "gpt-4.1-2025-04-14 (variant)", "agree")
    repeat = judge("temperature-0 repeatability", ["a", "a"], ["a", "b"], ("m", "m"))
    assert repeat.differs
