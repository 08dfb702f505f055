"""Composition root: ``create_app`` builds canary; the lifespan owns its process resources.

Two planes behind one ASGI callable: ``/v1/*`` goes straight to the raw ``Proxy`` (the
hot path), everything else to a small Starlette app (``/status``, ``/healthz``,
``/readyz``, ``/admin/reload``). Seams are injected: the upstream ``transport`` (an
``httpx.MockTransport`` in unit tests), the ``clock`` and the ``rng``. Nothing happens at
import time; the config is loaded, the file watch started and the transport opened in
the lifespan, and closed there too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import random
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import orjson
import structlog
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from canary.config.model import Config, bearer_digest
from canary.config.store import ConfigStore
from canary.errors import RouterError
from canary.fleet.membership import Membership
from canary.fleet.shared import SharedBreakers, SharedWindows
from canary.fleet.workers import Fleet
from canary.observe.dashboard import dashboard_routes
from canary.observe.logs import redactor
from canary.observe.meter import Meter
from canary.observe.metrics import CONTENT_TYPE
from canary.observe.metrics import render as render_metrics
from canary.observe.status import status_document
from canary.proxy.app import Proxy
from canary.proxy.transport import AiohttpTransport
from canary.safety.breaker import Breakers
from canary.safety.failover import FailoverLimiter
from canary.safety.limits import MemoryLimiter, RedisLimiter
from canary.safety.windows import Stats
from canary.serve.drain import Traffic
from canary.types import Clock

log = structlog.get_logger("canary.serve.app")

# Keep pooled upstream connections for less time than providers keep them idle (uvicorn
# and most providers: 5 s or more), so the router never writes into one they closed.
POOL_KEEPALIVE_S = 4.0


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _error(exc: RouterError) -> Response:
    headers = {k.decode(): v.decode() for k, v in exc.headers()}
    return Response(
        exc.body(), status_code=exc.status, media_type="application/json", headers=headers
    )


class Canary:
    """The ASGI app: ``/v1/*`` to the proxy, the rest to the control plane.

    Every HTTP call passes ``traffic``, which counts it and can end it cleanly when a
    drain times out (``canary.serve.drain``).
    """

    def __init__(
        self,
        control: Starlette,
        proxy: Proxy,
        store: ConfigStore,
        stats: Stats,
        breakers: Breakers,
        traffic: Traffic,
    ) -> None:
        self.control = control
        self.proxy = proxy
        self.store = store
        self.stats = stats
        self.breakers = breakers
        self.traffic = traffic

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.control(scope, receive, send)  # the lifespan
        elif scope["path"].startswith("/v1/"):
            await self.traffic.run(self.proxy, scope, receive, send)
        else:
            await self.traffic.run(self.control, scope, receive, send)


def create_app(
    config_path: str,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Clock = time.monotonic,
    rng: random.Random | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    watch: bool = True,
    watch_interval_s: float = 0.25,
    signals: bool = False,
    access_log: bool = True,
    limit_share: float = 1.0,
    fleet_dir: str | None = None,
) -> Canary:
    """Build the router for ``config_path``; ``signals`` installs SIGHUP (serve only).

    ``limit_share`` is this process's part of each backend's limits: with N workers on
    in-process state, each takes 1/N so the host as a whole keeps them. ``fleet_dir`` is
    the directory through which the workers of one ``serve --workers N`` share their
    figures (``canary.fleet.workers``).
    """
    store = ConfigStore(config_path)
    traffic = Traffic()
    stats = Stats(window_s=60.0, clock=clock)
    breakers = Breakers(stats, clock)
    meter = Meter(clock)
    limiter = MemoryLimiter(clock=clock, share=limit_share)
    proxy = Proxy(
        store,
        stats,
        breakers,
        limiter,
        transport or AiohttpTransport(keepalive_s=POOL_KEEPALIVE_S),
        meter,
        clock=clock,
        rng=rng or random.Random(),
        sleep=sleep,
        access_log=access_log,
    )

    def on_config(old: Config | None, new: Config) -> None:
        stats.resize(new.rollback.window_s)
        breakers.apply(old, new)
        # Keep the old keys masked too: requests still running on the old config log them.
        redactor.update(new.secrets() | (old.secrets() if old else frozenset()))

    store.listeners.append(on_config)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        store.load_initial()
        shared: FailoverLimiter | None = None
        membership: Membership | None = None
        sharing: SharedBreakers | None = None
        windows: SharedWindows | None = None
        client: Redis | None = None
        listen_client: Redis | None = None
        replica_id = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        if store.config is not None and store.config.state.redis_url:
            # Shared limits across replicas; Redis down at start-up must not stop us serving.
            client = Redis.from_url(
                store.config.state.redis_url, socket_timeout=0.25, socket_connect_timeout=0.25
            )
            shared = FailoverLimiter(RedisLimiter(client))
            membership = Membership(shared, replica_id)
            await membership.start()
            proxy.limiter = shared
            # pub/sub blocks on reads: its own connection, without the 0.25 s read timeout
            listen_client = Redis.from_url(
                store.config.state.redis_url, socket_connect_timeout=0.25
            )
            sharing = SharedBreakers(listen_client, breakers, replica_id)
            await sharing.start()
            windows = SharedWindows(
                client, stats, breakers, replica_id, forget_on_failure=fleet_dir is None
            )
            await windows.start()
        if fleet_dir is not None:
            fleet = Fleet(
                fleet_dir,
                replica_id,
                stats,
                breakers,
                meter,
                # while Redis answers, SharedWindows covers the workers too
                share_windows=lambda: windows is None or not windows.healthy,
            )
            await fleet.start()
            fleets.append(fleet)
        tasks: set[asyncio.Task[Any]] = set()
        loop = asyncio.get_running_loop()
        if watch:
            tasks.add(loop.create_task(store.watch(watch_interval_s)))
        if signals:

            def on_sighup() -> None:
                task = loop.create_task(store.reload(reason="SIGHUP"))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

            loop.add_signal_handler(signal.SIGHUP, on_sighup)
        try:
            yield
        finally:
            if signals:
                loop.remove_signal_handler(signal.SIGHUP)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for fleet in fleets:
                await fleet.aclose()
            fleets.clear()
            await limiter.aclose()
            if windows is not None:
                await windows.aclose()
            if sharing is not None and listen_client is not None:
                await sharing.aclose()
                await listen_client.aclose()
            if shared is not None and membership is not None and client is not None:
                await membership.aclose()
                await shared.aclose()
                await client.aclose()
                proxy.limiter = limiter
            await proxy.transport.aclose()

    fleets: list[Fleet] = []  # this worker's exchange with its siblings, while serving

    def document() -> tuple[dict[str, Any], Meter]:
        state = getattr(proxy.limiter, "state", "memory")  # FailoverLimiter: redis | degraded
        fleet = fleets[0] if fleets else None
        merged = fleet.merged_meter() if fleet else meter
        doc = status_document(store, stats, breakers, merged, state, fleet)
        doc["draining"] = traffic.draining  # SIGTERM received: finishing what is in flight
        return doc, merged

    async def status(_: Request) -> Response:
        return _json(document()[0])

    async def metrics(_: Request) -> Response:
        return Response(render_metrics(*document()), media_type=CONTENT_TYPE)

    async def healthz(_: Request) -> Response:
        return _json({"status": "ok"})

    async def readyz(_: Request) -> Response:
        if traffic.draining:  # SIGTERM: let load balancers move on before we stop accepting
            return _json({"status": "draining"}, 503)
        if store.config is None:
            return _json({"status": "no valid config", "error": store.error}, 503)
        return _json({"status": "ready", "version": store.config.version})

    async def admin_reload(request: Request) -> Response:
        try:
            _check_admin(store.config, request.headers.get("authorization"))
        except RouterError as exc:
            return _error(exc)
        result = await store.reload(reason="admin")
        body = {"applied": result.applied, "changed": result.changed, "version": result.version}
        if not result.applied:
            return _json({**body, "error": result.error}, 422)
        return _json(body)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        code = "not_found" if status == 404 else "method_not_allowed"
        return _error(
            RouterError(
                f"{request.method} {request.url.path}: {code.replace('_', ' ')}.",
                code=code,
                status=status,
            )
        )

    control = Starlette(
        routes=[
            Route("/status", status),
            Route("/metrics", metrics),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/admin/reload", admin_reload, methods=["POST"]),
            *dashboard_routes(),
        ],
        exception_handlers={404: not_found, 405: not_found},
        lifespan=lifespan,
    )
    return Canary(control, proxy, store, stats, breakers, traffic)


def _check_admin(cfg: Config | None, authorization: str | None) -> None:
    if cfg is None or cfg.auth.admin_token_digest is None:
        raise RouterError(
            "Admin endpoints are off: set auth.admin_token (e.g. CANARY_ADMIN_TOKEN) to use them.",
            code="admin_disabled",
            status=403,
        )
    if not hmac.compare_digest(bearer_digest(authorization), cfg.auth.admin_token_digest):
        raise RouterError("Missing or invalid admin token.", code="invalid_admin_token", status=401)


__all__ = ["Canary", "create_app"]
