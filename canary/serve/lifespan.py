"""The lifespan: load the config, then enter every process resource on one exit stack.

    transport      the upstream connection pool
    redis          (state.redis_url) calls bounded at 0.25 s; Redis down must not stop serving
    limiter        ``build_limiter``: in memory, or on Redis with memory failover
    membership     (Redis) the heartbeat: live replicas, and the probe back from degraded
    listener       (Redis) pub/sub blocks on reads: its own connection, no read timeout
    breakers       (Redis) circuit transitions published and followed
    rollout        (Redis) one replica decides the rollout (a lease), all follow
                   (else: the workers of this host, through its state file)
    windows        (Redis) window counts exchanged
    fleet          (serve --workers N) the workers' exchange through a directory
    history        the one-second ring, sampled once a second; its rows to the workers'
                   directory and to Redis (``canary.serve.history``)
    rollout        the progressive rollout's tick; without Redis, its state file
    webhooks       rollout transitions and spend alerts, POSTed from one sender
    billing        the spend audit's poller: one process of the fleet polls (a lease)
    tracing        (telemetry.traces, OTEL_*) OpenTelemetry spans; a last flush on the way out
    watcher        routes.yaml polled for changes
    SIGHUP         (serve) reload on the signal

The stack closes them bottom-up when the lifespan ends: the reload triggers stop first, the
connection pool closes last, and a step that fails to open closes what opened before it.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
from redis.asyncio import Redis

from canary.config.model import Config, Telemetry
from canary.fleet.billing_shared import Alone, HostShare, RedisShare, Share
from canary.fleet.history import ReplicaRows, WorkerRows
from canary.fleet.membership import Membership
from canary.fleet.rollout_file import file_store
from canary.fleet.rollout_shared import SharedRollout
from canary.fleet.rollout_stores import RedisStore
from canary.fleet.shared import SharedBreakers, SharedWindows
from canary.fleet.workers import Fleet
from canary.observe.history import KEEP_S, History
from canary.observe.meter import Meter
from canary.observe.tracing import OFF, Tracing, traces_on
from canary.proxy.app import Proxy
from canary.proxy.plane import Plane
from canary.proxy.sockets import AiohttpSockets
from canary.proxy.transport import AiohttpTransport, as_upstream
from canary.safety.failover import FailoverLimiter
from canary.safety.limits import MemoryLimiter
from canary.safety.redis_limiter import RedisLimiter
from canary.serve.billing import TICK_S, polling
from canary.serve.core import AppOptions, Core
from canary.serve.history import Sampling
from canary.serve.signals import on_sighup
from canary.serve.webhooks import webhooks

# Keep pooled upstream connections for less time than providers keep them idle (uvicorn
# and most providers: 5 s or more), so the router never writes into one they closed.
POOL_KEEPALIVE_S = 4.0
REDIS_TIMEOUT_S = 0.25


@dataclass(frozen=True, slots=True)
class Running:
    """What a lifespan opened, for requests and ``/status`` while it runs."""

    proxy: Proxy
    limiter: MemoryLimiter | FailoverLimiter
    fleet: Fleet | None  # this worker's exchange with its siblings (serve --workers N)
    history: Sampling  # the last 15 minutes, for /status/history

    @property
    def state(self) -> str:
        """``/status`` ``state``: memory, or redis | degraded."""
        return self.limiter.state if isinstance(self.limiter, FailoverLimiter) else "memory"


def build_limiter(redis: Redis | None, options: AppOptions) -> MemoryLimiter | FailoverLimiter:
    """The one place that decides: this process's share in memory, or Redis with failover."""
    if redis is None:
        return MemoryLimiter(clock=options.clock, share=options.limit_share)
    return FailoverLimiter(RedisLimiter(redis))


@contextlib.asynccontextmanager
async def running(core: Core, options: AppOptions) -> AsyncIterator[Running]:
    """Load routes.yaml and open what serving needs; everything is closed on the way out."""
    core.store.load_initial()
    cfg = core.store.config
    redis_url = cfg.state.redis_url if cfg is not None else None
    replica_id = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
    async with contextlib.AsyncExitStack() as stack:
        transport = await stack.enter_async_context(_transport(options))
        redis = None
        if redis_url:
            redis = await stack.enter_async_context(_redis(redis_url, read_timeout=True))
        limiter = build_limiter(redis, options)
        await stack.enter_async_context(limiter)
        windows = None
        if redis_url and isinstance(limiter, FailoverLimiter):
            windows = await _share_state(stack, core, limiter, redis_url, replica_id, options)
        fleet = None
        if options.fleet_dir is not None:
            fleet = await stack.enter_async_context(
                _fleet(core, options.fleet_dir, replica_id, windows)
            )
        history = await stack.enter_async_context(
            _history(core, options, replica_id, limiter if redis_url else None)
        )
        if not redis_url:  # the workers of this host share the rollout through its file
            store = file_store(core.store.path)
            await stack.enter_async_context(SharedRollout(store, core.rollouts, replica_id))
        await stack.enter_async_context(
            webhooks(
                core.store, core.rollouts, core.billing.alerts, options.transport, options.sleep
            )
        )
        share, meter = _billing_share(limiter, fleet, options, replica_id)
        await stack.enter_async_context(
            polling(
                core.store, core.billing, share, meter or (lambda: core.meter), options.transport
            )
        )
        await stack.enter_async_context(core.rollouts.ticking(options.rollout_tick_s))
        if options.watch:
            await stack.enter_async_context(core.store.watching(options.watch_interval_s))
        if options.signals:
            await stack.enter_async_context(on_sighup(lambda: core.store.reload(reason="SIGHUP")))
        sockets = None
        if isinstance(transport, AiohttpTransport):  # sessions need a real pool
            sockets = await stack.enter_async_context(AiohttpSockets(transport.pool().connector))
        tracing = options.tracing or _tracing(cfg)
        stack.push_async_callback(tracing.aclose)
        proxy = _proxy(core, options, limiter, transport, sockets, tracing)
        stack.push_async_callback(proxy.plane.shadows.aclose)  # copies end before the transport
        yield Running(proxy, limiter, fleet, history)


