"""Graceful drain on SIGTERM, end to end: a real ``canary serve`` in front of real
``canary simulate`` processes, slow streams read by the official openai client."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import openai
import pytest

from canary.config.loader import load_config
from canary.errors import ConfigError
from tests.helpers import free_port, run_process, simulator, wait_until

REPLY = "Hello from legacy! This is a simulated reply."  # what the simulator streams
CHUNKS = 9  # 8 words, then an empty delta with finish_reason; [DONE] after them
QUICK = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}

ROUTES = """
backends:
  legacy: {{base_url: "{legacy}/v1", timeout_s: 30}}
  stuck: {{base_url: "{stuck}/v1", timeout_s: 30}}
routes:
  - name: stuck
    match: {{headers: {{x-test: stuck}}}}
    weights: {{stuck: 100}}
  - name: all
    weights: {{legacy: 100}}
server:
  drain_timeout_s: {drain_timeout_s}
"""

# --- unit: the config key -----------------------------------------------------------------


def test_drain_timeout_defaults_to_30_s_and_is_read(tmp_path: Path) -> None:
    """server.drain_timeout_s is 30 s when absent and takes decimals when given."""
    path = tmp_path / "routes.yaml"
    base = "backends: {legacy: {base_url: 'http://127.0.0.1:1/v1'}}\n"
    base += "routes: [{name: all, weights: {legacy: 1}}]\n"
    path.write_text(base)
    assert load_config(str(path)).server.drain_timeout_s == 30.0
    path.write_text(base + "server: {drain_timeout_s: 2.5}\n")
    assert load_config(str(path)).server.drain_timeout_s == 2.5
    path.write_text(base + "server: {drain_timeout_s: 0}\n")
    assert load_config(str(path)).server.drain_timeout_s == 0.0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("-1", "must be >= 0", id="negative"),
        pytest.param("7200", "must be <= 3600", id="absurd"),
        pytest.param(".nan", "must be a finite number", id="nan"),
        pytest.param("soon", "must be a number, not a string", id="text"),
    ],
)
def test_bad_drain_timeout_is_a_located_error(tmp_path: Path, value: str, message: str) -> None:
    """A bad server.drain_timeout_s names the file, the line and the key path."""
    path = tmp_path / "routes.yaml"
    path.write_text(
        "backends: {legacy: {base_url: 'http://127.0.0.1:1/v1'}}\n"
        "routes: [{name: all, weights: {legacy: 1}}]\n"
        "server:\n"
        f"  drain_timeout_s: {value}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert f"{path}:4: server.drain_timeout_s: {message}" in str(caught.value)


# --- end to end -------------------------------------------------------------------------


@dataclass
class Sims:
    legacy: str
    stuck: str


@pytest.fixture(scope="module")
def sims() -> Iterator[Sims]:
    """legacy streams slowly (its chunk delay set per test); stuck never answers."""
    legacy, stuck = free_port(), free_port()
    hang = [sys.executable, "-m", "canary", "simulate", "--port", str(stuck), "--hang"]
    with (
        simulator(legacy, "legacy"),
        run_process(hang, f"http://127.0.0.1:{stuck}/_sim/stats"),
    ):
        yield Sims(f"http://127.0.0.1:{legacy}", f"http://127.0.0.1:{stuck}")


def chunk_delay(sims: Sims, ms: float) -> None:
    httpx.post(f"{sims.legacy}/_sim/faults", json={"chunk_delay_ms": ms}).raise_for_status()


@dataclass
class Router:
    url: str
    process: Any
    log: IO[bytes]

    def events(self, name: str) -> list[dict[str, Any]]:
        self.log.flush()
        self.log.seek(0)
        found = []
        for line in self.log.read().decode(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and event.get("event") == name:
                    found.append(event)
        return found


@contextlib.contextmanager
def router(sims: Sims, tmp_path: Path, *args: str, drain_timeout_s: float = 30) -> Iterator[Router]:
    config = tmp_path / "routes.yaml"
    config.write_text(
        ROUTES.format(legacy=sims.legacy, stuck=sims.stuck, drain_timeout_s=drain_timeout_s)
    )
    port = free_port()
    cmd = [sys.executable, "-m", "canary", "serve", "-c", str(config), "--port", str(port)]
    with (
        tempfile.TemporaryFile() as log,
        run_process([*cmd, *args], f"http://127.0.0.1:{port}/readyz", 20, output=log) as process,
    ):
        yield Router(f"http://127.0.0.1:{port}", process, log)


@dataclass
class Streams:
    """``n`` streamed chat completions read in threads; ``started`` once each has a chunk."""

    url: str
    n: int
    started: threading.Barrier = field(init=False)
    pool: concurrent.futures.ThreadPoolExecutor = field(init=False)
    futures: list[concurrent.futures.Future[tuple[str, str | None, int]]] = field(init=False)

    def __post_init__(self) -> None:
        self.started = threading.Barrier(self.n + 1)
        self.pool = concurrent.futures.ThreadPoolExecutor(self.n)
        self.futures = [self.pool.submit(self._read) for _ in range(self.n)]

    def _read(self) -> tuple[str, str | None, int]:
        client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="x", max_retries=0, timeout=30)
        try:
            text, finish, chunks = "", None, 0
            stream = client.chat.completions.create(
                model="gpt-4.1", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            for chunk in stream:
                if chunks == 0:
                    self.started.wait(10)
                chunks += 1
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
            return text, finish, chunks
        finally:
            client.close()

    def wait_started(self) -> None:
        self.started.wait(10)

    def done(self) -> bool:
        return all(f.done() for f in self.futures)

    def results(self) -> list[tuple[str, str | None, int]]:
        try:
            return [f.result(timeout=20) for f in self.futures]
        finally:
            self.pool.shutdown(wait=True)


def readyz(url: str) -> int:
    return httpx.get(f"{url}/readyz", timeout=5).status_code


def refused(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return False
    except ConnectionRefusedError:
        return True


@pytest.mark.e2e
def test_sigterm_drains_every_stream_in_flight_and_exits_0(sims: Sims, tmp_path: Path) -> None:
    """8 streams of ~3 s and SIGTERM: readyz 503 and new calls served during the grace,
    then the port refuses while the streams finish whole; exit 0, drained with cut=0."""
    chunk_delay(sims, 350)
    with router(sims, tmp_path, "--drain-grace-s", "1.5", "--drain-timeout-s", "20") as r:
        streams = Streams(r.url, 8)
        streams.wait_started()
        t0 = time.monotonic()
        r.process.send_signal(signal.SIGTERM)

        ready = httpx.get(f"{r.url}/readyz", timeout=5)  # a new connection, in the grace
        assert (ready.status_code, ready.json()) == (503, {"status": "draining"})
        assert httpx.get(f"{r.url}/healthz", timeout=5).status_code == 200
        quick = httpx.post(f"{r.url}/v1/chat/completions", json=QUICK, timeout=5)
        assert quick.status_code == 200  # still accepted and answered: the grace
        in_grace = time.monotonic() - t0

        wait_until(lambda: refused(r.url), 10, "the port refusing new connections")
        refused_at = time.monotonic() - t0
        streams_running = not streams.done()
        results = streams.results()
        r.process.wait(timeout=15)
        exited_at = time.monotonic() - t0

        drained = r.events("server.drained")
        draining = r.events("server.draining")
    print(
        f"\n[drain] grace 1.5 s: calls answered until {in_grace:.2f} s, refused from "
        f"{refused_at:.2f} s (streams still running: {streams_running}), exit at "
        f"{exited_at:.2f} s with {r.process.returncode}; {draining} {drained}"
    )
    assert results == [(REPLY, "stop", CHUNKS)] * 8  # every stream whole, none cut
    assert r.process.returncode == 0
    assert refused_at >= 1.5  # not before the grace ended
    assert streams_running  # the port closed while streams were still in flight
    assert [(e["in_flight"], e["grace_s"], e["timeout_s"]) for e in draining] == [(8, 1.5, 20.0)]
    assert len(drained) == 1 and drained[0]["cut"] == 0
    assert drained[0]["finished"] >= 8 + 1  # the streams and the call made in the grace


@pytest.mark.e2e
def test_a_stream_longer_than_the_drain_timeout_is_cut_cleanly(sims: Sims, tmp_path: Path) -> None:
    """server.drain_timeout_s 1: a 7 s stream ends with an error event the client raises,
    a call not answered yet gets 503 shutting_down, and the process exits 0 soon after."""
    chunk_delay(sims, 800)
    with router(sims, tmp_path, drain_timeout_s=1) as r:  # loopback: no grace by default
        client = openai.OpenAI(base_url=f"{r.url}/v1", api_key="x", max_retries=0, timeout=30)
        streams = Streams(r.url, 2)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            stuck = pool.submit(
                client.chat.completions.create,
                model="gpt-4.1",
                messages=[{"role": "user", "content": "hi"}],
                extra_headers={"x-test": "stuck"},
            )
            streams.wait_started()
            wait_until(lambda: upstream_in_flight(sims.stuck) == 1, 5, "the stuck call upstream")
            t0 = time.monotonic()
            r.process.send_signal(signal.SIGTERM)
            r.process.wait(timeout=10)
            exited_at = time.monotonic() - t0
            with pytest.raises(openai.APIStatusError) as not_answered:
                stuck.result(timeout=5)
        cut = []
        for future in streams.futures:
            with pytest.raises(openai.APIError) as caught:
                future.result(timeout=5)
            cut.append(caught.value)
        streams.pool.shutdown()
        client.close()
        drained = r.events("server.drained")
    print(f"\n[drain] timeout 1 s: exit {r.process.returncode} at {exited_at:.2f} s; {drained}")
    assert r.process.returncode == 0
    assert exited_at < 6  # 1 s of drain, 2 s at most for the cut calls to end, start-up slack
    assert [e.code for e in cut] == ["shutting_down", "shutting_down"]
    assert not_answered.value.status_code == 503
    assert "shutting_down" in not_answered.value.response.text
    assert [(e["in_flight"], e["cut"]) for e in drained] == [(3, 3)]


@pytest.mark.e2e
def test_a_second_ctrl_c_cuts_the_drain_short(sims: Sims, tmp_path: Path) -> None:
    """Ctrl-C starts the 20 s drain; a second Ctrl-C ends it: the stream is cut cleanly and
    the process exits within the cut's own bounded wait."""
    chunk_delay(sims, 800)
    with router(sims, tmp_path, "--drain-timeout-s", "20") as r:
        streams = Streams(r.url, 1)
        streams.wait_started()
        r.process.send_signal(signal.SIGINT)
        wait_until(lambda: r.events("server.draining") != [], 5, "the drain to begin")
        t0 = time.monotonic()
        r.process.send_signal(signal.SIGINT)
        r.process.wait(timeout=10)
        exited_at = time.monotonic() - t0
        with pytest.raises(openai.APIError) as caught:
            streams.futures[0].result(timeout=5)
        streams.pool.shutdown()
        drained = r.events("server.drained")
    assert r.process.returncode == 0
    assert exited_at < 5  # not the 20 s drain timeout
    assert caught.value.code == "shutting_down"
    assert [e["cut"] for e in drained] == [1]


