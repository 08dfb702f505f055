"""A streamed request body (SPEC §3a): a non-JSON upload goes upstream as it arrives.

JSON bodies are read whole (``canary.proxy.body``). Any other body (``multipart/form-data``,
``application/octet-stream``, audio) is handed to the transport as an async iterator over
the client's ``receive``: nothing is kept beyond the chunk in hand. uvicorn stops reading
the client's socket while the app has not taken the last chunk, and aiohttp waits for the
upstream to drain each write, so an upload of any size holds about one chunk (at most
about 1 MiB) of the router's memory, at the pace of the slower side.

Every wait is bounded on the call's watch (``canary.proxy.watchdog``), with no timer of
its own:

- the client's next chunk: ``server.client_timeout_s`` -> 408, the connection closed;
- the upstream taking a chunk: the backend's ``timeout_s`` -> an upstream timeout;
- past ``server.max_upload_bytes`` (declared or counted) -> 413 as soon as it is known.

The iterator runs in the transport's writer task, which wraps whatever it raises as a
broken connection; so a refusal is kept on the upload (``refusal``) for the exchange to
answer. Such a body cannot be replayed: it gets no retry, and falls back only while
``sent`` is 0 (the connection failed before any byte left).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.types import Receive

from canary.config.model import Backend
from canary.errors import BodyRefused, RouterError
from canary.proxy.body import too_large
from canary.proxy.watchdog import Watch

_READ_MEDIA = (b"application/json", b"text/", b"application/x-www-form-urlencoded")


def streams(content_type: bytes | None) -> bool:
    """Whether a body of this ``Content-Type`` is streamed rather than read whole: any
    declared type that is not JSON (or text, which browsers use to send JSON)."""
    if content_type is None or content_type.startswith(b"application/json"):
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    return bool(media) and not media.endswith(b"+json") and not media.startswith(_READ_MEDIA)


def stalled(seconds: float) -> BodyRefused:
    return BodyRefused(
        f"The client sent no part of its request body for {seconds:g} s.",
        code="client_timeout",
        status=408,
    )


class ClientGone(Exception):
    """The client disconnected while its body was being read."""


class Upload:
    """The client's body as an iterator for the upstream, read under its bounds.

    It answers like ``Body`` where the exchange asks (no JSON, no model: such a route is
    chosen by path and headers)."""

    __slots__ = ("declared", "limit", "receive", "refusal", "sent", "timeout_s", "waiting", "watch")

    streamed = True

    def __init__(
        self, receive: Receive, declared: bytes | None, limit: int, timeout_s: float, watch: Watch
    ) -> None:
        self.receive = receive
        self.declared = declared if declared is not None and declared.isdigit() else None
        if self.declared is not None and int(self.declared) > limit:
            raise too_large(limit)  # said up front: nothing read, nothing sent
        self.limit = limit
        self.timeout_s = timeout_s  # the client's longest pause between two chunks
        self.watch = watch
        self.sent = 0  # bytes handed to the upstream
        self.waiting = False  # on the client: a deadline now passing is the client's
        self.refusal: RouterError | None = None

    def json(self) -> dict[str, Any] | None:
        return None

    def model(self) -> str | None:
        return None

    def accounted_model(self) -> str | None:
        return None

    def for_backend(self, backend: Backend) -> tuple[AsyncIterator[bytes], bool]:
        """The body for ``backend``: the rest of the client's stream, as it comes."""
        return self._chunks(backend.timeout_s), False

    async def _chunks(self, upstream_s: float) -> AsyncIterator[bytes]:
        watch, receive = self.watch, self.receive
        time = asyncio.get_running_loop().time
        size, more = 0, True
        while more:
            watch.deadline = time() + self.timeout_s
            self.waiting = True
            message = await receive()
            self.waiting = False
            if message["type"] == "http.disconnect":
                self.refusal = RouterError(
                    "The client disconnected.", code="client_disconnected", status=499
                )
                raise ClientGone
            chunk: bytes = message.get("body", b"")
            more = message.get("more_body", False)
            size += len(chunk)
            if size > self.limit:
                self.refusal = too_large(self.limit)
                raise self.refusal
            if chunk:
                watch.deadline = time() + upstream_s  # the upstream must take it in time
                self.sent += len(chunk)
                yield chunk
        watch.deadline = time() + upstream_s  # the body is out: now for the answer's headers
