"""The spend audit across replicas on one real Redis: one polls (the lease), every
replica's figures are summed as they rise, and the poller's state is what others read."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from canary.fleet.billing_shared import LEASE_KEY, STATE_KEY, SUMS, RedisShare
from tests.helpers import RedisServer


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    r = Redis.from_url(redis_server.url, socket_timeout=2)
    await r.delete(LEASE_KEY, STATE_KEY, *SUMS)
    try:
        yield r
    finally:
        await r.delete(LEASE_KEY, STATE_KEY, *SUMS)
        await r.aclose()


async def test_one_replica_polls_and_every_meter_is_summed(client: Redis) -> None:
    """The lease is exclusive until it lapses; totals add each replica's rise, once."""
    a, b = RedisShare(client, "a", 200), RedisShare(client, "b", 200)
    assert await a.lead() and not await b.lead()
    assert await a.lead()  # renewed by its holder
    assert await a.totals({"relay": (1.0, 0, 10)}) == {"relay": (1.0, 0, 10)}
    assert await b.totals({"relay": (0.5, 1, 3)}) == {"relay": (1.5, 1, 13)}
    # Pushing the same figures again adds nothing; only what rose since is added.
    assert await a.totals({"relay": (1.25, 0, 12)}) == {"relay": (1.75, 1, 15)}
    assert await b.totals({"relay": (0.5, 1, 3)}) == {"relay": (1.75, 1, 15)}
    await a.publish(b'{"ledgers": {}}')
    assert await b.read() == b'{"ledgers": {}}'
    await client.delete(LEASE_KEY)  # the holder died: its lease lapsed
    assert await b.lead() and not await a.lead()
