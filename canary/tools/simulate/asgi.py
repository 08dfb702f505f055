"""The simulator's wire: raw ASGI messages in and out, and the refusal every check raises.

The simulator is the upstream the benchmark measures against, so it stays a raw ASGI
callable: no framework, orjson for every body. ``Refused`` is raised anywhere below the
app and rendered in one place, in the shape of the dialect the path speaks.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Any

import orjson
from starlette.types import Receive, Send

Headers = Sequence[tuple[bytes, bytes]]


class Refused(Exception):
    """An error answer: its status, message, OpenAI ``code`` and ``type``, extra headers."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        kind: str = "invalid_request_error",
        headers: Headers = (),
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.kind, self.headers = status, code, kind, headers

    def body(self) -> dict[str, Any]:
        """OpenAI's error shape."""
        return {"error": {"message": str(self), "type": self.kind, "code": self.code}}


def json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Refused(400, f"Body is not valid JSON: {exc}", "invalid_json") from None
    if not isinstance(payload, dict):
        raise Refused(400, "Body must be a JSON object", "invalid_json")
    return payload


async def send_json(send: Send, status: int, payload: object, headers: Headers) -> None:
    body = orjson.dumps(payload)
    length = (b"content-length", str(len(body)).encode())
    start = [(b"content-type", b"application/json"), length, *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


def carries_key(headers: Headers, key: bytes) -> bool:
    """The call carries ``key`` in one of the headers providers read it from: Bearer,
    ``x-api-key`` or ``api-key``."""
    for name, value in headers:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            value = value[7:].strip()
        elif name not in (b"x-api-key", b"api-key"):
            continue
        if hmac.compare_digest(value, key):
            return True
    return False


async def read_body(receive: Receive) -> bytes:
    chunks = []
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


async def until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge startup and shutdown, so any ASGI server can host the app."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
