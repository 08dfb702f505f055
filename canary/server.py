"""Run the router under uvicorn (uvloop + httptools), in one process or in N workers.

With ``--workers N`` the parent binds the socket once and starts N spawned workers that
share it; each worker loads routes.yaml, watches it and reloads it on its own. The
parent forwards SIGHUP to every worker (uvicorn's own supervisor would restart them on
SIGHUP, which drops a worker's last good config when the file on disk is bad), forwards
SIGINT/SIGTERM for a graceful stop, and restarts a worker that dies. The workers share
their figures through a private directory the parent makes (``canary.fleet``), so any
worker's ``/status`` and ``/metrics`` describe the whole server.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from types import FrameType

import structlog
import uvicorn

from canary import logs
from canary.app import create_app
from canary.signals import stop_signals_return

log = structlog.get_logger("canary.server")

GRACEFUL_SHUTDOWN_S = 30.0


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
    fleet_dir: str | None = None  # set by the parent of N workers (canary.fleet)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_worker(sock: socket.socket, options: ServeOptions) -> None:
    """One uvicorn server on an already bound socket (in this process)."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the app installs its reload handler
    logs.configure(json=options.log_json, level=options.log_level)
    app = create_app(
        options.config_path,
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
        lifespan="on",
        access_log=False,
        log_config=None,
        log_level="warning",
        timeout_keep_alive=75,
        timeout_graceful_shutdown=int(GRACEFUL_SHUTDOWN_S),
        server_header=False,
        proxy_headers=False,  # do not trust X-Forwarded-For from whoever connects
    )
    with stop_signals_return():
        uvicorn.Server(config).run(sockets=[sock])


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

    def spawn() -> BaseProcess:
        p = ctx.Process(target=run_worker, args=(sock, options), daemon=False)
        p.start()
        return p

    workers = [spawn() for _ in range(options.workers)]
    log.info("server.started", workers=options.workers, pids=[p.pid for p in workers])

    def on_stop(signum: int, _: FrameType | None) -> None:
        stop.set()

    def on_hup(signum: int, _: FrameType | None) -> None:
        for p in workers:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signal.SIGHUP)

    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
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
    for p in workers:
        if p.pid is not None and p.is_alive():
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACEFUL_SHUTDOWN_S + 5
    for p in workers:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(5)
    sock.close()
    log.info("server.stopped")
    return 0