async def _share_state(
    stack: contextlib.AsyncExitStack,
    core: Core,
    limiter: FailoverLimiter,
    url: str,
    replica_id: str,
    options: AppOptions,
) -> SharedWindows:
    """Replicas on one Redis: membership, circuit transitions and window counts."""
    await stack.enter_async_context(Membership(limiter, replica_id))
    listener = await stack.enter_async_context(_redis(url, read_timeout=False))
    await stack.enter_async_context(SharedBreakers(listener, core.breakers, replica_id))
    store = RedisStore(limiter.redis.client)
    await stack.enter_async_context(SharedRollout(store, core.rollouts, replica_id))
    windows = SharedWindows(
        limiter.redis.client,
        core.stats,
        core.breakers,
        replica_id,
        forget_on_failure=options.fleet_dir is None,
    )
    return await stack.enter_async_context(windows)


def _billing_share(
    limiter: MemoryLimiter | FailoverLimiter,
    fleet: Fleet | None,
    options: AppOptions,
    replica_id: str,
) -> tuple[Share, Callable[[], Meter] | None]:
    """Who polls the bills, and whose meter they are held against (SPEC §11): with Redis,
    one replica and every replica's own meter summed there; the workers of one host, one
    of them and their merged meter; else this process."""
    if isinstance(limiter, FailoverLimiter):
        lease_ms = int(4 * TICK_S * 1000)
        return RedisShare(limiter.redis.client, replica_id, lease_ms), None
    if fleet is not None and options.fleet_dir is not None:
        return HostShare(options.fleet_dir), fleet.merged_meter
    return Alone(), None


def _tracing(cfg: Config | None) -> Tracing:
    """``OFF``, or spans over OTLP: opentelemetry is imported only then (SPEC §12)."""
    if not traces_on(cfg.telemetry if cfg is not None else Telemetry(), os.environ):
        return OFF
    from canary.observe.otel import otlp_tracing

    return otlp_tracing(os.environ)


def _history(
    core: Core,
    options: AppOptions,
    replica_id: str,
    limiter: MemoryLimiter | FailoverLimiter | None,
) -> Sampling:
    ring = History(core.store, core.stats, core.breakers, core.meter)
    workers = replicas = None
    if options.fleet_dir is not None:
        workers = WorkerRows(options.fleet_dir, replica_id, KEEP_S)
    if isinstance(limiter, FailoverLimiter):
        replicas = ReplicaRows(limiter.redis.client, replica_id, KEEP_S)
    return Sampling(ring, workers, replicas)


def _transport(options: AppOptions) -> httpx.AsyncBaseTransport:
    return options.transport or AiohttpTransport(keepalive_s=POOL_KEEPALIVE_S)


def _redis(url: str, *, read_timeout: bool) -> Redis:
    timeout = REDIS_TIMEOUT_S if read_timeout else None
    return Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=REDIS_TIMEOUT_S)


def _fleet(core: Core, directory: str, replica_id: str, windows: SharedWindows | None) -> Fleet:
    return Fleet(
        directory,
        replica_id,
        core.stats,
        core.breakers,
        core.meter,
        # while Redis answers, SharedWindows covers the workers too
        share_windows=lambda: windows is None or not windows.healthy,
    )


def _proxy(
    core: Core,
    options: AppOptions,
    limiter: MemoryLimiter | FailoverLimiter,
    transport: httpx.AsyncBaseTransport,
    sockets: AiohttpSockets | None,
    tracing: Tracing,
) -> Proxy:
    plane = Plane(
        core.store,
        core.stats,
        core.breakers,
        limiter,
        as_upstream(transport),
        core.meter,
        clock=options.clock,
        rng=options.rng or random.Random(),
        sleep=options.sleep,
        access_log=options.access_log,
        sockets=sockets,
        weights=core.rollouts.overrides,
        tracing=tracing,
    )
    return Proxy(plane)
