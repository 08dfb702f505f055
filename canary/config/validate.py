"""Validation: the tree read from routes.yaml (``Tree``) -> the frozen model (``Config``).

Nothing stops at the first problem: each check records a ``ConfigProblem`` located by
file, line and key path (``routes.yaml:14: routes[0].weights.relay: must be >= 0``), leaves
the bad value out and carries on, so one ``ConfigError`` lists everything wrong with an edit.

Defaults are written once, on the model's dataclasses: a section is built from the keys
the file gives (``_section``), and the dataclass fills in the rest. What each number must
be is written once too, in the rule tables below.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

from canary.config.checks import ANY, Num, Problems, Reader, Rule, kind
from canary.config.model import (
    Auth,
    Backend,
    Config,
    Cors,
    Match,
    Price,
    Readiness,
    Retry,
    Rollback,
    Route,
    Server,
    Shadow,
    State,
    Sticky,
    Telemetry,
    digest,
)
from canary.config.rollout import ROLLOUT_RULES, rollout_block
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

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
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
_ROUTE_FLAGS: dict[str, Rule] = {"fallback": bool}
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
_ROUTE = {"name", "match", "weights", "baseline", "sticky", "shadow", *_ROUTE_FLAGS}
_SHADOW: dict[str, Rule] = {
    "sample": Num(maximum=1),
    "max_concurrency": Num(minimum=1, maximum=10_000, integer=True),
    "max_usd_per_day": ANY,
}
_MATCH = {"paths", "models", "headers"}
NAME_PATTERN = _NAME.pattern  # backend and route names
TRACES = ("auto", "on", "off")  # telemetry.traces; YAML 1.1 reads a bare on/off as a boolean

# Every rule table by the dataclass it builds: validation reads them above, and the JSON
# Schema and the configuration reference (``canary.config.schema``) read them here.
RULES: dict[type, Mapping[str, Rule]] = {
    Backend: _BACKEND_LIMITS,
    Route: _ROUTE_FLAGS,
    Shadow: _SHADOW,
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
    routes = _routes(r, top.get("routes"), set(backends))
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
    if not _NAME.match(name):
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


def _routes(r: Reader, value: Any, backends: set[str]) -> list[Route]:
    if value is None:
        r.p.add("routes", "at least one route is required")
        return []
    if not isinstance(value, list) or not value:
        r.p.add("routes", "must be a non-empty list of routes")
        return []
    seen: set[str] = set()
    return [_route(r, i, spec, backends, seen) for i, spec in enumerate(value)]


def _route(r: Reader, i: int, spec: Any, backends: set[str], seen: set[str]) -> Route:
    path = f"routes[{i}]"
    rt = r.mapping(spec, path, _ROUTE)
    name = r.string(rt.get("name"), f"{path}.name", f"route{i}")
    if not _NAME.match(name):
        r.p.add(f"{path}.name", "route names use letters, digits, '_', '.', '-' (at most 64)")
    if name in seen:
        r.p.add(f"{path}.name", f"duplicate route name {name!r}")
    seen.add(name)
    weights = _weights(r, rt.get("weights"), f"{path}.weights", backends)
    baseline = r.string(rt.get("baseline"), f"{path}.baseline") or next(iter(weights), "")
    if "baseline" in rt and baseline not in backends:
        r.p.add(f"{path}.baseline", f"unknown backend {baseline!r}")
    elif weights and baseline not in weights:
        r.p.add(f"{path}.baseline", f"{baseline!r} is not in this route's weights")
    return Route(
        name=name,
        match=_match(r, rt.get("match"), f"{path}.match"),
        weights=weights,
        baseline=baseline,
        sticky=_sticky(r, rt.get("sticky"), f"{path}.sticky"),
        shadow=_shadow(r, rt.get("shadow"), f"{path}.shadow", backends),
        **r.values(rt, path, _ROUTE_FLAGS),
    )


def _shadow(r: Reader, value: Any, path: str, backends: set[str]) -> Shadow | None:
    """Where a route's calls are copied to (SPEC §9); None when it has no ``shadow``."""
    if value is None:
        return None
    s = r.mapping(value, path, {"backend", *_SHADOW})
    backend = r.string(s.get("backend"), f"{path}.backend")
    if backend not in backends:
        defined = ", ".join(sorted(backends))
        r.p.add(f"{path}.backend", f"unknown backend {backend!r} (defined: {defined})")
    return Shadow(backend=backend, **r.values(s, path, _SHADOW))


def _weights(r: Reader, value: Any, path: str, backends: set[str]) -> dict[str, float]:
    if value is None:
        r.p.add(path, "is required (e.g. {legacy: 100})")
        return {}
    raw = r.mapping(value, path)
    out: dict[str, float] = {}
    for name, w in raw.items():
        if name not in backends:
            defined = ", ".join(sorted(backends))
            r.p.add(f"{path}.{name}", f"unknown backend {name!r} (defined: {defined})")
            continue
        weight = r.number(w, f"{path}.{name}")
        if weight is not None:
            out[name] = weight
    if isinstance(value, dict) and not value:
        r.p.add(path, "must name at least one backend (e.g. {legacy: 100})")
    elif raw and len(out) == len(raw) and sum(out.values()) <= 0:
        r.p.add(path, "weights must not all be zero")
    return out


def _match(r: Reader, value: Any, path: str) -> Match:
    m = r.mapping(value, path, _MATCH)
    paths = r.strings(m.get("paths"), f"{path}.paths")
    for i, p in enumerate(paths or []):
        if not p.startswith("/"):
            r.p.add(f"{path}.paths[{i}]", "must start with '/' (e.g. /v1/chat/completions)")
        elif "*" in p[:-1]:
            r.p.add(f"{path}.paths[{i}]", "'*' may only end a path, as a prefix (/v1/messages*)")
    models = r.strings(m.get("models"), f"{path}.models")
    return Match(
        paths=frozenset(p for p in paths if not p.endswith("*")) if paths else None,
        prefixes=tuple(p[:-1] for p in paths or [] if p.endswith("*")),
        models=tuple(models) if models else None,
        headers=_headers(r, m.get("headers"), f"{path}.headers"),
        model_pattern=_globs(r, models, f"{path}.models") if models else None,
    )


def _globs(r: Reader, models: list[str], path: str) -> re.Pattern[str] | None:
    """The model globs as one regex, compiled once, here."""
    for i, glob in enumerate(models):
        if glob.count("[") != glob.count("]"):
            r.p.add(f"{path}[{i}]", f"bad glob {glob!r}: unbalanced '['")
    try:
        return re.compile("|".join(fnmatch.translate(g) for g in models))
    except re.error as exc:
        r.p.add(path, f"bad glob: {exc}")
        return None


def _headers(r: Reader, value: Any, path: str) -> tuple[tuple[str, str], ...]:
    headers = []
    for key, want in r.mapping(value, path).items():
        want = r.texts.get(f"{path}.{key}", want)  # an env value stays verbatim
        if not isinstance(want, str | int | float) or isinstance(want, bool):
            r.p.add(f"{path}.{key}", f"must be a string, not {kind(want)}")
        else:
            headers.append((key.lower(), str(want)))
    return tuple(headers)


def _sticky(r: Reader, value: Any, path: str) -> Sticky | None:
    if value is None:
        return None
    text = r.string(value, path)
    source, _, name = text.partition(":")
    if source not in ("header", "body") or not name:
        r.p.add(path, f"must be 'header:NAME' or 'body:FIELD', not {text!r}")
        return None
    return Sticky(
        source="header" if source == "header" else "body",
        name=name.lower() if source == "header" else name,
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
