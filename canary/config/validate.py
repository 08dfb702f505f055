"""Turning the parsed routes.yaml into the model, every problem located and reported."""

from __future__ import annotations

import contextlib
import fnmatch
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from canary.config.model import (
    DEFAULT_MAX_BODY_BYTES,
    Auth,
    Backend,
    Config,
    Match,
    Price,
    Readiness,
    Retry,
    Rollback,
    Route,
    Server,
    State,
    Sticky,
    digest,
)
from canary.errors import ConfigError, ConfigProblem

MAX_NUMBER = 1e6

_PARENT = re.compile(r"(\.[^.\[\]]+|\[\d+\])$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Tree:
    """A parsed routes.yaml before validation: its data and where each key path was."""

    file: str
    version: str  # SHA-256 of the file's bytes
    data: Any
    lines: Mapping[str, int]  # key path -> line in the file
    texts: Mapping[str, str]  # key path -> expanded text of a plain ``${VAR}`` scalar
    problems: Sequence[ConfigProblem]  # found while reading: unset variables, duplicate keys


class _Problems:
    """Collects located problems; ``lines`` maps a key path to its line in the file."""

    def __init__(self, file: str, lines: Mapping[str, int]) -> None:
        self.file = file
        self.lines = lines
        self.items: list[ConfigProblem] = []

    def add(self, path: str, message: str) -> None:
        probe, line = path, self.lines.get(path)
        for _ in range(8):  # fall back to a nearby enclosing key's line; bounded on deep paths
            if line is not None or not probe:
                break
            parent = _PARENT.sub("", probe)
            probe = "" if parent == probe else parent  # a top-level key's parent is the root
            line = self.lines.get(probe)
        self.items.append(ConfigProblem(self.file, line, path, message))


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
}
_BACKEND = {
    "base_url",
    "api_key",
    "api_key_header",
    "max_concurrency",
    "max_qps",
    "timeout_s",
    "model_map",
}
KEY_HEADERS = ("authorization", "x-api-key", "api-key")
_ROUTE = {"name", "match", "weights", "baseline", "sticky", "fallback"}
_MATCH = {"paths", "models", "headers"}


