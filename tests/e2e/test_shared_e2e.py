"""Shared state end to end: `canary serve` replicas, a real redis-server, Redis outages."""

from __future__ import annotations

import concurrent.futures
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import free_port, run_process, wait_until

pytestmark = pytest.mark.e2e

ROUTES = """
backends:
  legacy:
    base_url: {legacy}/v1
    max_concurrency: {concurrency}
routes:
  - name: all
    weights: {{legacy: 100}}
state:
  redis_url: {redis_url}
server:
  queue_timeout_s: 0.2
"""

BODY = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}


def routes(tmp_path: Path, legacy: str, redis_url: str, concurrency: int = 50) -> Path:
    path = tmp_path / f"routes-{free_port()}.yaml"
    path.write_text(ROUTES.format(legacy=legacy, redis_url=redis_url, concurrency=concurrency))
    return path


def serve(config: Path) -> tuple[str, Any]:
    port = free_port()
    args = [sys.executable, "-m", "canary", "serve", "-c", str(config), "--port", str(port)]
    return f"http://127.0.0.1:{port}", run_process(args, f"http://127.0.0.1:{port}/readyz")


def state(url: str) -> str:
    return str(httpx.get(f"{url}/status", timeout=2).json()["state"])


@pytest.fixture
def redis_up(redis_server: Any) -> Iterator[Any]:
    """The shared redis-server, restarted after any test that stops it."""
    try:
        yield redis_server
    finally:
        redis_server.start()


def test_redis_outage_degrades_and_recovers_without_failing_requests(
    sims: tuple[str, str], redis_up: Any, tmp_path: Path
) -> None:
    """Redis killed: every request on three replicas answered, all degraded; back after."""
    config = routes(tmp_path, sims[0], redis_up.url)
    replicas = [serve(config) for _ in range(3)]
    urls = [url for url, _ in replicas]
    with replicas[0][1], replicas[1][1], replicas[2][1], httpx.Client(timeout=2) as http:
        for url in urls:
            wait_until(lambda u=url: state(u) == "redis", 5, "shared state at start")
        redis_up.stop()
        codes, slowest = [], 0.0
        for i in range(30):
            began = time.monotonic()
            r = http.post(f"{urls[i % 3]}/v1/chat/completions", json=BODY)
            codes.append(r.status_code)
            slowest = max(slowest, time.monotonic() - began)
        assert codes == [200] * 30  # each bounded by the client's 2 s timeout
        print(f"\nworst request latency while Redis is down: {slowest * 1000:.1f} ms")
        wait_until(lambda: all(state(u) == "degraded" for u in urls), 5, "all degraded")
        redis_up.start()
        wait_until(lambda: all(state(u) == "redis" for u in urls), 10, "all back to redis")
        assert http.post(f"{urls[0]}/v1/chat/completions", json=BODY).status_code == 200


def test_redis_down_at_start_does_not_stop_the_router(
    sims: tuple[str, str], tmp_path: Path
) -> None:
    """A router whose Redis is unreachable starts, serves, and says it is degraded."""
    url, router = serve(routes(tmp_path, sims[0], f"redis://127.0.0.1:{free_port()}/0"))
    with router, httpx.Client(base_url=url, timeout=2) as http:
        assert http.post("/v1/chat/completions", json=BODY).status_code == 200
        assert state(url) == "degraded"


def test_two_replicas_share_one_concurrency_limit(
    sims: tuple[str, str], redis_up: Any, tmp_path: Path
) -> None:
    """max_concurrency 2 holds at the provider across two routers sharing one Redis."""
    legacy = sims[0]
    httpx.post(f"{legacy}/_sim/reset").raise_for_status()
    httpx.post(f"{legacy}/_sim/faults", json={"latency_ms": 600}).raise_for_status()
    config = routes(tmp_path, legacy, redis_up.url, concurrency=2)
    (url_a, router_a), (url_b, router_b) = serve(config), serve(config)
    try:
        with router_a, router_b:
            for url in (url_a, url_b):
                wait_until(lambda u=url: state(u) == "redis", 5, "shared state")

            def call(url: str) -> int:
                return httpx.post(f"{url}/v1/chat/completions", json=BODY, timeout=5).status_code

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(call, [url_a, url_b] * 4))
            stats = httpx.get(f"{legacy}/_sim/stats").json()
            assert stats["peak_in_flight"] <= 2  # one limit for both replicas
            assert codes.count(200) >= 2 and codes.count(429) >= 1
            assert set(codes) <= {200, 429}
    finally:
        httpx.post(f"{legacy}/_sim/faults", json={"latency_ms": 0}).raise_for_status()


