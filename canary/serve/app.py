"""Composition root: ``create_app`` builds canary; the lifespan owns its process resources.

Two planes behind one ASGI callable: ``/v1/*`` goes straight to the raw ``Proxy`` (the
hot path), everything else to the control plane (``canary.serve.control``). Seams are
injected through ``AppOptions``: the upstream ``transport`` (an ``httpx.MockTransport`` in
unit tests), the ``clock``, the ``rng`` and the ``sleep``. Nothing happens at import time,
and ``create_app`` only builds objects: the lifespan loads the config, opens every resource
on one exit stack and builds the proxy over them (``canary.serve.lifespan``); until it has,
``/v1/*`` answers 503.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Unpack

from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from canary.errors import RouterError
from canary.observe.billing import apply_billing
from canary.observe.document import StatusDocument
from canary.observe.history import HistoryDoc, document
from canary.observe.meter import Meter
from canary.observe.same_model import same_model_section
from canary.observe.status import status_document
from canary.proxy.cors import CorsMiddleware
from canary.serve.control import ControlPlane, error_response
from canary.serve.core import AppOptionFields, AppOptions, Core
from canary.serve.lifespan import Running, running

_NOT_STARTED = RouterError(
    "canary is not serving: its lifespan has not run (is the ASGI server's lifespan off?).",
    code="not_started",
    status=503,
)


async def _not_started(scope: Scope, receive: Receive, send: Send) -> None:
    await error_response(_NOT_STARTED)(scope, receive, send)


_NO_WEBSOCKET = RouterError(
    "WebSocket sessions are served under /v1/ only.", code="not_found", status=404
)


async def _no_websocket(scope: Scope, receive: Receive, send: Send) -> None:
    """A WebSocket handshake outside ``/v1/``: a 404 in OpenAI's shape (starlette sends
    the denial response when the server offers it, else closes)."""
    await receive()  # websocket.connect
    await error_response(_NO_WEBSOCKET)(scope, receive, send)


class Canary:
    """The ASGI app: ``/v1/*`` to the proxy, the rest to the control plane.

    Every HTTP call passes ``traffic``, which counts it and can end it cleanly when a
    drain times out (``canary.serve.drain``).
    """

    def __init__(self, core: Core, options: AppOptions) -> None:
        self.core = core
        self.options = options
        self.store, self.stats, self.traffic = core.store, core.stats, core.traffic
        self.breakers = core.breakers
        self.live: Running | None = None  # what the lifespan opened, while it runs
        self.proxy: ASGIApp = _not_started
        self.control = ControlPlane(
            core.store,
            core.traffic,
            self.document,
            core.rollouts,
            meter=core.meter,
            history=self.history,
        ).app(self.lifespan)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":  # a session (canary.proxy.session), only under /v1/
            app = self.proxy if scope["path"].startswith("/v1/") else _no_websocket
            await self.traffic.run(app, scope, receive, send)
        elif kind != "http":
            await self.control(scope, receive, send)  # the lifespan
        elif scope["path"].startswith("/v1/"):
            await self.traffic.run(self.proxy, scope, receive, send)
        else:
            await self.traffic.run(self.control, scope, receive, send)

    @contextlib.asynccontextmanager
    async def lifespan(self, _: Starlette) -> AsyncIterator[None]:
        async with running(self.core, self.options) as live:
            self.live, self.proxy = live, CorsMiddleware(live.proxy, self.store)
            try:
                yield
            finally:
                self.live, self.proxy = None, _not_started

    def document(self) -> tuple[StatusDocument, Meter]:
        """``/status``, and the meter it was built on (every worker's, with a fleet)."""
        core, live = self.core, self.live
        fleet = live.fleet if live is not None else None
        merged = fleet.merged_meter() if fleet is not None else core.meter
        state = live.state if live is not None else "memory"
        doc = status_document(
            core.store, core.stats, core.breakers, merged, state, fleet, core.rollouts
        )
        apply_billing(doc, core.billing, core.store.config)
        doc["draining"] = core.traffic.draining  # SIGTERM received: finishing what is in flight
        cfg = core.store.config
        same = same_model_section(core.store.path, cfg.version) if cfg is not None else None
        if same is not None:  # the last verify --distribution, when it ran on this config
            doc["same_model"] = same
        return doc, merged

    async def history(self, since: int) -> HistoryDoc:
        """``/status/history``: every worker's and replica's last minutes, merged."""
        if self.live is None:  # not serving: nothing sampled
            return document([], since, 0)
        return await self.live.history.read(since)


def create_app(config_path: str, **options: Unpack[AppOptionFields]) -> Canary:
    """Build the router for ``config_path``; ``options`` are ``AppOptions``' fields."""
    opts = AppOptions(**options)
    return Canary(Core.build(config_path, opts.clock), opts)


__all__ = ["AppOptions", "Canary", "create_app"]
