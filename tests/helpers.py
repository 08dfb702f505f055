"""Shared test helpers: free ports, real processes, bounded polling, limiter calls, the
in-process app with a recording upstream, and the end-to-end stack of a router and two
simulators.

Processes only ever bind 127.0.0.1. Readiness and settling are polled against a
deadline, never waited for with a fixed sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
import openai
import pytest
from asgi_lifespan import LifespanManager

from canary.errors import RateLimited
from canary.safety.limits import Lease, Limiter
from canary.serve.app import create_app

_Served = TypeVar("_Served", bound=socketserver.BaseServer)

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


def let_time_pass(clock_file: Path, seconds: float) -> None:
    """Set a router's clock ``seconds`` ahead of real time, for every worker at once: the
    file named by ``$CANARY_CLOCK_OFFSET_FILE`` (``canary.serve.server.OffsetClock``)."""
    tmp = clock_file.with_suffix(".tmp")
    tmp.write_text(f"{seconds}\n")
    os.replace(tmp, clock_file)


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


@contextlib.contextmanager
def serving_in_thread(server: _Served) -> Iterator[_Served]:
    """``server`` (an ``http.server`` one) serving in a thread until the block ends."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A key and a self-signed certificate for 127.0.0.1 (openssl), in ``directory``."""
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
         "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return key, cert


@contextlib.contextmanager
def tls_front(port: int, key: Path, cert: Path) -> Iterator[int]:
    """A TLS endpoint on 127.0.0.1 relaying each connection's bytes to ``port`` (plain),
    on a loop in a thread of its own, for clients that only dial ``https://``/``wss://``.
    Yields its port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    loop = asyncio.new_event_loop()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = loop.run_until_complete(asyncio.start_server(serve, "127.0.0.1", 0, ssl=context))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        server.close()
        loop.close()


def simulator(port: int, name: str, *extra: str) -> contextlib.AbstractContextManager[Any]:
    """``canary simulate`` as a real process on ``port``, ready when it answers; ``extra``
    are more of its options (``--api-key KEY``)."""
    args = [sys.executable, "-m", "canary", "simulate", "--port", str(port), "--name", name]
    args += extra
    return run_process(args, f"http://127.0.0.1:{port}/_sim/stats")


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


# Limiters: one acquire in a line, and the refusal it ends in.


def take(
    limiter: Limiter,
    backend: str = "relay",
    *,
    concurrency: int | None = None,
    qps: float | None = None,
    wait_s: float = 0.0,
) -> Awaitable[Lease]:
    return limiter.acquire(backend, max_concurrency=concurrency, max_qps=qps, wait_s=wait_s)


async def refused(acquire: Awaitable[Lease]) -> RateLimited:
    with pytest.raises(RateLimited) as info:
        async with asyncio.timeout(5):
            await acquire
    return info.value


# In-process flow tests: the app through its lifespan, the upstream a MockTransport.

Handler = Callable[[httpx.Request], Any]


@contextlib.asynccontextmanager
async def serving(*args: Any, **kwargs: Any) -> AsyncIterator[httpx.AsyncClient]:
    """``create_app(*args, **kwargs)`` through its lifespan, with a client in front of it."""
    app = create_app(*args, **kwargs)
    async with (
        LifespanManager(app) as m,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=m.app), base_url="http://c") as c,
    ):
        yield c


async def no_sleep(seconds: float) -> None:
    """Retry back-off in flow tests: waits are configuration, not something to sit through."""


class Upstream:
    """A recording fake provider; ``handler`` decides the answer per request."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.handler: Handler = self.ok

    @staticmethod
    def ok(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            headers=[("content-type", "application/json"), ("date", "x"), ("x-up", "1")],
            stream=httpx.ByteStream(b'{"ok": true, "host": "' + request.url.host.encode() + b'"}'),
        )

    def hold(self) -> tuple[asyncio.Event, asyncio.Event]:
        """Answer only once ``release`` is set; ``arrived`` is set when a call waits."""
        arrived, release = asyncio.Event(), asyncio.Event()

        async def held(request: httpx.Request) -> httpx.Response:
            arrived.set()
            await release.wait()
            return self.ok(request)

        self.handler = held
        return arrived, release

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        result = self.handler(request)
        if asyncio.iscoroutine(result):
            result = await result
        assert isinstance(result, httpx.Response)
        return result


class Chunks(httpx.AsyncByteStream):
    """A streamed upstream body; ``fail`` raises after the chunks, like a cut connection."""

    def __init__(self, chunks: list[bytes], fail: Exception | None = None) -> None:
        self.chunks = chunks
        self.fail = fail
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.fail is not None:
            raise self.fail

    async def aclose(self) -> None:
        self.closed = True


# End to end: keys that must never show, the routes file and the running stack.

LEGACY_KEY = "sk-legacy-e2e-SECRET-111111"

RELAY_KEY = "sk-relay-e2e-SECRET-222222"

CLIENT_KEY = "ck-client-e2e-SECRET-333333"

ADMIN_TOKEN = "adm-e2e-SECRET-444444"

SECRETS = (LEGACY_KEY, RELAY_KEY, CLIENT_KEY, ADMIN_TOKEN)


ROUTES = """
backends:
  legacy:
    base_url: ${{LEGACY_BASE_URL}}
    api_key: ${{LEGACY_API_KEY:-}}
    timeout_s: 10
  relay:
    base_url: ${{RELAY_BASE_URL}}
    api_key: ${{RELAY_API_KEY:-}}
    timeout_s: 10
    model_map: {{gpt-4.1: relay-4.1}}
routes:
  - name: claude
    match:
      paths: [/v1/chat/completions]
      models: ["claude-*"]
    weights: {{legacy: 100}}
  - name: chat
    match:
      paths: [/v1/chat/completions]
    weights: {{legacy: {legacy}, relay: {relay}}}
    sticky: header:x-user-id
  - name: default
    weights: {{legacy: 100}}
auth:
  api_keys: ${{CANARY_API_KEYS:-}}
  admin_token: ${{CANARY_ADMIN_TOKEN:-}}
server:
  max_body_bytes: 100000
"""


def stack_routes(legacy: int = 100, relay: int = 0) -> str:
    return ROUTES.format(legacy=legacy, relay=relay)


@dataclass
class Stack:
    url: str
    legacy: str
    relay: str
    config: Path
    router: Any
    log: IO[bytes]
    clients: list[openai.OpenAI] = field(default_factory=list)

    def client(self, api_key: str = "unused", **kw: Any) -> openai.OpenAI:
        """An openai client for this router, closed when the test ends."""
        c = openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, **kw)
        self.clients.append(c)
        return c

    def save(self, text: str) -> None:
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config)

    def sim(self, which: str, path: str, body: dict[str, Any] | None = None) -> Any:
        base = self.legacy if which == "legacy" else self.relay
        r = httpx.post(base + path, json=body) if body is not None else httpx.get(base + path)
        r.raise_for_status()
        return r.json()

    def status(self) -> Any:
        return httpx.get(f"{self.url}/status").json()

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")
