"""``canary verify --distribution --json`` against two real simulators: an honest relay is
``same`` (exit 0), one answering from another model half the time ``differs`` (exit 1)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import canary, free_port, simulator

ROUTES = """
backends:
  legacy: {{base_url: "{legacy}/v1", api_key: sk-legacy-same-SECRET-1}}
  relay: {{base_url: "{relay}/v1", api_key: sk-relay-same-SECRET-2, max_concurrency: 4}}
routes:
  - name: chat
    weights: {{legacy: 90, relay: 10}}
    baseline: legacy
pricing:
  legacy: {{gpt-4.1: {{input: 8.00, output: 8.00}}}}
  relay: {{gpt-4.1: {{input: 1.10, output: 1.10}}}}
"""


@pytest.fixture(scope="module")
def seeded() -> Iterator[tuple[str, str]]:
    """Two simulators with seeded dice: with one call at a time, every answer is fixed."""
    ports = free_port(), free_port()
    with (
        simulator(ports[0], "legacy", "--seed", "1"),
        simulator(ports[1], "relay", "--seed", "2"),
    ):
        yield f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}"


def test_verify_distribution_tells_an_honest_relay_from_a_forging_one(
    seeded: tuple[str, str], tmp_path: Path
) -> None:
    """At the default K and N: honest -> same, exit 0; 50% another model -> differs, exit 1;
    the relay names the asked model all along; the record lands beside the config."""
    legacy, relay = seeded
    config = tmp_path / "routes.yaml"
    config.write_text(ROUTES.format(legacy=legacy, relay=relay))
    verify = ("verify", "-c", str(config), "--distribution", "--json", "--concurrency", "1")

    honest = canary(*verify, "--seed", "1")
    assert honest.returncode == 0, honest.stdout + honest.stderr
    doc = json.loads(honest.stdout)["distribution"]
    assert (doc["test"], doc["verdict"], doc["prompts"], doc["samples"]) == (
        "mmd-hamming",
        "same",
        10,
        20,
    )
    assert doc["calls"] == 400 and doc["p_value"] >= doc["alpha"] == 0.01
    assert 0 < doc["cost_usd"] < 0.10 and "estimated cost $" in honest.stderr
    record = json.loads((tmp_path / "routes.yaml.verify.json").read_text())["distribution"]
    assert record["verdict"] == "same" and record["canary"] == "relay"

    forgery = {"substitute_model": "gpt-4o-mini", "substitute_rate": 0.5}
    httpx.post(relay + "/_sim/faults", json=forgery).raise_for_status()
    forged = canary(*verify, "--seed", "1")
    assert forged.returncode == 1, forged.stdout + forged.stderr
    doc = json.loads(forged.stdout)["distribution"]
    assert doc["verdict"] == "differs" and doc["p_value"] < 0.01
    last = httpx.get(relay + "/_sim/stats").json()["last_request"]
    assert last["body"]["temperature"] == 1  # sampled, not the fixed reply
    record = json.loads((tmp_path / "routes.yaml.verify.json").read_text())["distribution"]
    assert record["verdict"] == "differs"
    assert "SECRET" not in honest.stdout + honest.stderr + forged.stdout + forged.stderr