class _Reader:
    """Typed accessors that record a located problem and return a default on bad input."""

    def __init__(self, problems: _Problems, texts: Mapping[str, str]) -> None:
        self.p = problems
        self.texts = texts  # expanded text of plain ``${VAR}`` scalars, by key path

    def mapping(self, value: Any, path: str, allowed: set[str] | None = None) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.p.add(path, f"must be a mapping, not {_kind(value)}")
            return {}
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                self.p.add(path, f"keys must be strings, not {_kind(key)}")
                continue
            if allowed is not None and key not in allowed:
                hint = ", ".join(sorted(allowed))
                self.p.add(_join(path, key), f"unknown key (expected one of: {hint})")
                continue
            out[key] = item
        return out

    def number(
        self,
        value: Any,
        path: str,
        default: float | None,
        *,
        minimum: float = 0.0,
        strict_min: bool = False,
        maximum: float = MAX_NUMBER,
        integer: bool = False,
    ) -> float | None:
        if value is None:
            return default
        if isinstance(value, str) and path in self.texts:  # a quoted "${VAR}" number
            with contextlib.suppress(ValueError):
                value = float(value) if any(c in value for c in ".eEni") else int(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.p.add(path, f"must be a number, not {_kind(value)}")
            return default
        if isinstance(value, int) and abs(value) > maximum:  # before float(): it may overflow
            self.p.add(path, f"must be <= {_fmt(maximum)}")
            return default
        if not math.isfinite(value):
            self.p.add(path, "must be a finite number")
            return default
        if integer and value != int(value):
            self.p.add(path, f"must be a whole number, not {value}")
            return default
        if strict_min and value <= minimum:
            self.p.add(path, f"must be > {_fmt(minimum)}")
            return default
        if value < minimum:
            self.p.add(path, f"must be >= {_fmt(minimum)}")
            return default
        if value > maximum:
            self.p.add(path, f"must be <= {_fmt(maximum)}")
            return default
        return int(value) if integer else float(value)

    def string(self, value: Any, path: str, default: str = "") -> str:
        if not isinstance(value, str) and self.texts.get(path):
            return self.texts[path]  # from the environment: verbatim, not as YAML typed it
        if value is None:
            return default
        if not isinstance(value, str):
            if isinstance(value, int | float) and not isinstance(value, bool):
                return str(value)  # an env value like 123 is still a usable string
            self.p.add(path, f"must be a string, not {_kind(value)}")
            return default
        return value

    def boolean(self, value: Any, path: str, default: bool) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            self.p.add(path, f"must be true or false, not {_kind(value)}")
            return default
        return value

    def strings(self, value: Any, path: str) -> list[str] | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            self.p.add(path, "must be a non-empty list of strings")
            return None
        out = []
        for i, item in enumerate(value):
            item = self.texts.get(f"{path}[{i}]", item)  # an env value stays verbatim
            if not isinstance(item, str) or not item:
                self.p.add(f"{path}[{i}]", "must be a non-empty string")
            else:
                out.append(item)
        return out


def validate(tree: Tree) -> Config:
    """The model of a parsed routes.yaml; raise ``ConfigError`` listing every problem."""
    file = tree.file
    problems = _Problems(file, tree.lines)
    problems.items.extend(tree.problems)
    r = _Reader(problems, tree.texts)
    top = r.mapping(tree.data, "", _TOP)
    if not isinstance(tree.data, dict):
        raise ConfigError(sorted(problems.items, key=lambda p: p.line or 0))

    backends = _backends(r, top.get("backends"))
    names = set(backends)
    routes = _routes(r, top.get("routes"), names)
    rollback = _rollback(r, r.mapping(top.get("rollback"), "rollback", set(Rollback.__slots__)))
    ready = r.mapping(top.get("readiness"), "readiness", set(Readiness.__slots__))
    readiness = Readiness(
        min_requests=_int(
            r.number(ready.get("min_requests"), "readiness.min_requests", 500, integer=True)
        ),
        max_error_rate=_float(
            r.number(ready.get("max_error_rate"), "readiness.max_error_rate", 0.05, maximum=1)
        ),
    )
    rt = r.mapping(top.get("retry"), "retry", set(Retry.__slots__))
    retry = Retry(
        max_attempts=_int(
            r.number(
                rt.get("max_attempts"), "retry.max_attempts", 3, minimum=1, maximum=20, integer=True
            )
        ),
        backoff_s=_float(r.number(rt.get("backoff_s"), "retry.backoff_s", 0.5, maximum=60)),
        budget=_float(r.number(rt.get("budget"), "retry.budget", 0.2, maximum=1)),
        unsafe=r.boolean(rt.get("unsafe"), "retry.unsafe", False),
    )
    st = r.mapping(top.get("state"), "state", {"redis_url"})
    redis_url = r.string(st.get("redis_url"), "state.redis_url")
    if redis_url and urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
        problems.add("state.redis_url", "must be a redis://, rediss:// or unix:// URL")
    auth = _auth(r, r.mapping(top.get("auth"), "auth", {"api_keys", "admin_token"}))
    pricing = _pricing(r, top.get("pricing"), names)
    sv = r.mapping(top.get("server"), "server", set(Server.__slots__))
    server = Server(
        max_body_bytes=_int(
            r.number(
                sv.get("max_body_bytes"),
                "server.max_body_bytes",
                DEFAULT_MAX_BODY_BYTES,
                minimum=1,
                maximum=1 << 30,
                integer=True,
            )
        ),
        queue_timeout_s=_float(
            r.number(sv.get("queue_timeout_s"), "server.queue_timeout_s", 5.0, maximum=600)
        ),
        drain_timeout_s=_float(
            r.number(sv.get("drain_timeout_s"), "server.drain_timeout_s", 30.0, maximum=3600)
        ),
    )
    if problems.items:
        raise ConfigError(sorted(problems.items, key=lambda p: p.line or 0))
    return Config(
        path=file,
        version=tree.version,
        loaded_at=datetime.now(UTC),
        backends=backends,
        routes=tuple(routes),
        rollback=rollback,
        readiness=readiness,
        retry=retry,
        state=State(redis_url=redis_url),
        auth=auth,
        pricing=pricing,
        server=server,
    )


def _backends(r: _Reader, value: Any) -> dict[str, Backend]:
    raw = r.mapping(value, "backends")
    if value is None or (isinstance(value, dict) and not value):
        r.p.add("backends", "at least one backend is required")
    out: dict[str, Backend] = {}
    for name, spec in raw.items():
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
        if any(ord(c) < 32 or ord(c) == 127 for c in api_key):
            r.p.add(f"{path}.api_key", "contains a control character")
        key_header = r.string(b.get("api_key_header"), f"{path}.api_key_header").lower() or None
        if key_header is not None and key_header not in KEY_HEADERS:
            r.p.add(f"{path}.api_key_header", f"must be one of {', '.join(KEY_HEADERS)}")
        model_map: dict[str, str] = {}
        for client_model, upstream in r.mapping(b.get("model_map"), f"{path}.model_map").items():
            if not isinstance(upstream, str) or not upstream:
                r.p.add(f"{path}.model_map.{client_model}", "must be a non-empty model name")
            else:
                model_map[client_model] = upstream
        conc = r.number(
            b.get("max_concurrency"), f"{path}.max_concurrency", None, minimum=1, integer=True
        )
        out[name] = Backend(
            name=name,
            base_url=base_url,
            api_key=api_key,
            max_concurrency=None if conc is None else int(conc),
            max_qps=r.number(b.get("max_qps"), f"{path}.max_qps", None, strict_min=True),
            timeout_s=_float(
                r.number(
                    b.get("timeout_s"), f"{path}.timeout_s", 120, strict_min=True, maximum=3600
                )
            ),
            model_map=model_map,
            api_key_header=key_header,
        )
    return out


def _routes(r: _Reader, value: Any, backends: set[str]) -> list[Route]:
    if value is None:
        r.p.add("routes", "at least one route is required")
        return []
    if not isinstance(value, list) or not value:
        r.p.add("routes", "must be a non-empty list of routes")
        return []
    out: list[Route] = []
    seen: set[str] = set()
    for i, spec in enumerate(value):
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
        out.append(
            Route(
                name=name,
                match=_match(r, rt.get("match"), f"{path}.match"),
                weights=weights,
                baseline=baseline,
                sticky=_sticky(r, rt.get("sticky"), f"{path}.sticky"),
                fallback=r.boolean(rt.get("fallback"), f"{path}.fallback", False),
            )
        )
    return out


def _weights(r: _Reader, value: Any, path: str, backends: set[str]) -> dict[str, float]:
    if value is None:
        r.p.add(path, "is required (e.g. {legacy: 100})")
        return {}
    raw = r.mapping(value, path)
    out: dict[str, float] = {}
    for name, w in raw.items():
        if name not in backends:
            r.p.add(
                f"{path}.{name}",
                f"unknown backend {name!r} (defined: {', '.join(sorted(backends))})",
            )
            continue
        weight = r.number(w, f"{path}.{name}", None)
        if weight is not None:
            out[name] = weight
    if isinstance(value, dict) and not value:
        r.p.add(path, "must name at least one backend (e.g. {legacy: 100})")
    elif raw and len(out) == len(raw) and sum(out.values()) <= 0:
        r.p.add(path, "weights must not all be zero")
    return out


def _match(r: _Reader, value: Any, path: str) -> Match:
    m = r.mapping(value, path, _MATCH)
    paths = r.strings(m.get("paths"), f"{path}.paths")
    for i, p in enumerate(paths or []):
        if not p.startswith("/"):
            r.p.add(f"{path}.paths[{i}]", "must start with '/' (e.g. /v1/chat/completions)")
        elif "*" in p[:-1]:
            r.p.add(f"{path}.paths[{i}]", "'*' may only end a path, as a prefix (/v1/messages*)")
    exact = [p for p in paths or [] if not p.endswith("*")]
    prefixes = tuple(p[:-1] for p in paths or [] if p.endswith("*"))
    models = r.strings(m.get("models"), f"{path}.models")
    pattern = None
    if models:
        for i, glob in enumerate(models):
            if glob.count("[") != glob.count("]"):
                r.p.add(f"{path}.models[{i}]", f"bad glob {glob!r}: unbalanced '['")
        try:
            pattern = re.compile("|".join(fnmatch.translate(g) for g in models))
        except re.error as exc:
            r.p.add(f"{path}.models", f"bad glob: {exc}")
    headers = []
    for key, want in r.mapping(m.get("headers"), f"{path}.headers").items():
        want = r.texts.get(f"{path}.headers.{key}", want)  # an env value stays verbatim
        if not isinstance(want, str | int | float) or isinstance(want, bool):
            r.p.add(f"{path}.headers.{key}", f"must be a string, not {_kind(want)}")
        else:
            headers.append((key.lower(), str(want)))
    return Match(
        paths=frozenset(exact) if paths else None,
        prefixes=prefixes,
        models=tuple(models) if models else None,
        headers=tuple(headers),
        model_pattern=pattern,
    )


def _sticky(r: _Reader, value: Any, path: str) -> Sticky | None:
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


def _rollback(r: _Reader, rb: dict[str, Any]) -> Rollback:
    def num(key: str, default: float, **kw: Any) -> float | None:
        return r.number(rb.get(key), f"rollback.{key}", default, **kw)

    return Rollback(
        window_s=_float(num("window_s", 60, minimum=1, maximum=86400)),
        min_requests=_int(num("min_requests", 100, minimum=1, integer=True)),
        max_error_rate=_float(num("max_error_rate", 0.05, maximum=1)),
        open_s=_float(num("open_s", 300, strict_min=True, maximum=86400 * 7)),
        probe_requests=_int(num("probe_requests", 10, minimum=1, maximum=10_000, integer=True)),
        auto_resume=r.boolean(rb.get("auto_resume"), "rollback.auto_resume", True),
    )


def _auth(r: _Reader, a: dict[str, Any]) -> Auth:
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


def _pricing(r: _Reader, value: Any, backends: set[str]) -> dict[str, dict[str, Price]]:
    out: dict[str, dict[str, Price]] = {}
    for backend, models in r.mapping(value, "pricing").items():
        path = f"pricing.{backend}"
        if backend not in backends:
            r.p.add(path, f"unknown backend {backend!r}")
            continue
        out[backend] = {}
        for model, price in r.mapping(models, path).items():
            pp = f"{path}.{model}"
            p = r.mapping(price, pp, {"input", "output"})
            for key in ("input", "output"):
                if key not in p and isinstance(price, dict):
                    r.p.add(pp, f"missing {key!r} (USD per million tokens)")
            out[backend][model] = Price(
                input=_float(r.number(p.get("input"), f"{pp}.input", 0.0)),
                output=_float(r.number(p.get("output"), f"{pp}.output", 0.0)),
            )
    return out


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def _fmt(x: float) -> str:
    return str(int(x)) if x == int(x) else str(x)


def _float(x: float | None) -> float:
    return 0.0 if x is None else float(x)


def _int(x: float | None) -> int:
    return 0 if x is None else int(x)
