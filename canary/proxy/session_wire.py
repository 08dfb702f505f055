"""A session's two handshakes: what goes upstream, and what the client is answered.

Upstream (``handshake``): ``base_url`` with the ``ws``/``wss`` scheme and the client's raw
path and query; the headers of any call (``canary.proxy.headers.upstream_headers``: no
hop-by-hop, no client key, the backend's key in its header, our request id) minus the
client's ``Sec-WebSocket-*`` (aiohttp makes its own key; extensions are per hop); the
client's subprotocols minus ``openai-insecure-api-key.*`` (a browser's way to send its key).

Client (``Answer``): accepted with the subprotocol upstream chose and canary's headers; or
denied before the handshake with an HTTP answer (ASGI's ``websocket.http.response``
extension): the upstream's own status and body, or the router's error in OpenAI's shape.
A server without that extension gets a close code instead: 1008 for a refusal, 1011 for
an upstream failure.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode

from starlette.types import Message, Scope, Send

from canary.config.model import Backend
from canary.errors import RouterError
from canary.proxy.answers import INTERNAL
from canary.proxy.headers import upstream_headers
from canary.proxy.sockets import Handshake, Refused, ws_url

KEY_PROTOCOL = "openai-insecure-api-key."
DENIED = 1008  # policy violation: the router refused the session
FAILED = 1011  # the upstream failed it
_MAX_MODEL = 256


def model_of(query: bytes) -> str | None:
    """The ``?model=`` of a session's URL (the Realtime API's way to name it)."""
    if b"model=" not in query:
        return None
    for name, value in parse_qsl(query.decode("latin-1")):
        if name == "model" and value:
            return value[:_MAX_MODEL]
    return None


def client_key_headers(hdrs: dict[bytes, bytes], protocols: Iterable[str]) -> dict[bytes, bytes]:
    """The headers a client key is checked in, with a subprotocol's key as a Bearer one."""
    if b"authorization" in hdrs:
        return hdrs
    for protocol in protocols:
        if protocol.startswith(KEY_PROTOCOL):
            key = protocol[len(KEY_PROTOCOL) :].encode("latin-1", "replace")
            return {**hdrs, b"authorization": b"Bearer " + key}
    return hdrs


def handshake(scope: Scope, backend: Backend, answer: Answer, wait_s: float) -> Handshake:
    """The session's upstream handshake on ``backend`` (see the module docstring)."""
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
    target = ws_url(backend.base_url) + raw_path[3:].decode("latin-1")
    query: bytes = scope["query_string"]
    if query:
        target += "?" + _mapped(query, backend).decode("latin-1")
    headers = [
        (k, v)
        for k, v in upstream_headers(scope["headers"], backend, answer.request_id, False)
        if not k.startswith(b"sec-websocket-")
    ]
    try:
        for k, v in headers:
            k.decode(), v.decode()
    except UnicodeDecodeError:  # aiohttp writes UTF-8; the bytes never show (they may be a key)
        raise RouterError(
            "A request header could not be forwarded (not UTF-8).",
            code="invalid_header",
            status=400,
        ) from None
    protocols = tuple(p for p in scope.get("subprotocols", ()) if not p.startswith(KEY_PROTOCOL))
    return Handshake(target, headers, protocols, wait_s)


def _mapped(query: bytes, backend: Backend) -> bytes:
    """The query with ``?model=`` rewritten by the backend's ``model_map``."""
    model = model_of(query) if backend.model_map else None
    if model is None or model not in backend.model_map:
        return query
    pairs = [
        (name, backend.model_map[model] if name == "model" else value)
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    ]
    return urlencode(pairs).encode("latin-1")


class Answer:
    """The client's side of a session: what it was answered, and how far that went."""

    __slots__ = ("_denial", "named", "request_id", "route", "send", "sse", "started")

    def __init__(self, send: Send, rid: bytes, scope: Scope) -> None:
        self.send = send
        self.request_id = rid
        self.route = b""
        self.started = False  # accepted or denied (the drain reads it)
        self.sse = False  # never an event stream (the drain's protocol)
        self.named: str | None = None  # the model the server's events named first
        self._denial = "websocket.http.response" in (scope.get("extensions") or {})

    def _stamp(self, backend: str | None, origin: str | None) -> list[tuple[bytes, bytes]]:
        headers = [(b"x-canary-request-id", self.request_id)]
        if backend is not None:
            headers += [(b"x-canary-backend", backend.encode()), (b"x-canary-route", self.route)]
        if origin is not None:
            headers.append((b"x-canary-fallback", origin.encode()))
        return headers

    async def accept(self, subprotocol: str | None, backend: str, origin: str | None) -> bool:
        """Complete the client's handshake; False when the client has gone already."""
        message: Message = {
            "type": "websocket.accept",
            "subprotocol": subprotocol,
            "headers": self._stamp(backend, origin),
        }
        self.started = True
        try:
            await self.send(message)
        except OSError:
            return False
        return True

    async def deny(
        self,
        error: RouterError,
        backend: str | None = None,
        origin: str | None = None,
        code: int = DENIED,
    ) -> int:
        """Refuse the handshake with the router's error in OpenAI's shape."""
        headers = [(b"content-type", b"application/json"), *error.headers()]
        headers += self._stamp(backend, origin)
        await self._respond(error.status, headers, error.body(), code)
        return error.status

    async def relay_refusal(self, refused: Refused, backend: str, origin: str | None) -> int:
        """Refuse the handshake with the upstream's own status and body."""
        kind = refused.content_type.encode("latin-1", "replace") or b"application/json"
        headers = [(b"content-type", kind), *self._stamp(backend, origin)]
        code = FAILED if refused.status >= 500 else DENIED
        await self._respond(refused.status, headers, refused.body, code)
        return refused.status

    async def fail(self) -> None:
        """A fault of the router itself: a 500 in OpenAI's shape, or close 1011."""
        if not self.started:
            await self.deny(INTERNAL, code=FAILED)
            return
        with contextlib.suppress(OSError, RuntimeError):  # closed already
            await self.send({"type": "websocket.close", "code": FAILED, "reason": "internal error"})

    async def _respond(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, code: int
    ) -> None:
        self.started = True
        try:
            if self._denial:
                start = {"type": "websocket.http.response.start", "status": status}
                await self.send({**start, "headers": headers})
                await self.send({"type": "websocket.http.response.body", "body": body})
            else:
                await self.send({"type": "websocket.close", "code": code})
        except OSError:
            pass  # the client left before its answer
