"""The simulator's non-JSON traffic: a streamed upload in, file content and speech out.

``POST /v1/files`` reads its multipart body as it arrives and keeps only a count (and the
form's ``purpose`` and ``filename``, from the first bytes), so a test can send hundreds of
megabytes through canary and see the router's memory, not the simulator's. ``GET
/v1/files/{id}/content`` and ``POST /v1/audio/speech`` answer with bytes streamed in 64 KiB
chunks, as a provider's downloads are.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

from starlette.types import Receive, Scope, Send

from canary.tools.simulate.asgi import Refused, json_object, send_json

_CHUNK = 64 << 10
_HEAD = 64 << 10  # the form fields are looked for in this many first bytes
_FIELD = re.compile(rb'name="(purpose)"\r\n\r\n([^\r]{1,64})\r\n|filename="([^"]{1,255})"')
_SPEECH_BYTES = 256 << 10
_KEPT = 1024  # file sizes remembered, for their content


class Files:
    """Uploaded files' sizes (bounded), and the three handlers."""

    def __init__(self, clock_s: Any) -> None:
        self._clock = clock_s
        self._sizes: dict[str, int] = {}
        self._ids = itertools.count(1)

    async def upload(self, scope: Scope, receive: Receive, send: Send, headers: Any) -> None:
        """``POST /v1/files``: count the body as it comes; answer a file object."""
        size, head, more = 0, b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            chunk: bytes = message.get("body", b"")
            more = message.get("more_body", False)
            if len(head) < _HEAD:
                head += chunk[: _HEAD - len(head)]
            size += len(chunk)
        fields = {"purpose": "user_data", "filename": "upload"}
        for found in _FIELD.finditer(head):
            if found.group(1):
                fields["purpose"] = found.group(2).decode("utf-8", "replace")
            elif found.group(3):
                fields["filename"] = found.group(3).decode("utf-8", "replace")
        file_id = f"file-sim{next(self._ids)}"
        if len(self._sizes) >= _KEPT:
            self._sizes.pop(next(iter(self._sizes)))
        self._sizes[file_id] = size
        answer = {
            "id": file_id,
            "object": "file",
            "bytes": size,
            "created_at": int(self._clock()),
            "filename": fields["filename"],
            "purpose": fields["purpose"],
            "status": "processed",
        }
        await send_json(send, 200, answer, headers)

    async def content(self, scope: Scope, send: Send, headers: Any) -> None:
        """``GET /v1/files/{id}/content``: the file's size in bytes, streamed."""
        file_id = scope["path"].removeprefix("/v1/files/").removesuffix("/content")
        size = self._sizes.get(file_id)
        if size is None:
            raise Refused(404, f"No such File object: {file_id}", "not_found")
        await stream_bytes(send, size, b"application/octet-stream", headers)

    async def speech(self, body: bytes, send: Send, headers: Any) -> None:
        """``POST /v1/audio/speech``: a JSON request, an audio answer streamed."""
        payload = json_object(body)
        if not isinstance(payload.get("input"), str):
            raise Refused(400, "'input' is required", "invalid_request")
        await stream_bytes(send, _SPEECH_BYTES, b"audio/mpeg", headers)


async def stream_bytes(send: Send, size: int, content_type: bytes, headers: Any) -> None:
    start = [(b"content-type", content_type), (b"content-length", str(size).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": [*start, *headers]})
    block = bytes(range(256)) * (_CHUNK // 256)
    left = size
    while left > 0:
        part = block[: min(left, _CHUNK)]
        left -= len(part)
        await send({"type": "http.response.body", "body": part, "more_body": left > 0})
    if size == 0:
        await send({"type": "http.response.body", "body": b""})
