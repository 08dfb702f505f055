"""The control plane: every path outside ``/v1/*``, as one Starlette app.

    GET  /status        the migration's state (``canary.observe.status``); always 200
    GET  /status/history?since=<unix s>  the last 15 minutes, a point a second
                        (``canary.observe.history``); a bad ``since`` answers 400
    GET  /metrics       Prometheus text from the same document
    GET  /healthz       200 while the process serves
    GET  /readyz        200 once a valid config is loaded; 503 without one, or draining
    POST /admin/reload  reload routes.yaml; ``Authorization: Bearer <admin_token>``
    POST /admin/rollout/{promote,pause,resume,abort}  steer the rollout (same token)
    POST /admin/billing/metered  ``canary verify`` adds what its probes cost (same token)
    GET  /dashboard     the page and its assets (``canary.observe.dashboard``)

Anything else answers 404 (or 405) in OpenAI's error shape, like the proxy's own errors.
"""

from __future__ import annotations

import contextlib
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from canary.config.model import Config, bearer_digest
from canary.config.store import ConfigStore
from canary.errors import RouterError
from canary.observe.dashboard import dashboard_routes
from canary.observe.document import StatusDocument
from canary.observe.history import HistoryDoc, parse_since
from canary.observe.meter import Meter
from canary.observe.metrics import CONTENT_TYPE
from canary.observe.metrics import render as render_metrics
from canary.safety.rollout import Refused
from canary.safety.rollouts import VERBS, Rollouts
from canary.serve.drain import Traffic

Document = Callable[[], tuple[StatusDocument, Meter]]  # /status and the meter it was built on
Lifespan = Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]
HistoryReader = Callable[[int], Awaitable[HistoryDoc]]  # since (unix s) -> /status/history


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def error_response(exc: RouterError) -> Response:
    headers = {k.decode(): v.decode() for k, v in exc.headers()}
    return Response(
        exc.body(), status_code=exc.status, media_type="application/json", headers=headers
    )


class ControlPlane:
    """The handlers, over the store, the traffic and a function that builds ``/status``."""

    def __init__(
        self,
        store: ConfigStore,
        traffic: Traffic,
        document: Document,
        rollouts: Rollouts | None = None,
        meter: Meter | None = None,
        history: HistoryReader | None = None,
    ) -> None:
        self.meter = meter
        self.store = store
        self.traffic = traffic
        self.document = document
        self.rollouts = rollouts
        self.history = history

    def app(self, lifespan: Lifespan) -> Starlette:
        return Starlette(
            routes=self.routes(),
            exception_handlers={404: self.not_found, 405: self.not_found},
            lifespan=lifespan,
        )

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/status", self.status),
            Route("/status/history", self.status_history),
            Route("/metrics", self.metrics),
            Route("/healthz", self.healthz),
            Route("/readyz", self.readyz),
            Route("/admin/reload", self.admin_reload, methods=["POST"]),
            Route("/admin/rollout/{verb}", self.admin_rollout, methods=["POST"]),
            Route("/admin/billing/metered", self.admin_metered, methods=["POST"]),
            *dashboard_routes(),
        ]

    async def status(self, _: Request) -> Response:
        return _json(self.document()[0])

    async def status_history(self, request: Request) -> Response:
        try:
            since = parse_since(request.query_params.get("since"), time.time())
        except ValueError as exc:
            return error_response(RouterError(f"{exc}.", code="invalid_since", status=400))
        if self.history is None:
            return error_response(
                RouterError("History is not kept by this router.", code="no_history", status=404)
            )
        return _json(await self.history(since))

    async def metrics(self, _: Request) -> Response:
        return Response(render_metrics(*self.document()), media_type=CONTENT_TYPE)

    async def healthz(self, _: Request) -> Response:
        return _json({"status": "ok"})

    async def readyz(self, _: Request) -> Response:
        if self.traffic.draining:  # SIGTERM: let load balancers move on before we stop accepting
            return _json({"status": "draining"}, 503)
        if self.store.config is None:
            return _json({"status": "no valid config", "error": self.store.error}, 503)
        return _json({"status": "ready", "version": self.store.config.version})

    async def admin_reload(self, request: Request) -> Response:
        try:
            _check_admin(self.store.config, request.headers.get("authorization"))
        except RouterError as exc:
            return error_response(exc)
        result = await self.store.reload(reason="admin")
        body = {"applied": result.applied, "changed": result.changed, "version": result.version}
        if not result.applied:
            return _json({**body, "error": result.error}, 422)
        return _json(body)

    async def admin_rollout(self, request: Request) -> Response:
        verb = request.path_params["verb"]
        if verb not in VERBS or self.rollouts is None:
            return await self.not_found(request, HTTPException(404))
        try:
            _check_admin(self.store.config, request.headers.get("authorization"))
            t = await self.rollouts.steer_shared(verb)
        except RouterError as exc:
            return error_response(exc)
        except Refused as exc:
            return error_response(RouterError(str(exc), code="rollout_refused", status=409))
        return _json({"transition": t.as_dict(), "state": t.to_state, "percent": t.percent})

    async def admin_metered(self, request: Request) -> Response:
        """``{"usd": {backend: USD}}``: calls sent to a backend outside the router (SPEC §11)."""
        try:
            _check_admin(self.store.config, request.headers.get("authorization"))
            usd = _metered(self.store.config, await _small_body(request))
        except RouterError as exc:
            return error_response(exc)
        if self.meter is not None:
            for backend, amount in usd.items():
                self.meter.verified(backend, amount)
        return _json({"metered": usd})

    async def not_found(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        code = "not_found" if status == 404 else "method_not_allowed"
        return error_response(
            RouterError(
                f"{request.method} {request.url.path}: {code.replace('_', ' ')}.",
                code=code,
                status=status,
            )
        )


MAX_ADMIN_BODY = 64 << 10
MAX_METERED_USD = 10_000.0  # one report; more is a mistake, not a verify run


async def _small_body(request: Request) -> Any:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_ADMIN_BODY:
            raise RouterError("Body too large.", code="body_too_large", status=413)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise RouterError("Body is not JSON.", code="invalid_json", status=400) from None


def _metered(cfg: Config | None, data: Any) -> dict[str, float]:
    usd = data.get("usd") if isinstance(data, dict) else None
    if not isinstance(usd, dict) or cfg is None:
        raise RouterError(
            'Expected {"usd": {"<backend>": <USD>}}.', code="invalid_body", status=400
        )
    for backend, amount in usd.items():
        if backend not in cfg.backends:
            raise RouterError(f"Unknown backend {backend!r}.", code="unknown_backend", status=400)
        if (
            isinstance(amount, bool)
            or not isinstance(amount, int | float)
            or not 0 <= amount <= MAX_METERED_USD
        ):
            raise RouterError(
                f"usd.{backend}: must be a number of USD from 0 to {MAX_METERED_USD:g}.",
                code="invalid_body",
                status=400,
            )
    return {b: float(v) for b, v in usd.items()}


def _check_admin(cfg: Config | None, authorization: str | None) -> None:
    if cfg is None or cfg.auth.admin_token_digest is None:
        raise RouterError(
            "Admin endpoints are off: set auth.admin_token (e.g. CANARY_ADMIN_TOKEN) to use them.",
            code="admin_disabled",
            status=403,
        )
    if not hmac.compare_digest(bearer_digest(authorization), cfg.auth.admin_token_digest):
        raise RouterError("Missing or invalid admin token.", code="invalid_admin_token", status=401)
