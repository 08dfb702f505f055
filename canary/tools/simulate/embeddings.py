"""OpenAI Embeddings (``/v1/embeddings``): eight floats per input, from a hash of it, so
the same input always gets the same vector; as floats or, as the openai client asks by
default, base64 of little-endian float32.
"""

from __future__ import annotations

import base64
import hashlib
import struct

import orjson

from canary.tools.simulate.answer import Call, Reply, count_words
from canary.tools.simulate.asgi import Refused


def embed(call: Call) -> Reply:
    """``POST /v1/embeddings``."""
    raw = call.payload.get("input")
    token_ids = isinstance(raw, list) and bool(raw) and isinstance(raw[0], int)
    inputs = [raw] if isinstance(raw, str) or token_ids else raw
    if (
        not isinstance(inputs, list)
        or not inputs
        or not all(isinstance(i, str | list) for i in inputs)
    ):
        message = "'input' must be a string or a list of strings or token ids, not empty"
        raise Refused(400, message, "invalid_request")
    as_base64 = call.payload.get("encoding_format") == "base64"  # the openai client's default
    data = []
    for index, item in enumerate(inputs):
        vector = _vector(item)
        embedding = base64.b64encode(struct.pack("<8f", *vector)).decode() if as_base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = max(1, count_words(inputs))
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    body = {"object": "list", "data": data, "model": call.model, "usage": usage}
    return Reply(body, None, tokens, 0)


def _vector(item: object) -> list[float]:
    """Eight floats in [-1, 1) from a hash of the input: the same input, the same vector."""
    digest = hashlib.sha256(orjson.dumps(item)).digest()
    return [round(n / 2**31 - 1, 6) for n in struct.unpack("<8I", digest)]
