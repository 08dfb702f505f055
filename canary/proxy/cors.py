"""CORS for browser callers (SPEC §3a), as pure ASGI around the proxy.

Off while ``server.cors.allow_origins`` is empty: then a call costs one attribute read.
For an allowed ``Origin``, canary answers the preflight itself (204, no client key
needed: a browser never sends credentials on a preflight) and stamps every answer with
``access-control-allow-origin`` and ``access-control-expose-headers`` (canary's own
headers, so a page can read which backend answered). Other origins get no CORS header
at all, which is how a browser is told no. The live config is read per call, so a
reload turns CORS on or off at once.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from canary.config.model import Cors
from canary.config.store import ConfigStore

# What the OpenAI and Anthropic SDKs send from a browser, besides a route's own headers.
SDK_HEADERS = frozenset(
    {
        b"authorization",
        b"content-type",
        b"x-api-key",
        b"api-key",
        b"openai-beta",
        b"openai-organization",
        b"openai-project",
        b"anthropic-version",
        b"anthropic-beta",
        b"anthropic-dangerous-direct-browser-access",
        b"x-request-id",
        b"x-user-id",
    }
)
_SDK_PREFIX = b"x-stainless-"  # the SDKs' own telemetry headers, one per runtime fact
_METHODS = b"GET, POST, PUT, PATCH, DELETE, OPTIONS"
EXPOSED = b"x-canary-backend, x-canary-route, x-canary-fallback, x-canary-request-id, retry-after"


class CorsMiddleware:
    """``app`` (the proxy) with CORS per the live config's ``server.cors``."""

    def __init__(self, app: ASGIApp, store: ConfigStore) -> None:
        self.app = app
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cfg = self.store.config
        cors = cfg.server.cors if cfg is not None else None
        if cors is None or not cors.allow_origins or scope["type"] != "http":
            await self.app(scope, receive, send)  # off, or a WebSocket session: untouched
            return
        origin = asked = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value
            elif name == b"access-control-request-headers":
                asked = value
        if origin is None or not cors.allows(origin):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and any(
            name == b"access-control-request-method" for name, _ in scope["headers"]
        ):
            await _preflight(send, origin, allowed_headers(cors, asked), cors.max_age_s)
            return

        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message["headers"], *_stamp(origin)]
            await send(message)

        await self.app(scope, receive, stamped)


def allowed_headers(cors: Cors, asked: bytes | None) -> bytes:
    """Of the headers a preflight asks for, those canary lets a page send."""
    if not asked:
        return b""
    extra = {h.encode() for h in cors.allow_headers}
    names = (n.strip().lower() for n in asked.split(b","))
    return b", ".join(
        n for n in names if n in SDK_HEADERS or n in extra or n.startswith(_SDK_PREFIX)
    )


def _stamp(origin: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b"access-control-allow-origin", origin),
        (b"access-control-expose-headers", EXPOSED),
        (b"vary", b"origin"),
    ]


async def _preflight(send: Send, origin: bytes, headers: bytes, max_age_s: int) -> None:
    out = [
        *_stamp(origin),
        (b"access-control-allow-methods", _METHODS),
        (b"access-control-max-age", str(max_age_s).encode()),
        (b"content-length", b"0"),
    ]
    if headers:
        out.append((b"access-control-allow-headers", headers))
    await send({"type": "http.response.start", "status": 204, "headers": out})
    await send({"type": "http.response.body", "body": b""})
