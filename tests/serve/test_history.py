"""``GET /status/history`` through the whole app: the sampler fills it off the request path,
and a bad ``since`` gets OpenAI's error shape."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import Upstream, serving

ROUTES = """
backends:
  legacy: {base_url: "http://legacy.test/v1"}
  relay: {base_url: "http://relay.test/v1"}
routes:
  - name: chat
    weights: {legacy: 50, relay: 50}
    baseline: legacy
retry: {max_attempts: 1}
"""


async def test_history_fills_once_a_second_and_refuses_a_bad_since(tmp_path: Path) -> None:
    """Calls made now show in the next second's point, per backend and as each route's share."""
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES)
    async with serving(str(path), transport=httpx.MockTransport(Upstream())) as client:
        started = int(time.time()) - 1  # a point's second is the wall's, give or take one
        for _ in range(20):
            assert (await client.post("/v1/chat/completions", json={})).status_code == 200
        doc: Any = {}
        async with asyncio.timeout(5):
            while True:
                doc = (await client.get("/status/history", params={"since": started})).json()
                calls = {n: sum(b["calls"]) for n, b in doc["backends"].items()}
                if sum(calls.values()) >= 20:
                    break
                await asyncio.sleep(0.1)  # bounded by the timeout: the sampler's next second
        assert doc["since"] == started and doc["sources"] == 1
        t = doc["t"]
        assert isinstance(t, list) and t == sorted(set(t)) and all(s >= started for s in t)
        assert calls["legacy"] > 0 and calls["relay"] > 0
        shares = doc["routes"]["chat"]["share"]
        busy = [i for i, n in enumerate(doc["routes"]["chat"]["calls"]["legacy"]) if n]
        assert all(shares["legacy"][i] + shares["relay"][i] == pytest.approx(100) for i in busy)
        assert doc["backends"]["relay"]["circuit"][-1] == "closed"

        bad = await client.get("/status/history", params={"since": "yesterday"})
        assert bad.status_code == 400
        error = bad.json()["error"]
        assert error["code"] == "invalid_since" and error["type"] == "invalid_request_error"
        assert "unix seconds" in error["message"]
