"""``/status`` ``same_model``: the verify result beside routes.yaml, only for this config."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
from hypothesis import given
from hypothesis import strategies as st

from canary.observe.same_model import parse
from tests.helpers import Upstream, serving

ROUTES = """
backends:
  legacy: {base_url: "http://legacy.test/v1"}
  relay: {base_url: "http://relay.test/v1"}
routes:
  - name: chat
    weights: {legacy: 90, relay: 10}
    baseline: legacy
"""
RESULT = {
    "test": "mmd",
    "p_value": 0.004,
    "alpha": 0.05,
    "verdict": "differs",
    "prompts": 10,
    "samples": 20,
    "calls": 400,
    "cost_usd": 0.12,
    "at": "2026-12-07T15:00:00+00:00",
}


async def test_shown_only_for_the_config_it_ran_against(tmp_path: Path) -> None:
    """Absent without a file; present with one for this config; absent for another config."""
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES)
    beside = tmp_path / "routes.yaml.verify.json"
    async with serving(str(path), transport=httpx.MockTransport(Upstream()), watch=False) as c:
        doc = (await c.get("/status")).json()
        assert "same_model" not in doc
        version = doc["config"]["version"]
        beside.write_bytes(orjson.dumps({**RESULT, "config_version": version}))
        assert (await c.get("/status")).json()["same_model"] == {
            **RESULT,
            "config_version": version,
        }
        beside.write_bytes(orjson.dumps({**RESULT, "config_version": "0" * 64}))
        assert "same_model" not in (await c.get("/status")).json()


VALUES = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=8)
)


@given(st.binary(max_size=200) | st.dictionaries(st.sampled_from([*RESULT, "x"]), VALUES))
def test_any_file_is_parsed_or_ignored(content: bytes | dict[str, object]) -> None:
    """Whatever the file holds, parsing never raises, and keeps only a whole, typed result for
    the version asked."""
    written = content if isinstance(content, bytes) else {**content, "config_version": "v"}
    raw = written if isinstance(written, bytes) else orjson.dumps(written)
    found = parse(raw, "v")
    if found is not None:
        assert found["config_version"] == "v" and set(found) == {*RESULT, "config_version"}
        assert isinstance(found["verdict"], str) and isinstance(found["calls"], int)
    assert parse(orjson.dumps({**RESULT, "config_version": "v"}), "w") is None
