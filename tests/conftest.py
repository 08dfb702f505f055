"""Fixtures shared by every test folder; the helpers they use live in ``tests/helpers.py``."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import RedisServer, Stack, free_port, run_process, simulator, stack_routes


@pytest.fixture(scope="module")
def sims() -> Iterator[tuple[str, str]]:
    """Two simulated providers, legacy and relay, shared by one test module."""
    ports = free_port(), free_port()
    with simulator(ports[0], "legacy"), simulator(ports[1], "relay"):
        yield f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the whole test session, always stopped at the end."""
    import shutil  # (here, so the helpers above stay as they were)

    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (.ci/run installs it with apt-get)")
    server = RedisServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def stack_factory(sims: tuple[str, str], tmp_path: Path) -> Iterator[Any]:
    """Start a router on the shared simulators; faults and stats are reset per test."""
    legacy, relay = sims
    started: list[Any] = []

    def start(
        text: str | None = None,
        *,
        env: dict[str, str] | None = None,
        args: list[str] = (),  # type: ignore[assignment]
    ) -> Stack:
        for base in sims:
            httpx.post(base + "/_sim/reset").raise_for_status()
            httpx.post(
                base + "/_sim/faults",
                json={
                    "latency_ms": 0,
                    "chunk_delay_ms": 0,
                    "error_rate": 0,
                    "cut_after": None,
                    "truncate_rate": 0.0,
                    "hang": False,
                    "echo_model": None,
                    "prompt_token_factor": 1.0,
                    "reply_scale": 1.0,
                    "reply_text": None,
                    "session_refuse_status": None,
                    "session_cut_after": None,
                },
            ).raise_for_status()
        config = tmp_path / f"routes{len(started)}.yaml"
        config.write_text(text or stack_routes())
        port = free_port()
        log = tempfile.TemporaryFile()
        cm = run_process(
            [
                sys.executable,
                "-m",
                "canary",
                "serve",
                "-c",
                str(config),
                "--port",
                str(port),
                *args,
            ],
            f"http://127.0.0.1:{port}/readyz",
            output=log,
            env={
                "LEGACY_BASE_URL": f"{legacy}/v1",
                "RELAY_BASE_URL": f"{relay}/v1",
                **(env or {}),
            },
        )
        router = cm.__enter__()
        stack = Stack(f"http://127.0.0.1:{port}", legacy, relay, config, router, log)
        started.append((cm, stack))
        return stack

    yield start
    for cm, stack in reversed(started):
        for c in stack.clients:
            c.close()
        cm.__exit__(None, None, None)
        stack.log.close()


@pytest.fixture
def stack(stack_factory: Any) -> Stack:
    return stack_factory()  # type: ignore[no-any-return]
