"""The request body: read bounded, decoded and parsed at most once, and only when asked.

The body is forwarded as the client sent it unless a ``model_map`` rewrites it. It is
decoded and parsed only when something needs its JSON (a route's ``models`` match, a
``body:`` sticky key, a ``model_map`` of a backend on the route). Then:

- ``Content-Encoding: gzip`` or ``deflate`` is inflated, the limit applying to the
  inflated size (a zip bomb gets 413); another encoding gets 415;
- a body that is not JSON, or not UTF-8, gets 400 ``invalid_json``.

Every refusal is a ``RouterError``, answered in OpenAI's shape by the exchange.
"""

from __future__ import annotations

import re
import zlib
from typing import Any

import orjson
from starlette.types import Receive

from canary.config.model import Backend
from canary.errors import BodyRefused, RouterError
from canary.proxy.usage import WBITS  # the codings canary can inflate, one table

_MODEL_SPAN = 4096
_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,128})"')


class Body:
    """The raw bytes, their decoded JSON (when asked for), and the model named in them."""

    __slots__ = ("_json", "_model", "_model_read", "_parsed", "encoding", "limit", "raw")

    # What an ``Upload`` (canary.proxy.upload) has and a body read whole never does.
    streamed = False
    sent = 0
    waiting = False
    declared: bytes | None = None
    timeout_s = 0.0
    refusal: RouterError | None = None

    def __init__(self, raw: bytes, encoding: bytes, limit: int) -> None:
        self.raw = raw
        self.encoding = encoding  # the client's Content-Encoding, lowercased; b"" when none
        self.limit = limit
        self._parsed = False
        self._json: dict[str, Any] | None = None
        self._model: str | None = None  # accounted_model's, once read
        self._model_read = False

    def json(self) -> dict[str, Any] | None:
        """The body as a JSON object (None when empty or not an object); raises 400/413/415."""
        if not self._parsed:
            if self.raw:
                try:
                    value = orjson.loads(self._plain())
                except orjson.JSONDecodeError:
                    raise RouterError(
                        "The request body is not valid JSON (UTF-8), and this route needs "
                        "to read it.",
                        code="invalid_json",
                        status=400,
                    ) from None
                self._json = value if isinstance(value, dict) else None
            self._parsed = True
        return self._json

    def _plain(self) -> bytes:
        if not self.encoding or self.encoding == b"identity":
            return self.raw
        wbits = WBITS.get(self.encoding)
        if wbits is None:
            raise RouterError(
                f"Content-Encoding {self.encoding.decode('latin-1')!r} is not supported on "
                "this route (gzip and deflate are).",
                code="unsupported_encoding",
                status=415,
            )
        inflate = zlib.decompressobj(wbits)
        try:
            plain = inflate.decompress(self.raw, self.limit + 1)
        except zlib.error:
            raise RouterError(
                f"The request body is not valid {self.encoding.decode('latin-1')}.",
                code="invalid_encoding",
                status=400,
            ) from None
        if len(plain) > self.limit or inflate.unconsumed_tail:
            raise too_large(self.limit)
        return plain

    def model(self) -> str | None:
        body = self.json()
        model = body.get("model") if body is not None else None
        return model if isinstance(model, str) else None

    def accounted_model(self) -> str | None:
        """The client's ``model`` for token accounting; never refuses a body it cannot read.

        A body already parsed (a route needed it) is read exactly; otherwise it is not
        parsed for a label: ``"model": "..."`` is looked for in its first and last 4 KiB
        (SDKs write it first, or right after ``messages``). Read once: the accounting, the
        trace and the shadow copy label the call alike."""
        if not self._model_read:
            self._model, self._model_read = self._read_model(), True
        return self._model

    def _read_model(self) -> str | None:
        raw = self.raw
        if self._parsed:
            return self.model() if self._json is not None else None
        if self.encoding or raw[:64].lstrip()[:1] != b"{":
            return None
        small = len(raw) <= 2 * _MODEL_SPAN
        for part in (raw,) if small else (raw[:_MODEL_SPAN], raw[-_MODEL_SPAN:]):
            found = _MODEL.search(part)
            if found is not None:
                return found.group(1).decode("utf-8", "replace")
        return None

    def for_backend(self, backend: Backend) -> tuple[bytes, bool]:
        """The bytes to send ``backend`` and whether they are a rewrite (decoded JSON, so
        the client's Content-Encoding no longer applies): ``model_map`` applied."""
        if not backend.model_map:
            return self.raw, False
        parsed = self.json()
        model = parsed.get("model") if parsed is not None else None
        mapped = backend.model_map.get(model) if isinstance(model, str) else None
        if parsed is None or mapped is None:
            return self.raw, False
        return orjson.dumps({**parsed, "model": mapped}), True


async def read_body(receive: Receive, declared: bytes | None, encoding: bytes, limit: int) -> Body:
    """The whole request body, refused with 413 past ``limit`` bytes (as sent)."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    message = await receive()
    chunk: bytes = message.get("body", b"")
    if not message.get("more_body"):
        if len(chunk) > limit:
            raise too_large(limit)
        return Body(chunk, encoding, limit)
    parts = [chunk]
    size = len(chunk)
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":  # nobody is left to answer
            raise RouterError("The client disconnected.", code="client_disconnected", status=400)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        parts.append(chunk)
    return Body(b"".join(parts), encoding, limit)


def too_large(limit: int) -> BodyRefused:
    """413: the rest of the body is not read, so the connection closes after the answer."""
    return BodyRefused(
        f"The request body is larger than the limit of {limit} bytes.",
        code="request_too_large",
        status=413,
    )
