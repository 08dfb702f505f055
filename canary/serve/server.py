"""Run the router under uvicorn (uvloop + httptools), in one process or in N workers.

With ``--workers N`` the parent binds the socket once and starts N spawned workers that
share it; each worker loads routes.yaml, watches it and reloads it on its own. The
parent forwards SIGHUP to every worker (uvicorn's own supervisor would restart them on
SIGHUP, which drops a worker's last good config when the file on disk is bad), turns
SIGINT/SIGTERM into one SIGTERM per worker, and restarts a worker that dies.

On SIGTERM every worker drains (``canary.serve.drain``): ``/readyz`` 503 at once, new
connections accepted for the grace, calls in flight finished up to the drain timeout.
The parent closes its copy of the socket at once, so the port stops accepting when the
last worker's grace ends, and exits 0 once every worker has drained and exited 0.
The workers share their figures through a private directory the parent makes
(``canary.fleet.workers``), so any worker's ``/status`` and ``/metrics`` describe the whole server.
WebSocket sessions run on ``canary.serve.websocket.SessionProtocol``: uvicorn's
``websockets-sansio`` protocol with a direct frame writer for the session relay.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import multiprocessing
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.process import BaseProcess
from types import FrameType

import structlog
import uvicorn

from canary.config.loader import load_config
from canary.errors import ConfigError
from canary.observe import logs
from canary.serve.app import create_app
from canary.serve.drain import DEFAULT_TIMEOUT_S, DrainingServer
from canary.serve.signals import stop_signals_return
from canary.serve.websocket import SessionProtocol
from canary.types import Clock

log = structlog.get_logger("canary.serve.server")

GC_THRESHOLDS = (25_000, 10, 10)  # the cycle collector's, against (700, 10, 10): tune_gc
JOIN_MARGIN_S = 10.0  # beyond grace + drain timeout: lifespan shutdown, a slow spawn


@dataclass(frozen=True, slots=True)
class ServeOptions:
    config_path: str
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    access_log: bool = True
    watch: bool = True
    log_json: bool | None = None
    log_level: str = "info"
    drain_grace_s: float = 0.0
    drain_timeout_s: float | None = None  # None: server.drain_timeout_s of routes.yaml
    fleet_dir: str | None = None  # set by the parent of N workers (canary.fleet.workers)
    clock_offset_file: str | None = None  # tests only: see OffsetClock


class OffsetClock:
    """``time.monotonic()`` plus the seconds written in a file, re-read when the file changes.

    A seam for end-to-end tests, which run the router as a real process: writing ``600``
    lets ten minutes pass for every worker at once (windows, breakers, the savings
    projection's base) where a test would otherwise wait. Set through
    ``$CANARY_CLOCK_OFFSET_FILE`` by tests; nothing else should.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._offset = 0.0

    def __call__(self) -> float:
        with contextlib.suppress(OSError, ValueError):
            st = os.stat(self.path)
            seen = (st.st_ino, st.st_mtime_ns, st.st_size)
            if seen != self._seen:
                with open(self.path, encoding="ascii") as f:
                    self._offset = float(f.read().strip() or 0)
                self._seen = seen
        return time.monotonic() + self._offset


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


# Signals a worker holds back until it can act on them (the parent blocks them around the
# spawn; a worker inherits the mask): a SIGTERM during start-up must drain, not kill it.
_HELD = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def run_worker(sock: socket.socket, options: ServeOptions) -> None:
    """One uvicorn server on an already bound socket (in this process)."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the app installs its reload handler
    logs.configure(json=options.log_json, level=options.log_level)
    clock: Clock = time.monotonic
    if options.clock_offset_file:
        log.warning("server.test_clock", file=options.clock_offset_file)
        clock = OffsetClock(options.clock_offset_file)
    app = create_app(
        options.config_path,
        clock=clock,
        signals=True,
        watch=options.watch,
        access_log=options.access_log,
        limit_share=1.0 / max(1, options.workers),  # in-process limits: each worker its part
        fleet_dir=options.fleet_dir,
    )
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        ws=SessionProtocol,  # uvicorn's websockets-sansio, and a frame writer for sessions
        lifespan="on",
        access_log=False,
        log_config=None,
        log_level="warning",
        timeout_keep_alive=75,
        server_header=False,
        proxy_headers=False,  # do not trust X-Forwarded-For from whoever connects
    )

    def drain_timeout_s() -> float:
        if options.drain_timeout_s is not None:
            return options.drain_timeout_s
        cfg = app.store.config  # the config serving when SIGTERM arrives
        return cfg.server.drain_timeout_s if cfg is not None else DEFAULT_TIMEOUT_S

    server = DrainingServer(
        config,
        app.traffic,
        grace_s=options.drain_grace_s,
        timeout_s=drain_timeout_s,
        supervised=options.workers > 1,
    )
    tune_gc()
    with stop_signals_return():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, server.handle_exit)  # a stop held back during start-up drains
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)
        server.run(sockets=[sock])


def tune_gc() -> None:
    """The cycle collector set for a proxy: rarely, and never over what start-up built.

    Its first generation runs every 700 allocations of container objects, which a proxy
    makes within a call or two, and each run walks every object of the calls in flight:
    about 7 % of a plain call's CPU with 32 in flight (``make bench``, row 5b). What a
    call allocates is freed by reference counting as it ends, whatever the threshold; a
    higher one only lets cyclic garbage (an exception's frames) wait longer, at most
    ``GC_THRESHOLDS[0]`` objects. What start-up built (modules, config) is frozen out of
    every collection."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _drain_timeout_s(options: ServeOptions) -> float:
    """The drain timeout the workers will use (for the parent's bound on waiting)."""
    if options.drain_timeout_s is not None:
        return options.drain_timeout_s
    try:
        return load_config(options.config_path).server.drain_timeout_s
    except ConfigError:
        return DEFAULT_TIMEOUT_S


def serve(options: ServeOptions) -> int:
    sock = bind(options.host, options.port)
    if options.workers <= 1:
        run_worker(sock, options)
        return 0
    return _supervise(sock, options)


def _supervise(sock: socket.socket, options: ServeOptions) -> int:
    logs.configure(json=options.log_json, level=options.log_level)
    with tempfile.TemporaryDirectory(prefix="canary-workers-") as fleet_dir:
        return _run_workers(sock, dataclasses.replace(options, fleet_dir=fleet_dir))


def _run_workers(sock: socket.socket, options: ServeOptions) -> int:
    ctx = multiprocessing.get_context("spawn")
    stop = threading.Event()

    # multiprocessing starts its resource tracker on the first spawn and unblocks SIGINT and
    # SIGTERM when it has: start it first, so the mask below holds for every worker.
    resource_tracker.ensure_running()

    def spawn() -> BaseProcess:
        p = ctx.Process(target=run_worker, args=(sock, options), daemon=False)
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
        try:
            p.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        return p

    workers: list[BaseProcess] = []

    def on_stop(signum: int, _: FrameType | None) -> None:
        stop.set()

    def on_hup(signum: int, _: FrameType | None) -> None:
        for p in workers:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signal.SIGHUP)

    # Before the first spawn: a SIGTERM from here on must reach the workers, not orphan them.
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    workers += (spawn() for _ in range(options.workers))
    log.info("server.started", workers=options.workers, pids=[p.pid for p in workers])
    _keep_alive(workers, spawn, stop)
    # The workers' copies keep accepting through their grace; ours must not outlive them,
    # or the kernel would queue connections that no one accepts.
    sock.close()
    return _stop_workers(workers, options)


def _keep_alive(
    workers: list[BaseProcess], spawn: Callable[[], BaseProcess], stop: threading.Event
) -> None:
    """Restart a worker that died until ``stop`` is set, or more than 10 die in a minute."""
    restarts: list[float] = []
    while not stop.wait(0.5):
        for i, p in enumerate(workers):
            if p.is_alive():
                continue
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < 60] + [now]
            if len(restarts) > 10:
                log.error("server.crash_loop", exitcode=p.exitcode)
                stop.set()
                break
            log.warning("server.worker_died", pid=p.pid, exitcode=p.exitcode)
            workers[i] = spawn()


def _stop_workers(workers: list[BaseProcess], options: ServeOptions) -> int:
    """SIGTERM every worker, wait for their drains (bounded), kill what outlives them."""
    for p in workers:
        if p.pid is not None and p.is_alive():
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + _drain_timeout_s(options) + JOIN_MARGIN_S  # grace included
    killed = 0
    for p in workers:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            killed += 1
            p.kill()
            p.join(5)
    codes = [p.exitcode for p in workers]
    log.info("server.stopped", exitcodes=codes, killed=killed)
    return 0 if all(code == 0 for code in codes) else 1
