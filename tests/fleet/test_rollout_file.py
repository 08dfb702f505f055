"""A rollout's state file (SPEC §10, no Redis): beside the config, else a writable place."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from canary.fleet.rollout_file import state_path
from tests.helpers import Upstream, serving

ROUTES = """
backends:
  legacy: {base_url: "http://legacy.test/v1"}
  relay: {base_url: "http://relay.test/v1"}
routes:
  - name: chat
    weights: {legacy: 100, relay: 0}
auth: {admin_token: "t0ken"}
rollout: {backend: relay, steps: [20, 100], step_s: 600, gates: [20]}
"""


def test_the_file_goes_beside_the_config_or_says_why_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "routes.yaml"
    path, why = state_path(str(config))
    assert path == tmp_path / ".routes.yaml.rollout.json" and why == "beside the config"
    monkeypatch.setenv("CANARY_STATE_DIR", str(tmp_path / "state"))
    path, why = state_path(str(config), writable=lambda _: False)
    assert path.parent == tmp_path / "state" and "not writable" in why


async def test_a_restarted_router_resumes_the_rollout(tmp_path: Path) -> None:
    """Promoted past a gate, then restarted: the rollout is where it was, not back at 0."""
    config = tmp_path / "routes.yaml"
    config.write_text(ROUTES)
    transport = httpx.MockTransport(Upstream())
    async with serving(str(config), transport=transport, watch=False) as c:
        r = await c.post("/admin/rollout/promote", headers={"authorization": "Bearer t0ken"})
        assert r.status_code == 200 and r.json()["percent"] == 20
    assert (tmp_path / ".routes.yaml.rollout.json").exists()
    async with serving(str(config), transport=transport, watch=False) as c:
        rollout = (await c.get("/status")).json()["rollout"]
        assert (rollout["state"], rollout["percent"]) == ("progressing", 20)
        assert rollout["saved"].endswith("(beside the config)")
        assert rollout["history"][0]["reason"] == "promoted by the operator to 20%"
    config.write_text(ROUTES.replace("step_s: 600", "step_s: 601"))  # another rollout
    async with serving(str(config), transport=transport, watch=False) as c:
        rollout = (await c.get("/status")).json()["rollout"]
        assert (rollout["state"], rollout["percent"]) == ("awaiting_promotion", 0)
