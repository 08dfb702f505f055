"""Global limits end to end: three `canary serve` replicas sharing one real redis-server."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import ROOT, free_port, run_process, wait_until

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
    with serve_replicas(config) as urls:
        yield urls


@contextlib.contextmanager
def serve_replicas(config: Path) -> Iterator[list[str]]:
    """REPLICAS `canary serve` on ``config``, all in redis state; logs beside ``config``."""
    with contextlib.ExitStack() as stack:
        urls = []
        for i in range(REPLICAS):
            port = free_port()
            args = [sys.executable, "-m", "canary", "serve", "-c", str(config)]
            args += ["--port", str(port)]
            log = stack.enter_context((config.parent / f"replica-{i}.log").open("a+b"))
            stack.enter_context(run_process(args, f"http://127.0.0.1:{port}/readyz", output=log))
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls:

            def shared(u: str = url) -> bool:
                return state(u) == "redis"

            wait_until(shared, 5, f"shared state on {url}")
        yield urls


def fallbacks_to_memory(config: Path) -> int:
    """How often the replicas serving ``config`` fell back from Redis to memory so far."""
    logs = config.parent.glob("replica-*.log")
    return sum(log.read_text().count('"state.degraded"') for log in logs)


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


# -- max_qps under queueing: the default 5 s queue time, both limits binding ---------------------

# Two backends on one simulator, chosen by model. No server.queue_timeout_s: with the default
# 5 s, a 2.4x overload queues hundreds of requests per replica, which once took one Redis call
# each, exhausted the client's pool and sent replicas back and forth to in-memory limits.
QUEUED_ROUTES = """
backends:
  relay:
    base_url: {relay}/v1
    max_qps: 50
    max_concurrency: 8
  bulk:
    base_url: {relay}/v1
    max_qps: 200
routes:
  - name: bulk
    match: {{models: [gpt-4.1-mini]}}
    weights: {{bulk: 100}}
  - name: all
    weights: {{relay: 100}}
state:
  redis_url: {redis_url}
"""


@pytest.fixture(scope="module")
def queued_replicas(
    sims: tuple[str, str], redis_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[str], Path]]:
    """Three routers on QUEUED_ROUTES (their own Redis database); their URLs and config."""
    redis_url = redis_server.url.rsplit("/", 1)[0] + "/8"
    config = tmp_path_factory.mktemp("queued") / "routes.yaml"
    config.write_text(QUEUED_ROUTES.format(relay=sims[1], redis_url=redis_url))
    with serve_replicas(config) as urls:
        yield urls, config


def offer_load(urls: list[str], rate: float, seconds: float, model: str) -> list[dict[str, Any]]:
    """`canary load` against every replica at once, ``rate`` in all (open loop); their figures.

    One process per replica: a single in-process client cannot send 480 req/s on two cores.
    Each request waits at most the 5 s queue time, so 10 s bound every answer and the drain.
    """
    args = ["--qps", f"{rate / len(urls):g}", "--duration", f"{seconds:g}", "--model", model]
    args += ["--concurrency", "1024", "--timeout", "10", "--drain", "10", "--json"]
    with contextlib.ExitStack() as stack:
        loads = [
            stack.enter_context(
                subprocess.Popen(
                    [sys.executable, "-m", "canary", "load", url, *args],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=ROOT,
                )
            )
            for url in urls
        ]
        try:
            outputs = [load.communicate(timeout=seconds + 30) for load in loads]
        finally:
            for load in loads:
                if load.poll() is None:
                    load.kill()
    for load, (_, err) in zip(loads, outputs, strict=True):
        assert load.returncode == 0, err.decode(errors="replace")
    return [json.loads(out) for out, _ in outputs]


@pytest.mark.parametrize(
    ("model", "max_qps", "latency_ms", "seconds"),
    [
        # 8 slots at a 120 ms provider carry ~60 calls a second: both limits bind in turn.
        pytest.param("gpt-4.1", 50, 120, 5.0, id="qps50-concurrency8"),
        pytest.param("gpt-4.1-mini", 200, 0, 3.0, id="qps200"),
    ],
)
def test_three_replicas_hold_max_qps_with_requests_queued(
    sims: tuple[str, str],
    queued_replicas: tuple[list[str], Path],
    model: str,
    max_qps: int,
    latency_ms: float,
    seconds: float,
) -> None:
    """At 2.4x with the default queue time no one-second window at the provider passes the limit."""
    relay = sims[1]
    urls, config = queued_replicas
    rate = OVERLOAD * max_qps
    fallbacks = fallbacks_to_memory(config)
    with clean_simulator(relay):
        faults = {"latency_ms": latency_ms}
        httpx.post(f"{relay}/_sim/faults", json=faults, timeout=2).raise_for_status()
        t0 = time.monotonic()
        figures = offer_load(urls, rate, seconds, model)
        elapsed = time.monotonic() - t0
        stats = httpx.get(f"{relay}/_sim/stats", timeout=2).json()
    fallbacks = fallbacks_to_memory(config) - fallbacks

    status: Counter[str] = Counter()
    for f in figures:
        status.update(f["status"])
    errors = [f["errors"] for f in figures if f["errors"]]
    per_second = [n for _, n in sorted((int(s), n) for s, n in stats["starts_per_second"].items())]
    full = per_second[1:-1]  # the first and last seconds are partial
    mean = sum(full) / len(full) if full else 0.0
    peak = stats["peak_starts_1s"]  # the most in any one-second window, not just a unix second
    print(
        f"\n[max_qps {max_qps}, queued] offered {rate:g} req/s over {REPLICAS} replicas for "
        f"{seconds:g} s (took {elapsed:.1f} s): provider starts per second {per_second}; "
        f"peak in any 1 s {peak} ({peak / max_qps:.0%} of limit), mean over {len(full)} full "
        f"seconds {mean:.1f} ({mean / max_qps:.0%}), peak in flight {stats['peak_in_flight']}; "
        f"answers {dict(status)}, errors {errors}; fell back to memory {fallbacks} times"
    )
    assert sum(f["sent"] for f in figures) == round(rate / REPLICAS * seconds) * REPLICAS
    assert set(status) <= {"200", "429"} and not errors, (status, errors)
    assert stats["requests"] == status["200"]  # every start the provider saw was answered 200
    assert len(full) >= 3, per_second
    assert peak <= max_qps * 1.1, per_second
    assert mean <= max_qps * 1.05, per_second
    assert mean >= max_qps * 0.8, per_second
