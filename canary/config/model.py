"""The config model: routes.yaml as small frozen dataclasses, the only form canary uses.

Built by ``canary.config.validate`` from what ``canary.config.loader`` read; nothing else
in canary sees raw YAML. Every default is written here, once, on its field, as the type it
loads as (``60.0``, not ``60``): validation passes only the keys a file gives and lets the
dataclass fill in the rest. Secrets (upstream keys, client keys, admin token, a Redis URL)
are masked in ``repr`` so a stray log of a config object leaks nothing.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal
from urllib.parse import urlsplit

DEFAULT_MAX_BODY_BYTES = 10 << 20
DEFAULT_MAX_UPLOAD_BYTES = 512 << 20  # OpenAI's Files limit
DEFAULT_HOLD_ANSWER_BYTES = 4 << 20
DEFAULT_STEPS = (1.0, 5.0, 25.0, 50.0, 100.0)  # a rollout's steps, in percent


def _secret(value: str) -> str:
    return "'***'" if value else "''"


BILLING_APIS = ("new-api", "one-api", "openrouter", "sub2api")  # SPEC §11


@dataclass(frozen=True, slots=True)
class Billing:
    """Where canary reads the bill of a backend's key (SPEC §11), polled off the request path."""

    api: Literal["new-api", "one-api", "openrouter", "sub2api"]  # whose billing API it speaks
    url: str  # the billing API's origin; omitted in the file: the origin of ``base_url``
    poll_s: float = 60.0  # seconds between polls (with jitter)


@dataclass(frozen=True, slots=True)
class Backend:
    """One upstream provider; ``api_key`` goes upstream in ``api_key_header``
    (``authorization`` as ``Bearer KEY``, ``x-api-key`` or ``api-key``; None: in the
    scheme the client used)."""

    name: str
    base_url: str  # http(s) URL the request path is appended to (``https://api.openai.com/v1``)
    api_key: str = field(default="", repr=False)  # sent upstream; never logged
    max_concurrency: int | None = None  # in-flight requests to this backend; None: no limit
    max_qps: float | None = None  # request starts in any one-second window; None: no limit
    timeout_s: float = 120.0  # wait for the response headers, and for each next stream chunk
    model_map: Mapping[str, str] = field(default_factory=dict)  # client model -> upstream model
    api_key_header: str | None = None  # where the key goes; None: the scheme the client used
    billing: Billing | None = None  # read this key's bill (SPEC §11); None: not read

    def __repr__(self) -> str:
        return (
            f"Backend(name={self.name!r}, base_url={redact_url(self.base_url)!r}, "
            f"api_key={_secret(self.api_key)}, max_concurrency={self.max_concurrency}, "
            f"max_qps={self.max_qps}, timeout_s={self.timeout_s}, "
            f"api_key_header={self.api_key_header!r})"
        )


@dataclass(frozen=True, slots=True)
class Sticky:
    """Where the sticky key comes from: a request header or a top-level body field."""

    source: Literal["header", "body"]
    name: str

    def __str__(self) -> str:
        return f"{self.source}:{self.name}"


@dataclass(frozen=True, slots=True)
class Match:
    """What a call must be for its route to take it; an omitted predicate holds for any.

    Globs are compiled once, here."""

    paths: frozenset[str] | None = None  # exact paths, or a prefix ending in ``*``; omitted: any
    prefixes: tuple[str, ...] = ()  # from paths written with a trailing ``*``
    models: tuple[str, ...] | None = None  # globs on the body's ``model``; omitted: any
    headers: tuple[tuple[str, str], ...] = ()  # request headers that must all match
    model_pattern: re.Pattern[str] | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Shadow:
    """Copies of a route's calls to ``backend``, compared with the answer and discarded."""

    backend: str  # where the copies go
    sample: float = 0.1  # share of the calls answered by another backend
    max_concurrency: int = 8  # shadow calls in flight; over it a copy is skipped
    max_usd_per_day: float = 5.0  # shadow spend cap (at ``pricing``); over it, copies stop


