"""Validation: the tree read from routes.yaml (``Tree``) -> the frozen model (``Config``).

Nothing stops at the first problem: each check records a ``ConfigProblem`` located by
file, line and key path (``routes.yaml:14: routes[0].weights.relay: must be >= 0``), leaves
the bad value out and carries on, so one ``ConfigError`` lists everything wrong with an edit.

Defaults are written once, on the model's dataclasses: a section is built from the keys
the file gives (``_section``), and the dataclass fills in the rest. What each number must
be is written once too, in the rule tables below.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

from canary.config.checks import ANY, Num, Problems, Reader, Rule
from canary.config.model import (
    Auth,
    Backend,
    Config,
    Cors,
    Price,
    Readiness,
    Retry,
    Rollback,
    Route,
    Server,
    Shadow,
    State,
    Telemetry,
    digest,
)
from canary.config.rollout import ROLLOUT_RULES, rollout_block
from canary.config.routing import NAME, ROUTE_FLAGS, SHADOW_RULES, read_routes
from canary.config.spend import (
    READINESS_NULLABLE,
    SPEND_CHOICES,
    SPEND_RULES,
    alerts_block,
    billing_block,
    readiness_nulls,
)
from canary.errors import ConfigProblem

T = TypeVar("T")

_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]{1,253}$")  # scheme://host[:port]
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")  # an HTTP header name

# What each number (or flag) of a section must be, in the order problems are reported.
# Defaults are not here: they live on the dataclass each table builds.
_ROLLBACK: dict[str, Rule] = {
    "window_s": Num(minimum=1, maximum=86400),
    "min_requests": Num(minimum=1, integer=True),
    "max_error_rate": Num(maximum=1),
    "open_s": Num(strict_min=True, maximum=86400 * 7),
    "probe_requests": Num(minimum=1, maximum=10_000, integer=True),
    "auto_resume": bool,
}
_READINESS: dict[str, Rule] = {
    "min_requests": Num(integer=True),
    "max_error_rate": Num(maximum=1),
    "max_model_mismatch_rate": Num(maximum=1),
    "min_prompt_token_match": Num(maximum=1),
    "max_latency_ratio_p95": Num(strict_min=True, maximum=1000),
    "max_billing_ratio": Num(strict_min=True, maximum=1000),  # null (off): readiness_nulls
    "min_runway_h": Num(maximum=1e6),
    "min_same_model_p": Num(strict_min=True, maximum=0.5),  # null (the default): off
}
_RETRY: dict[str, Rule] = {
    "max_attempts": Num(minimum=1, maximum=20, integer=True),
    "backoff_s": Num(maximum=60),
    "budget": Num(maximum=1),
    "unsafe": bool,
}
_SERVER: dict[str, Rule] = {
    "max_body_bytes": Num(minimum=1, maximum=1 << 30, integer=True),
    "queue_timeout_s": Num(maximum=600),
    "drain_timeout_s": Num(maximum=3600),
    "max_upload_bytes": Num(minimum=1, maximum=1 << 40, integer=True),
    "hold_answer_bytes": Num(maximum=1 << 30, integer=True),
    "client_timeout_s": Num(strict_min=True, maximum=3600),
    "session_max_s": Num(strict_min=True, maximum=7 * 86_400),
}
_CORS: dict[str, Rule] = {"max_age_s": Num(maximum=86400, integer=True)}
_BACKEND_LIMITS: dict[str, Rule] = {
    "max_concurrency": Num(minimum=1, integer=True),
    "max_qps": Num(strict_min=True),
    "timeout_s": Num(strict_min=True, maximum=3600),
}
_PRICE: dict[str, Rule] = {"input": ANY, "output": ANY}

_TOP = {
    "backends",
    "routes",
    "rollback",
    "readiness",
    "retry",
    "state",
    "auth",
    "pricing",
    "server",
    "rollout",
    "alerts",
    "telemetry",
}
_BACKEND = {"base_url", "api_key", "api_key_header", "model_map", "billing", *_BACKEND_LIMITS}
KEY_HEADERS = ("authorization", "x-api-key", "api-key")  # where a backend's key may go
NAME_PATTERN = NAME.pattern  # backend and route names
TRACES = ("auto", "on", "off")  # telemetry.traces; YAML 1.1 reads a bare on/off as a boolean

# Every rule table by the dataclass it builds: validation reads them above, and the JSON
# Schema and the configuration reference (``canary.config.schema``) read them here.
RULES: dict[type, Mapping[str, Rule]] = {
    Backend: _BACKEND_LIMITS,
    Route: ROUTE_FLAGS,
    Shadow: SHADOW_RULES,
    Rollback: _ROLLBACK,
    Readiness: {**_READINESS, **READINESS_NULLABLE},
    Retry: _RETRY,
    Price: _PRICE,
    Server: _SERVER,
    Cors: _CORS,
    **ROLLOUT_RULES,
    **SPEND_RULES,
}
# Keys whose value is one of a few strings, by the dataclass that holds them.
CHOICES: dict[type, Mapping[str, Sequence[str]]] = {
    Backend: {"api_key_header": KEY_HEADERS},
    Telemetry: {"traces": TRACES},
    **SPEND_CHOICES,
}


@dataclass(frozen=True, slots=True)
class Tree:
    """A parsed routes.yaml before validation: its data and where each key path was."""

    file: str
    version: str  # SHA-256 of the file's bytes
    data: Any
    lines: Mapping[str, int]  # key path -> line in the file
    texts: Mapping[str, str]  # key path -> expanded text of a plain ``${VAR}`` scalar
    problems: Sequence[ConfigProblem]  # found while reading: unset variables, duplicate keys


def validate(tree: Tree) -> Config:
    """The model of a parsed routes.yaml; raise ``ConfigError`` listing every problem."""
    problems = Problems(tree.file, tree.lines, found=tree.problems)
    r = Reader(problems, tree.texts)
    top = r.mapping(tree.data, "", _TOP)
    if not isinstance(tree.data, dict):
        raise problems.error()
    backends = _backends(r, top.get("backends"))
    routes = read_routes(r, top.get("routes"), set(backends))
    rollback = _section(r, top.get("rollback"), "rollback", Rollback, _ROLLBACK)
    readiness = _section(r, top.get("readiness"), "readiness", Readiness, _READINESS)
    readiness = readiness_nulls(r, top.get("readiness"), readiness)
    retry = _section(r, top.get("retry"), "retry", Retry, _RETRY)
    state = _state(r, top.get("state"))
    auth = _auth(r, r.mapping(top.get("auth"), "auth", {"api_keys", "admin_token"}))
    pricing = _pricing(r, top.get("pricing"), set(backends))
    server = _server(r, top.get("server"))
    rollout = rollout_block(r, top.get("rollout"), backends, routes)
    alerts = alerts_block(r, top.get("alerts"))
    telemetry = _telemetry(r, top.get("telemetry"))
    if problems.items:
        raise problems.error()
    return Config(
        path=tree.file,
        version=tree.version,
        loaded_at=datetime.now(UTC),
        backends=backends,
        routes=tuple(routes),
        rollback=rollback,
        readiness=readiness,
        retry=retry,
        state=state,
        auth=auth,
        pricing=pricing,
        server=server,
        rollout=rollout,
        alerts=alerts,
        telemetry=telemetry,
    )


def _section(
    r: Reader, value: Any, path: str, build: Callable[..., T], rules: Mapping[str, Rule]
) -> T:
    """A section of numbers and flags: the keys given, checked; the dataclass fills the rest."""
    return build(**r.values(r.mapping(value, path, rules.keys()), path, rules))


def _server(r: Reader, value: Any) -> Server:
    """The numbers of ``server`` and its ``cors`` block."""
    given = r.mapping(value, "server", {*_SERVER, "cors"})
    numbers = r.values(given, "server", _SERVER)
    if "cors" not in given:
        return Server(**numbers)
    c = r.mapping(given["cors"], "server.cors", {"allow_origins", "allow_headers", *_CORS})
    origins = _strings_or_none(r, c.get("allow_origins"), "server.cors.allow_origins")
    for i, origin in enumerate(origins):
        if origin != "*" and not _ORIGIN.match(origin):
            r.p.add(f"server.cors.allow_origins[{i}]", 'must be "*" or scheme://host[:port]')
    headers = _strings_or_none(r, c.get("allow_headers"), "server.cors.allow_headers")
    for i, name in enumerate(headers):
        if not _TOKEN.match(name):
            r.p.add(f"server.cors.allow_headers[{i}]", "must be a header name")
    cors = Cors(
        allow_origins=tuple(origins),
        allow_headers=tuple(h.lower() for h in headers),
        **r.values(c, "server.cors", _CORS),
    )
    return Server(**numbers, cors=cors)


def _strings_or_none(r: Reader, value: Any, path: str) -> list[str]:
    """A list of strings where an empty list means "none" (``allow_origins: []`` is off)."""
    return [] if value == [] else r.strings(value, path) or []


def _backends(r: Reader, value: Any) -> dict[str, Backend]:
    raw = r.mapping(value, "backends")
    if value is None or (isinstance(value, dict) and not value):
        r.p.add("backends", "at least one backend is required")
    return {name: _backend(r, name, spec) for name, spec in raw.items()}


def _backend(r: Reader, name: str, spec: Any) -> Backend:
    path = f"backends.{name}"
    if not NAME.match(name):
        r.p.add(path, "backend names use letters, digits, '_', '.', '-' (at most 64)")
    b = r.mapping(spec, path, _BACKEND)
    base_url = r.string(b.get("base_url"), f"{path}.base_url").rstrip("/")
    parts = urlsplit(base_url)
    if not base_url:
        r.p.add(f"{path}.base_url", "is required")
    elif parts.scheme not in ("http", "https") or not parts.hostname:
        r.p.add(f"{path}.base_url", "must be an http:// or https:// URL with a host")
    elif parts.query or parts.fragment:
        r.p.add(f"{path}.base_url", "must not have a query or fragment (paths are appended)")
    api_key = r.string(b.get("api_key"), f"{path}.api_key").strip()  # mounted files end in \n
    if problem := _key_problem(api_key):
        r.p.add(f"{path}.api_key", problem)
    key_header = r.string(b.get("api_key_header"), f"{path}.api_key_header").lower() or None
    if key_header is not None and key_header not in KEY_HEADERS:
        r.p.add(f"{path}.api_key_header", f"must be one of {', '.join(KEY_HEADERS)}")
    model_map: dict[str, str] = {}
    for client_model, upstream in r.mapping(b.get("model_map"), f"{path}.model_map").items():
        if not isinstance(upstream, str) or not upstream:
            r.p.add(f"{path}.model_map.{client_model}", "must be a non-empty model name")
        else:
            model_map[client_model] = upstream
    return Backend(
        name=name,
        base_url=base_url,
        api_key=api_key,
        model_map=model_map,
        api_key_header=key_header,
        billing=billing_block(r, b.get("billing"), path, base_url),
        **r.values(b, path, _BACKEND_LIMITS),
    )


def _state(r: Reader, value: Any) -> State:
    st = r.mapping(value, "state", {"redis_url"})
    redis_url = r.string(st.get("redis_url"), "state.redis_url")
    if redis_url and urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
        r.p.add("state.redis_url", "must be a redis://, rediss:// or unix:// URL")
    return State(redis_url=redis_url)


def _auth(r: Reader, a: dict[str, Any]) -> Auth:
    keys_raw = a.get("api_keys")
    if isinstance(keys_raw, list):
        keys = [r.string(k, f"auth.api_keys[{i}]").strip() for i, k in enumerate(keys_raw)]
    else:
        keys = [k.strip() for k in r.string(keys_raw, "auth.api_keys").split(",")]
    keys = [k for k in keys if k]
    admin = r.string(a.get("admin_token"), "auth.admin_token").strip()
    return Auth(
        api_key_digests=tuple(digest(k) for k in keys),
        admin_token_digest=digest(admin) if admin else None,
        secrets=frozenset([*keys, admin] if admin else keys),
    )


def _pricing(r: Reader, value: Any, backends: set[str]) -> dict[str, dict[str, Price]]:
    out: dict[str, dict[str, Price]] = {}
    for backend, models in r.mapping(value, "pricing").items():
        path = f"pricing.{backend}"
        if backend not in backends:
            r.p.add(path, f"unknown backend {backend!r}")
            continue
        out[backend] = {
            model: _price(r, price, f"{path}.{model}")
            for model, price in r.mapping(models, path).items()
        }
    return out


def _price(r: Reader, value: Any, path: str) -> Price:
    p = r.mapping(value, path, _PRICE.keys())
    for key in _PRICE:
        if key not in p and isinstance(value, dict):
            r.p.add(path, f"missing {key!r} (USD per million tokens)")
    return Price(**r.values(p, path, _PRICE))


def _telemetry(r: Reader, value: Any) -> Telemetry:
    t = r.mapping(value, "telemetry", {"traces"})
    traces = t.get("traces")
    if traces is None:
        return Telemetry()
    if isinstance(traces, bool):  # an unquoted on/off
        return Telemetry(traces="on" if traces else "off")
    if traces == "auto" or traces == "on" or traces == "off":
        return Telemetry(traces=traces)
    r.p.add("telemetry.traces", f"must be one of {', '.join(TRACES)}")
    return Telemetry()


def _key_problem(key: str) -> str | None:
    """What makes ``key`` unusable in a header, in words that never quote the key."""
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        return "contains a control character"
    if any(c.isspace() for c in key):
        return "has whitespace inside it (keys have none: check how it was pasted)"
    if not key.isascii():
        at = next(i for i, c in enumerate(key) if not c.isascii())
        return (
            f"has a non-ASCII character at position {at + 1} (keys are ASCII: "
            "check how it was pasted, e.g. a typographic dash or quote)"
        )
    return None
