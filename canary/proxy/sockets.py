"""The upstream seam of WebSocket sessions: a handshake out through the pool, or why not.

``Sockets.connect`` opens one upstream WebSocket for a session (``canary.proxy.session``)
and returns an ``UpstreamSocket`` (aiohttp's ``ClientWebSocketResponse`` is one), or raises:

    Refused        the upstream answered the handshake with an HTTP status (its status,
                   content type and body, read up to ``MAX_REFUSAL_BYTES``, go to the client
                   when nothing else can answer)
    httpx errors   the connect failed (``ConnectError``, ``ConnectTimeout``) or the handshake
                   took longer than its bound (``ReadTimeout``): as for any call

``AiohttpSockets`` uses aiohttp's ``ws_connect`` over the connector of the proxy's own pool
(``canary.proxy.transport``). aiohttp drops a refused handshake's body; a trace hook on this
session's requests reads it first (``_keep_refusal``), so the session's own HTTP calls and
the proxy's pool never pay for the hook.
"""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Protocol

import aiohttp
import httpx
import yarl

from canary.types import AsyncResource

MAX_REFUSAL_BYTES = 64 << 10
MAX_MESSAGE_BYTES = 16 << 20  # as uvicorn's ws_max_size on the client's side
CLOSE_TIMEOUT_S = 10.0  # a peer that never answers our close frame: given up after this
HEARTBEAT_S = 20.0  # an upstream that vanished without a FIN is found within 2 x this


@dataclass(slots=True)
class Handshake:
    """What goes upstream: the ws/wss target, the headers exactly, the subprotocols."""

    url: str
    headers: list[tuple[bytes, bytes]]
    protocols: tuple[str, ...]
    timeout_s: float  # the connect and the upstream's answer to the handshake, together


class Refused(Exception):
    """The upstream answered the handshake with a status other than 101."""

    def __init__(self, status: int, content_type: str, body: bytes) -> None:
        super().__init__(f"handshake refused with {status}")
        self.status = status
        self.content_type = content_type
        self.body = body


class UpstreamSocket(Protocol):
    """One open upstream WebSocket, as the frame relay uses it (``canary.proxy.frames``)."""

    @property
    def protocol(self) -> str | None: ...

    @property
    def close_code(self) -> int | None: ...

    @property
    def closed(self) -> bool: ...

    async def receive(self) -> aiohttp.WSMessage: ...

    async def send_str(self, data: str) -> None: ...

    async def send_bytes(self, data: bytes) -> None: ...

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool: ...


class Sockets(Protocol):
    """Where sessions connect: ``AiohttpSockets``, or a fake in unit tests."""

    async def connect(self, handshake: Handshake) -> UpstreamSocket: ...


@dataclass(slots=True)
class _Refusal:
    """Filled by the trace hook while one handshake runs (one per ``connect``)."""

    status: int = 0
    content_type: str = ""
    body: bytes = b""
    read: bool = False


_REFUSAL: contextvars.ContextVar[_Refusal | None] = contextvars.ContextVar(
    "canary_ws_refusal", default=None
)


async def _keep_refusal(_: aiohttp.ClientSession, __: SimpleNamespace, params: Any) -> None:
    """aiohttp's ``on_request_end``: a handshake answered without 101 keeps its body."""
    kept = _REFUSAL.get()
    response: aiohttp.ClientResponse = params.response
    if kept is None or response.status == 101:
        return
    kept.status = response.status
    kept.content_type = response.headers.get("content-type", "")
    kept.body = await response.content.read(MAX_REFUSAL_BYTES)  # bounded by connect's wait
    kept.read = True


class AiohttpSockets(AsyncResource):
    """Upstream WebSockets on the proxy's pool (its connector: DNS cache, TLS, limits)."""

    def __init__(
        self, connector: aiohttp.BaseConnector | None, close_timeout_s: float = CLOSE_TIMEOUT_S
    ) -> None:
        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(_keep_refusal)
        self._session = aiohttp.ClientSession(
            connector=connector,
            connector_owner=False,  # the pool closes it
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trace_configs=[trace],
            timeout=aiohttp.ClientTimeout(total=None),
        )
        self._timeout = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=close_timeout_s)

    async def connect(self, handshake: Handshake) -> UpstreamSocket:
        kept = _Refusal()
        token = _REFUSAL.set(kept)
        target = handshake.url.split("?", 1)[0]  # errors never show the query
        try:
            headers = [(k.decode(), v.decode()) for k, v in handshake.headers]
        except UnicodeDecodeError:
            # from None: the decode error would carry the header's bytes, maybe a key.
            raise httpx.LocalProtocolError(f"GET {target}: a header is not UTF-8") from None
        try:
            async with asyncio.timeout(handshake.timeout_s):
                return await self._session.ws_connect(
                    handshake.url,
                    headers=headers,
                    protocols=handshake.protocols,
                    timeout=self._timeout,
                    autoclose=True,
                    autoping=True,
                    heartbeat=HEARTBEAT_S,
                    max_msg_size=MAX_MESSAGE_BYTES,
                    compress=0,
                )
        except aiohttp.WSServerHandshakeError as exc:
            if kept.read or exc.status != 101:
                raise Refused(exc.status, kept.content_type, kept.body) from None
            raise httpx.RemoteProtocolError(f"GET {target}: bad handshake: {exc.message}") from None
        except TimeoutError:
            raise httpx.ReadTimeout(f"GET {target}: no handshake within the bound") from None
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(f"GET {target}: {type(exc).__name__}: {exc}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise httpx.ReadError(f"GET {target}: {type(exc).__name__}: {exc}") from None
        finally:
            _REFUSAL.reset(token)

    async def aclose(self) -> None:
        await self._session.close()


def ws_url(http_url: str) -> str:
    """``base_url``'s target with the WebSocket scheme (``http`` -> ``ws``, ``https`` ->
    ``wss``), without userinfo (aiohttp would send it as a Basic credential)."""
    url = yarl.URL(http_url, encoded=True)
    if url.raw_user is not None or url.raw_password is not None:
        url = url.with_user(None)
    scheme = {"http": "ws", "https": "wss"}.get(url.scheme, url.scheme)
    return str(url.with_scheme(scheme))