@dataclass(frozen=True, slots=True)
class Route:
    """One routing rule; the first route whose ``match`` holds takes the call."""

    name: str  # shown in /status, metrics and x-canary-route; omitted: ``route<i>``
    match: Match  # omitted: every call
    weights: Mapping[str, float]  # backend -> relative weight (any sum > 0)
    baseline: str  # where rollback and fallback send traffic; omitted: first in weights
    sticky: Sticky | None  # ``header:NAME`` or ``body:FIELD``; omitted: per request
    fallback: bool = False  # retry a canary call that failed early, once, on the baseline
    shadow: Shadow | None = None  # copy calls to a backend, compare, discard (SPEC §9)


@dataclass(frozen=True, slots=True)
class Rollback:
    """When a canary's circuit opens (its traffic goes to the baseline) and closes again."""

    window_s: float = 60.0  # sliding window for error rates
    min_requests: int = 100  # no verdict below this many calls in the window
    max_error_rate: float = 0.05  # trip when a non-baseline backend's rate exceeds it
    open_s: float = 300.0  # stay rolled back this long before probing
    probe_requests: int = 10  # calls let through half-open before closing again
    auto_resume: bool = True  # false: stay rolled back until routes.yaml changes


@dataclass(frozen=True, slots=True)
class Readiness:
    """What "ready for full migration" on /status needs of every canary."""

    min_requests: int = 500  # calls since its circuit last closed or its config changed
    max_error_rate: float = 0.05  # its error rate over the window stays below this
    max_model_mismatch_rate: float = 0.0  # answers naming another model than asked (SPEC §9)
    min_prompt_token_match: float = 0.95  # shadow pairs with equal prompt tokens
    max_latency_ratio_p95: float = 2.0  # canary p95 / baseline p95 over the window
    # A backend's bill / its metered cost at ``pricing`` over the last hour (SPEC §11).
    max_billing_ratio: float | None = 1.10  # None: not checked
    min_runway_h: float | None = None  # hours of balance left at the last hour's burn; None: off
    # The shadow pairs' same-model p-value (SPEC §9) below which the canary is not ready;
    # None: not checked.
    min_same_model_p: float | None = None


@dataclass(frozen=True, slots=True)
class Alerts:
    """Told once per crossing and once when it clears (SPEC §11): a JSON POST to each
    webhook, an event and a warning log line."""

    webhooks: tuple[str, ...] = field(default=(), repr=False)  # a URL may carry a token
    min_runway_h: float = 24.0  # a backend's balance runs out sooner than this


@dataclass(frozen=True, slots=True)
class Analysis:
    """Canary against baseline over a rollout step; a ``None`` bar is not checked."""

    max_error_rate: float | None = 0.02  # the canary's error rate over the step
    max_latency_ratio_p95: float | None = 1.5  # canary p95 / baseline p95 over the step
    max_ttfb_ratio_p95: float | None = None  # the same for streams' time to first byte
    max_model_mismatch_rate: float | None = None  # answers naming another model (model audit)
    # Shadow pairs (SPEC §9) whose prompt tokens differ, when the routes copy to the backend.
    max_shadow_prompt_mismatch: float | None = None


@dataclass(frozen=True, slots=True)
class Rollout:
    """A progressive rollout (SPEC §10): ``backend``'s share of ``routes`` through ``steps``."""

    backend: str  # the backend rolled out
    routes: tuple[str, ...]  # omitted: every route with the backend in its weights
    steps: tuple[float, ...] = DEFAULT_STEPS  # the backend's share of those routes, in percent
    step_s: float = 600.0  # each step lasts at least this long...
    step_min_requests: int = 200  # ...and carries at least this many calls to the backend
    gates: tuple[float, ...] = ()  # before these steps, wait for ``canary rollout promote``
    analysis: Analysis = field(default_factory=Analysis)  # any miss fails the step
    webhooks: tuple[str, ...] = field(default=(), repr=False)  # told of each step (JSON POST)


@dataclass(frozen=True, slots=True)
class Retry:
    """Tries again on the same backend: 429/502/503/504 and connections that never opened."""

    max_attempts: int = 3  # tries per backend, the first included
    backoff_s: float = 0.5  # exponential with full jitter; Retry-After is honoured
    budget: float = 0.2  # retries may add at most this share of a backend's calls
    unsafe: bool = False  # also resend calls that may have reached the provider (billed twice)


