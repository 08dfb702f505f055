"""A finished call leaves nothing for the cycle collector: reference counting frees it.

A serving worker runs the collector rarely (``canary.serve.server.tune_gc``), so a call
caught in a reference cycle would keep its request body in memory until then."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from canary.proxy.exchange import Exchange
from tests.helpers import serving

ROUTES = """
backends:
  legacy: {base_url: "http://up.test/v1", timeout_s: 5}
routes:
  - name: all
    weights: {legacy: 100}
"""


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"usage": {"prompt_tokens": 1, "completion_tokens": 1}})


def refused(request: httpx.Request) -> httpx.Response:
    return httpx.Response(503, json={"error": {"message": "busy"}})


def reset(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadError("reset")


@pytest.fixture
def no_collector() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize(
    "handler",
    [pytest.param(ok, id="ok"), pytest.param(refused, id="503"), pytest.param(reset, id="reset")],
)
async def test_no_finished_exchange_waits_for_the_collector(
    tmp_path: Path, handler: Callable[[httpx.Request], httpx.Response], no_collector: None
) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES)
    body = {"model": "m", "messages": [], "pad": "x" * 10_000}
    async with serving(str(routes), transport=httpx.MockTransport(handler), watch=False) as c:
        for _ in range(20):
            await c.post("/v1/chat/completions", json=body)
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            left = [o for o in gc.garbage if isinstance(o, Exchange)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
    assert left == []
