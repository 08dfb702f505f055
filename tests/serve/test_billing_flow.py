"""Two routers on one real Redis, the upstream a MockTransport that bills 1.3x: one of them
polls the relay's bill, both meters are summed, and both show the same ratio."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from canary.fleet.billing_shared import LEASE_KEY, STATE_KEY, SUMS
from tests.helpers import RedisServer, serving

ROUTES = """
backends:
  legacy: {{base_url: "http://legacy.test/v1"}}
  relay:
    base_url: "http://relay.test/v1"
    api_key: sk-relay
    billing: {{api: new-api, poll_s: 1}}
routes:
  - name: chat
    weights: {{legacy: 0, relay: 100}}
    baseline: legacy
state: {{redis_url: "{redis}"}}
pricing:
  relay: {{gpt-4.1: {{input: 10, output: 10}}}}
"""
CALL_USD = 2000 * 10 / 1e6  # 1000 tokens in, 1000 out, at $10 per million


class Relay:
    """Answers chat calls with 1000+1000 tokens and bills each 1.3x; serves new-api's API."""

    def __init__(self) -> None:
        self.spent = 0.0
        self.polls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/dashboard/billing/subscription":
            self.polls += 1
            return httpx.Response(200, json={"hard_limit_usd": 100.0})
        if path == "/v1/dashboard/billing/usage":
            return httpx.Response(200, json={"total_usage": self.spent * 100})
        self.spent += 1.3 * CALL_USD
        usage = {"prompt_tokens": 1000, "completion_tokens": 1000, "total_tokens": 2000}
        body = {"model": "gpt-4.1", "choices": [], "usage": usage}
        return httpx.Response(200, content=orjson.dumps(body))


async def test_one_polls_for_the_fleet_and_every_meter_counts(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """3 calls through one router, 2 through the other: $0.10 metered, $0.13 billed, on both."""
    client = Redis.from_url(redis_server.url)
    await client.delete(LEASE_KEY, STATE_KEY, *SUMS)
    await client.aclose()
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES.format(redis=redis_server.url))
    relay = Relay()
    mock = httpx.MockTransport(relay)
    chat = {"model": "gpt-4.1", "messages": []}
    async with (
        serving(str(path), transport=mock, watch=False) as a,
        serving(str(path), transport=mock, watch=False) as b,
    ):

        async def bill(c: httpx.AsyncClient) -> dict[str, object]:
            return (await c.get("/status")).json()["billing"]["relay"]  # type: ignore[no-any-return]

        async def until(check: object, what: str) -> None:
            for _ in range(200):  # 10 s at most
                if all([await check(a), await check(b)]):  # type: ignore[operator]
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"not within 10 s: {what}: {await bill(a)} {await bill(b)}")

        async def polled(c: httpx.AsyncClient) -> bool:
            return (await bill(c))["polled_at"] is not None

        await until(polled, "a first poll")
        for c in (a, a, a, b, b):
            assert (await c.post("/v1/chat/completions", json=chat)).status_code == 200

        async def summed(c: httpx.AsyncClient) -> bool:
            return (await bill(c))["metered_usd"] == pytest.approx(5 * CALL_USD)

        await until(summed, "both meters summed")
        for c in (a, b):
            figures = await bill(c)
            assert figures["billed_usd"] == pytest.approx(5 * 1.3 * CALL_USD)
            assert figures["ratio"] == pytest.approx(1.3)
            assert figures["balance_usd"] == pytest.approx(100 - 5 * 1.3 * CALL_USD)
    polls_per_s = relay.polls / 2  # at most one poller: about one poll a second, not two
    assert relay.polls >= 1 and polls_per_s <= 3