@dataclass(frozen=True, slots=True)
class State:
    """Where limits, windows and circuits are shared; read at start-up."""

    redis_url: str = field(default="", repr=False)  # empty: in-process; set: shared by replicas

    def __repr__(self) -> str:
        return f"State(redis_url={redact_url(self.redis_url)!r})"


@dataclass(frozen=True, slots=True)
class Auth:
    """Client keys and the admin token, kept as SHA-256 digests: the raw keys are not needed.

    In routes.yaml: ``api_keys`` (comma-separated, or a list; empty: open) and
    ``admin_token`` (enables ``POST /admin/*``)."""

    api_key_digests: tuple[bytes, ...] = field(default=(), repr=False)
    admin_token_digest: bytes | None = field(default=None, repr=False)
    secrets: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    def __repr__(self) -> str:
        admin = "set" if self.admin_token_digest else "unset"
        return f"Auth(api_keys={len(self.api_key_digests)}, admin_token={admin})"


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens."""

    input: float = 0.0  # USD per million input tokens
    output: float = 0.0  # USD per million output tokens


@dataclass(frozen=True, slots=True)
class Cors:
    """Browser callers (SPEC §3a): off while ``allow_origins`` is empty."""

    allow_origins: tuple[str, ...] = ()  # exact origins, or "*" for any
    allow_headers: tuple[str, ...] = ()  # beyond the SDKs' own (authorization, content-type, ...)
    max_age_s: int = 600  # how long a browser may cache a preflight's answer

    def allows(self, origin: bytes) -> bool:
        return "*" in self.allow_origins or origin.decode("latin-1") in self.allow_origins


@dataclass(frozen=True, slots=True)
class Server:
    """Bounds of the HTTP server."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # a JSON body (read whole); larger gets 413
    queue_timeout_s: float = 5.0  # how long a call over a backend's limit waits for a slot
    drain_timeout_s: float = 30.0  # after SIGTERM: how long calls in flight may still run
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES  # a non-JSON body, streamed (512 MiB)
    hold_answer_bytes: int = DEFAULT_HOLD_ANSWER_BYTES  # non-stream JSON answers read whole
    client_timeout_s: float = 30.0  # the longest wait for the next bytes of a client's body
    cors: Cors = field(default_factory=Cors)
    session_max_s: float = 3600.0  # a WebSocket session's longest life; then closed with 1001


@dataclass(frozen=True, slots=True)
class Telemetry:
    """OpenTelemetry traces (SPEC §12); the standard ``OTEL_*`` variables configure the
    exporter. Read at start-up."""

    # auto: on when OTEL_EXPORTER_OTLP_ENDPOINT (or its _TRACES_ variant) is set.
    traces: Literal["auto", "on", "off"] = "auto"


@dataclass(frozen=True, slots=True)
class Config:
    """A validated routes.yaml. ``version`` is the SHA-256 of the file's bytes."""

    path: str
    version: str
    loaded_at: datetime
    backends: Mapping[str, Backend]
    routes: tuple[Route, ...]
    rollback: Rollback
    readiness: Readiness
    retry: Retry
    state: State
    auth: Auth
    pricing: Mapping[str, Mapping[str, Price]]
    server: Server
    rollout: Rollout | None = None
    alerts: Alerts = field(default_factory=Alerts)
    telemetry: Telemetry = field(default_factory=Telemetry)

    def secrets(self) -> frozenset[str]:
        """Every secret string this config holds, for log and error redaction."""
        keys = {b.api_key for b in self.backends.values() if b.api_key}
        for url in [self.state.redis_url, *(b.base_url for b in self.backends.values())]:
            parts = urlsplit(url)
            keys.update(s for s in (parts.password, parts.query) if s)  # a key may ride in a URL
        return frozenset(keys | self.auth.secrets)


def redact_url(url: str) -> str:
    """``scheme://host:port/path`` without userinfo, query or fragment (they may hold keys)."""
    if not url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def bearer_digest(authorization: str | bytes | None) -> bytes:
    """The digest of an ``Authorization: Bearer <token>`` value; empty when there is none."""
    if isinstance(authorization, bytes):
        authorization = authorization.decode("utf-8", "replace")
    if not authorization or authorization[:7].lower() != "bearer ":
        return b""
    token = authorization[7:].strip()
    return digest(token) if token else b""
