"""Headers in and out: client keys, hop-by-hop, credentials, request ids, safe paths.

Client credentials never leave the router: a client may present its key as
``Authorization: Bearer``, ``x-api-key`` (Anthropic's SDKs) or ``api-key`` (Azure's), and
all three are dropped before a call goes upstream. The backend's key goes out in the
backend's ``api_key_header``; when that is not set, in the scheme the client used
(``x-api-key`` in, ``x-api-key`` out; otherwise ``Authorization: Bearer``).
"""

from __future__ import annotations

import functools
import hmac
import random
import re
from typing import Any

from canary.config.model import Backend, Config, bearer_digest, digest
from canary.errors import RouterError
from canary.proxy.usage import readable_encodings

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
CLIENT_KEYS = (b"authorization", b"x-api-key", b"api-key")
# Replaced by ours (host, credentials, request id) or recomputed (content-length).
DROP_REQUEST = HOP_BY_HOP | {b"host", b"content-length", b"expect", b"x-request-id", *CLIENT_KEYS}
DROP_RESPONSE = HOP_BY_HOP | {b"date"}  # uvicorn adds its own; two would confuse clients
_REQUEST_ID = re.compile(rb"[!-~]{1,128}")


def request_id(given: bytes | None) -> bytes:
    """The client's ``x-request-id`` when it is sane (printable, short), else a new one."""
    if given and _REQUEST_ID.fullmatch(given):
        return given
    # 96 bits from the process's PRNG (seeded from the OS at start): unique per call
    # without a getrandom(2) per call, and ids are labels, not secrets.
    return b"%024x" % random.getrandbits(96)


def admit(cfg: Config | None, scope: Any, keys: dict[bytes, bytes]) -> Config:
    """The checks before any route, for a call or a session: a config is loaded, the
    client's key (in ``keys``) is one of the configured, and the path is a plain one."""
    if cfg is None:
        raise RouterError(
            "No valid configuration is loaded; GET /status shows why.",
            code="no_config",
            status=503,
        )
    if cfg.auth.api_key_digests:
        check_client_key(cfg, keys)
    check_path(scope["path"], scope.get("raw_path"))
    return cfg


def check_client_key(cfg: Config, hdrs: dict[bytes, bytes]) -> None:
    """Refuse a request without one of the configured client keys (in any of the three)."""
    given = bearer_digest(hdrs.get(b"authorization"))
    if not given:
        raw = hdrs.get(b"x-api-key") or hdrs.get(b"api-key")
        given = digest(raw.decode("utf-8", "replace").strip()) if raw else b""
    ok = False
    for known in cfg.auth.api_key_digests:  # compare with every key: no early exit
        ok |= hmac.compare_digest(given, known)
    if not ok:
        raise RouterError(
            "Missing or invalid API key: send 'Authorization: Bearer <key>' (or x-api-key) "
            "with a client key.",
            code="invalid_api_key",
            status=401,
        )


def check_path(path: str, raw_path: bytes | None) -> None:
    """Forward only plain ``/v1/...`` paths: no dot segments, raw or percent-encoded.

    ``base_url + path`` would otherwise let ``/v1/../admin`` (or ``%2e%2e``) reach any
    path on the provider's host with the backend's key attached.
    """
    raw = raw_path if raw_path is not None else path.encode()
    if not raw.startswith(b"/v1/") or (
        ("/." in path or b"%2e" in raw.lower()) and any(p in (".", "..") for p in path.split("/"))
    ):
        raise RouterError(
            "The request path must be /v1/... without '.' or '..' segments.",
            code="invalid_path",
            status=400,
        )


def upstream_headers(
    client: list[tuple[bytes, bytes]], backend: Backend, rid: bytes, rewritten: bool
) -> list[tuple[bytes, bytes]]:
    """The client's headers as ``backend`` gets them: no hop-by-hop, no client key, the
    backend's key in its header, our request id; ``rewritten`` drops Content-Encoding."""
    drop = DROP_REQUEST
    scheme = b"authorization"
    for k, v in client:
        if k == b"connection":  # headers the client named hop-by-hop go no further
            drop = without(DROP_REQUEST, v)
        elif k == b"x-api-key":
            scheme = k
    if rewritten:
        drop = drop | {b"content-encoding"}
    # Ask for codings whose usage canary can read (gzip, deflate), never br or zstd.
    out = [
        (k, readable_encodings(v) if k == b"accept-encoding" else v)
        for k, v in client
        if k not in drop
    ]
    out.append((b"x-request-id", rid))
    if backend.api_key:
        header = backend.api_key_header.encode() if backend.api_key_header else scheme
        key = backend.api_key.encode()
        out.append((header, b"Bearer " + key if header == b"authorization" else key))
    return out


@functools.lru_cache(maxsize=256)
def without(base: frozenset[bytes], connection: bytes) -> frozenset[bytes]:
    """``base`` plus the header names a ``Connection`` header lists as hop-by-hop.

    Cached: nearly every client sends the same few values ("keep-alive")."""
    return base | frozenset(t.strip().lower() for t in connection.split(b",") if t.strip())


def header(hdrs: dict[bytes, bytes], name: str) -> str | None:
    value = hdrs.get(name.encode())
    return value.decode("latin-1") if value is not None else None
