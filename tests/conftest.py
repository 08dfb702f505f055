"""Helpers for end-to-end tests: free ports, real processes, bounded polling.

Processes only ever bind 127.0.0.1. Readiness and settling are polled against a
deadline, never waited for with a fixed sleep.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that the OS reported free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def canary(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``canary ARGS`` as a real process from the repository root; output captured."""
    return subprocess.run(
        [sys.executable, "-m", "canary", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


def prometheus_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text, parsed by prometheus-client: (name, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(
    samples: Mapping[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """One sample's value from ``prometheus_samples``; KeyError when it is not there."""
    return samples[(name, tuple(sorted(labels.items())))]


def wait_until(condition: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or condition}")
        time.sleep(0.01)


@contextlib.contextmanager
def run_process(
    args: list[str],
    ready_url: str,
    timeout: float = 10,
    *,
    output: IO[bytes] | None = None,
    cwd: Path | str = ROOT,
    env: Mapping[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``args`` until the block ends; ready once ``ready_url`` answers 200.

    stdout and stderr go to ``output`` (a temporary file unless given) and are printed
    to stderr when the process fails to start, dies early or the block raises, so
    pytest shows them with the failure. The process is always stopped: SIGTERM, then
    SIGKILL if it has not exited within five seconds.
    """
    with contextlib.ExitStack() as stack:
        if output is None:
            output = stack.enter_context(tempfile.TemporaryFile())
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, **env} if env is not None else None,
        )
        failed = True
        try:
            _wait_ready(process, " ".join(args), ready_url, timeout)
            yield process
            failed = False
        finally:
            died = process.poll() is not None and process.returncode not in (0, -15)
            _stop(process)
            if failed or died:
                sys.stderr.write(f"--- output of {' '.join(args)} ---\n{_read(output)}\n")


def _wait_ready(process: subprocess.Popen[bytes], name: str, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1.0) as client:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode} before ready")
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready at {url} within {timeout} s")
            time.sleep(0.02)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _read(output: IO[bytes]) -> str:
    output.flush()
    output.seek(0)
    return output.read().decode(errors="replace")


def simulator(port: int, name: str) -> contextlib.AbstractContextManager[Any]:
    """``canary simulate`` as a real process on ``port``, ready when it answers."""
    args = [sys.executable, "-m", "canary", "simulate", "--port", str(port), "--name", name]
    return run_process(args, f"http://127.0.0.1:{port}/_sim/stats")


@pytest.fixture(scope="module")
def sims() -> Iterator[tuple[str, str]]:
    """Two simulated providers, legacy and relay, shared by one test module."""
    ports = free_port(), free_port()
    with simulator(ports[0], "legacy"), simulator(ports[1], "relay"):
        yield f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}"


class RedisServer:
    """A real ``redis-server`` on a free 127.0.0.1 port; a test may stop and start it again.

    No persistence. ``start`` waits (bounded) until PING answers; ``url`` stays the same
    across restarts, so clients reconnect by themselves.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process: subprocess.Popen[bytes] | None = None
        self._output = tempfile.TemporaryFile()

    def start(self, timeout: float = 10.0) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no"]
        self._process = process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            cwd=tempfile.gettempdir(),  # redis-server writes nothing, but never into the repo
        )
        try:
            wait_until(lambda: self._pong(process), timeout, f"redis-server PING on {self.port}")
        except BaseException:
            self.stop()
            sys.stderr.write(f"--- output of redis-server ---\n{_read(self._output)}\n")
            raise

    def stop(self) -> None:
        if self._process is not None:
            _stop(self._process)
            self._process = None

    def close(self) -> None:
        self.stop()
        self._output.close()

    def _pong(self, process: subprocess.Popen[bytes]) -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {process.returncode} before ready")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


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