ROLLBACK = """
backends:
  legacy: {{base_url: {legacy}/v1}}
  relay: {{base_url: {relay}/v1}}
routes:
  - name: chat
    weights: {{legacy: 50, relay: 50}}
    baseline: legacy
    fallback: true
rollback: {{min_requests: 10, max_error_rate: 0.2, open_s: 60}}
retry: {{max_attempts: 1}}
state:
  redis_url: {redis_url}
"""


def test_a_rollback_on_one_replica_shows_on_the_others(
    sims: tuple[str, str], redis_up: Any, tmp_path: Path
) -> None:
    """Relay trips on replica A (all its traffic); B and C follow through Redis pub/sub."""
    legacy, relay = sims
    config = tmp_path / "rollback.yaml"
    config.write_text(ROLLBACK.format(legacy=legacy, relay=relay, redis_url=redis_up.url))
    replicas = [serve(config) for _ in range(3)]
    (url_a, a), (url_b, b), (url_c, c) = replicas
    try:
        httpx.post(f"{relay}/_sim/faults", json={"error_rate": 1.0, "status_code": 503})
        with a, b, c, httpx.Client(base_url=url_a, timeout=5) as http:
            for url in (url_a, url_b, url_c):
                wait_until(lambda u=url: state(u) == "redis", 5, "shared state")

            def relay_circuit(url: str) -> str:
                return str(httpx.get(f"{url}/status").json()["backends"]["relay"]["circuit"])

            while relay_circuit(url_a) != "open":
                assert http.post("/v1/chat/completions", json=BODY).status_code == 200
            opened = time.monotonic()
            wait_until(
                lambda: relay_circuit(url_b) == relay_circuit(url_c) == "open", 5, "followed"
            )
            print(
                f"\nrollback propagation to two other replicas: {time.monotonic() - opened:.3f} s"
            )
            event = httpx.get(f"{url_b}/status").json()["events"][0]
            assert event["origin"] == "replica" and "on replica" in event["reason"]
    finally:
        httpx.post(f"{relay}/_sim/faults", json={"error_rate": 0})


def test_error_windows_add_up_across_replicas(
    sims: tuple[str, str], redis_up: Any, tmp_path: Path
) -> None:
    """Each replica alone is below min_requests; together they trip, and /status is global."""
    legacy, relay = sims
    config = tmp_path / "windows.yaml"
    # A Redis database of its own: the history reads every replica registered there, and
    # other tests' replicas (on db 0) must not add their calls to these.
    url = redis_up.url.removesuffix("/0") + "/6"
    text = ROLLBACK.format(legacy=legacy, relay=relay, redis_url=url)
    config.write_text(
        text.replace("{legacy: 50, relay: 50}", "{legacy: 0, relay: 100}").replace(
            "min_requests: 10, max_error_rate: 0.2", "min_requests: 30, max_error_rate: 0.1"
        )
    )
    replicas = [serve(config) for _ in range(3)]
    urls = [url for url, _ in replicas]
    try:
        httpx.post(f"{relay}/_sim/reset")
        httpx.post(f"{relay}/_sim/faults", json={"error_rate": 0.3, "status_code": 503})
        with replicas[0][1], replicas[1][1], replicas[2][1]:
            for url in urls:
                wait_until(lambda u=url: state(u) == "redis", 5, "shared state")
            # A point is labelled with its wall second give or take one (observe.history).
            started = int(time.time()) - 1
            for i in range(45):  # 15 per replica: each below min_requests on its own
                r = httpx.post(f"{urls[i % 3]}/v1/chat/completions", json=BODY, timeout=5)
                assert r.status_code == 200
            local_max = max(
                httpx.get(f"{u}/status").json()["backends"]["relay"]["total_requests"] for u in urls
            )
            assert local_max < 30  # no replica could have tripped on its own traffic

            def relay_status(url: str) -> dict[str, Any]:
                return dict(httpx.get(f"{url}/status").json()["backends"]["relay"])

            wait_until(
                lambda: all(relay_status(u)["circuit"] == "open" for u in urls), 5, "fleet trip"
            )
            # Global figures on every replica, once the next exchange has run (0.5 s).
            wait_until(lambda: relay_status(urls[1])["requests"] >= 30, 3, "global figures")

            def history_calls(url: str) -> int:  # every replica's ring, merged through Redis
                doc = httpx.get(f"{url}/status/history", params={"since": started}).json()
                return sum(n or 0 for n in doc["backends"]["relay"]["calls"])

            relay_calls = sum(relay_status(u)["total_requests"] for u in urls)  # each its own
            assert relay_calls >= 30
            wait_until(
                lambda: all(history_calls(u) == relay_calls for u in urls), 5, "fleet history"
            )
    finally:
        httpx.post(f"{relay}/_sim/faults", json={"error_rate": 0})
