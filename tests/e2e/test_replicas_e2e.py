"""Global limits end to end: three `canary serve` replicas sharing one real redis-server."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers import free_port, run_process, wait_until

pytestmark = pytest.mark.e2e

MAX_QPS = 20
MAX_CONCURRENCY = 3
QUEUE_TIMEOUT_S = 0.5
OVERLOAD = 2.4  # offered load as a multiple of max_qps, spread over the replicas
DRIVE_S = 5.0
REPLICAS = 3

# legacy carries the QPS limit; relay (the other simulator) the concurrency limit, chosen
# by a header, so one set of three replicas serves both tests.
ROUTES = """
backends:
  legacy:
    base_url: {legacy}/v1
    max_qps: {max_qps}
  relay:
    base_url: {relay}/v1
    max_concurrency: {max_concurrency}
routes:
  - name: concurrency
    match: {{headers: {{x-test: concurrency}}}}
    weights: {{relay: 100}}
  - name: all
    weights: {{legacy: 100}}
state:
  redis_url: {redis_url}
server:
  queue_timeout_s: {queue_timeout_s}
"""

BODY = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}


def state(url: str) -> str:
    return str(httpx.get(f"{url}/status", timeout=2).json()["state"])


@pytest.fixture(scope="module")
def replicas(
    sims: tuple[str, str], redis_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[str]]:
    """Three routers on one config and one Redis (a database of their own), all in redis state."""
    redis_url = redis_server.url.rsplit("/", 1)[0] + "/7"  # no keys left by other modules
    config = tmp_path_factory.mktemp("replicas") / "routes.yaml"
    config.write_text(
        ROUTES.format(
            legacy=sims[0],
            relay=sims[1],
            redis_url=redis_url,
            max_qps=MAX_QPS,
            max_concurrency=MAX_CONCURRENCY,
            queue_timeout_s=QUEUE_TIMEOUT_S,
        )
    )
    with contextlib.ExitStack() as stack:
        urls = []
        for _ in range(REPLICAS):
            port = free_port()
            args = [sys.executable, "-m", "canary", "serve", "-c", str(config)]
            args += ["--port", str(port)]
            stack.enter_context(run_process(args, f"http://127.0.0.1:{port}/readyz"))
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls:

            def shared(u: str = url) -> bool:
                return state(u) == "redis"

            wait_until(shared, 5, f"shared state on {url}")
        yield urls


@contextlib.contextmanager
def clean_simulator(base: str) -> Iterator[None]:
    """Stats reset and faults cleared before; latency and faults back to 0 afterwards."""
    zero = {"latency_ms": 0}
    httpx.post(f"{base}/_sim/faults", json=zero, timeout=2).raise_for_status()
    httpx.post(f"{base}/_sim/reset", timeout=2).raise_for_status()
    try:
        yield
    finally:
        httpx.post(f"{base}/_sim/faults", json=zero, timeout=2).raise_for_status()


async def drive_open_loop(urls: list[str], rate: float, seconds: float) -> list[httpx.Response]:
    """Send ``rate * seconds`` requests on a fixed schedule, round-robin over ``urls``."""
    total = round(rate * seconds)
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=5, limits=limits) as client:
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05
        tasks = []
        for i in range(total):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # the schedule, not settling
            url = f"{urls[i % len(urls)]}/v1/chat/completions"
            tasks.append(asyncio.create_task(client.post(url, json=BODY)))
        return list(await asyncio.gather(*tasks))


def test_three_replicas_hold_a_global_max_qps_and_use_it(
    sims: tuple[str, str], replicas: list[str]
) -> None:
    """At 2.4x max_qps over three replicas the provider sees <= limit +10% and >= 80% a second."""
    legacy = sims[0]
    rate = OVERLOAD * MAX_QPS
    with clean_simulator(legacy):
        t0 = time.monotonic()
        responses = asyncio.run(drive_open_loop(replicas, rate, DRIVE_S))
        elapsed = time.monotonic() - t0
        stats = httpx.get(f"{legacy}/_sim/stats", timeout=2).json()

    codes = [r.status_code for r in responses]
    ok, limited = codes.count(200), codes.count(429)
    per_second = sorted((int(s), n) for s, n in stats["starts_per_second"].items())
    full = [n for _, n in per_second[1:-1]]  # the first and last seconds are partial
    peak = max(n for _, n in per_second)  # any calendar second is a one-second window
    mean = sum(full) / len(full) if full else 0.0
    print(
        f"\n[global max_qps] limit {MAX_QPS}/s, offered {rate:g} rps over {REPLICAS} replicas "
        f"for {DRIVE_S:g} s (took {elapsed:.1f} s): provider starts per second "
        f"{[n for _, n in per_second]}; peak {peak} ({peak / MAX_QPS:.0%} of limit), "
        f"mean over {len(full)} full seconds {mean:.1f} ({mean / MAX_QPS:.0%}); "
        f"answers: {ok} x 200, {limited} x 429, other {len(codes) - ok - limited}"
    )
    assert set(codes) <= {200, 429}, sorted(set(codes))
    assert all(r.headers.get("retry-after") for r in responses if r.status_code == 429)
    assert stats["requests"] == ok  # every start the provider saw was answered 200
    assert len(full) >= 3, per_second
    assert peak <= MAX_QPS * 1.1, per_second
    assert mean >= MAX_QPS * 0.8, per_second
    assert limited > 0  # 2.4x the limit cannot all fit


def test_three_replicas_hold_a_global_max_concurrency(
    sims: tuple[str, str], replicas: list[str]
) -> None:
    """max_concurrency 3 holds at a 500 ms provider with 12 calls at once over three replicas."""
    relay = sims[1]
    with clean_simulator(relay):
        httpx.post(f"{relay}/_sim/faults", json={"latency_ms": 500}, timeout=2).raise_for_status()

        def call(url: str) -> int:
            headers = {"x-test": "concurrency"}
            response = httpx.post(
                f"{url}/v1/chat/completions", json=BODY, headers=headers, timeout=5
            )
            return response.status_code

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            codes = list(pool.map(call, replicas * 4))
        stats = httpx.get(f"{relay}/_sim/stats", timeout=2).json()

    print(
        f"\n[global max_concurrency] limit {MAX_CONCURRENCY}, 12 calls over {REPLICAS} "
        f"replicas: provider peak in flight {stats['peak_in_flight']}, "
        f"{codes.count(200)} x 200, {codes.count(429)} x 429"
    )
    assert stats["peak_in_flight"] <= MAX_CONCURRENCY  # one limit for all replicas
    assert stats["peak_in_flight"] >= 2  # and it is used, not starved
    assert set(codes) <= {200, 429}, codes
    assert codes.count(200) >= MAX_CONCURRENCY and codes.count(429) >= 1
