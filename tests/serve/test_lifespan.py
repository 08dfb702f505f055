"""The lifespan: one limiter chosen by the config, every resource closed on the way out."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
from asgi_lifespan import LifespanManager
from redis.asyncio import Redis

from canary.safety.failover import FailoverLimiter
from canary.safety.limits import MemoryLimiter
from canary.serve.app import create_app
from canary.serve.core import AppOptions
from canary.serve.lifespan import build_limiter
from tests.helpers import Upstream, free_port

ROUTES = """
backends:
  legacy: {base_url: "http://legacy.test/v1"}
routes:
  - name: default
    weights: {legacy: 100}
"""


class Recording(httpx.MockTransport):
    """A mock upstream that remembers being closed."""

    closed = False

    async def aclose(self) -> None:
        self.closed = True


def test_build_limiter_in_memory_without_redis() -> None:
    """No Redis: this process's share of the limits, in memory."""
    limiter = build_limiter(None, AppOptions(limit_share=0.5))
    assert isinstance(limiter, MemoryLimiter)
    assert limiter.share == 0.5


async def test_build_limiter_on_redis_with_failover() -> None:
    """A Redis client: shared limits, with memory failover, on that client."""
    redis = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")  # never called here
    try:
        limiter = build_limiter(redis, AppOptions())
        assert isinstance(limiter, FailoverLimiter)
        assert limiter.redis.client is redis
    finally:
        await redis.aclose()


async def test_lifespan_opens_and_closes_the_transport(tmp_path: Path) -> None:
    """The transport is entered with the lifespan and closed when it ends; /v1 serves between."""
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES)
    transport = Recording(Upstream())
    app = create_app(str(routes), transport=transport, watch=False)
    async with (
        LifespanManager(app) as m,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=m.app), base_url="http://c") as c,
    ):
        assert (await c.get("/v1/models")).status_code == 200
        assert (await c.get("/status")).json()["state"] == "memory"
        assert not transport.closed
    assert transport.closed


async def test_v1_before_the_lifespan_answers_503(tmp_path: Path) -> None:
    """Without a lifespan nothing is open: /v1 says so in OpenAI's shape, /healthz still 200."""
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES)
    app = create_app(str(routes), transport=httpx.MockTransport(Upstream()), watch=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://c") as c:
        answer = await c.get("/v1/models")
        assert answer.status_code == 503
        assert orjson.loads(answer.content)["error"]["code"] == "not_started"
        assert (await c.get("/healthz")).status_code == 200