def upstream_in_flight(base: str) -> int:
    return int(httpx.get(f"{base}/_sim/stats", timeout=2).json()["in_flight"])


@pytest.mark.e2e
def test_workers_each_drain_and_the_parent_exits_0(sims: Sims, tmp_path: Path) -> None:
    """--workers 2: the parent's SIGTERM reaches both workers; all streams finish whole."""
    chunk_delay(sims, 300)
    with router(sims, tmp_path, "--workers", "2", "--drain-grace-s", "0.5") as r:
        streams = Streams(r.url, 6)
        streams.wait_started()
        r.process.send_signal(signal.SIGTERM)
        wait_until(lambda: readyz(r.url) == 503, 5, "readyz 503 once the workers drain")
        results = streams.results()
        r.process.wait(timeout=15)
        draining = r.events("server.draining")
        drained = r.events("server.drained")
        stopped = r.events("server.stopped")
    print(f"\n[drain] 2 workers: {draining} {drained} {stopped}")
    assert results == [(REPLY, "stop", CHUNKS)] * 6
    assert r.process.returncode == 0
    assert len(draining) == 2 and sum(e["in_flight"] for e in draining) == 6
    assert len(drained) == 2 and sum(e["cut"] for e in drained) == 0
    assert stopped and stopped[0]["exitcodes"] == [0, 0]


@pytest.mark.e2e
def test_a_sigterm_while_workers_start_drains_them_instead_of_killing_them(
    sims: Sims, tmp_path: Path
) -> None:
    """SIGTERM right after the workers are spawned (still importing): every worker exits 0."""
    config = tmp_path / "routes.yaml"
    config.write_text(ROUTES.format(legacy=sims.legacy, stuck=sims.stuck, drain_timeout_s=5))
    cmd = [sys.executable, "-m", "canary", "serve", "-c", str(config), "--workers", "2"]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [*cmd, "--port", str(free_port())], stdout=log, stderr=subprocess.STDOUT
        )
        try:
            r = Router("", process, log)
            wait_until(lambda: bool(r.events("server.started")), 10, "the workers spawned")
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=20) == 0
            assert r.events("server.stopped")[0]["exitcodes"] == [0, 0]
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
