"""The ``routes`` section of routes.yaml: each route's name, match, weights, baseline,
sticky key and shadow, validated as ``canary.config.validate`` validates the rest.

Kept apart from ``canary.config.validate`` (which calls ``read_routes``) as
``canary.config.rollout`` and ``canary.config.spend`` are: the routes are the largest
section, and their rules (``ROUTE_FLAGS``, ``SHADOW_RULES``) are read by the JSON Schema
and the configuration reference too, through ``canary.config.validate.RULES``.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

from canary.config.checks import ANY, Num, Reader, Rule, kind
from canary.config.model import Match, Route, Shadow, Sticky

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # backend and route names
ROUTE_FLAGS: dict[str, Rule] = {"fallback": bool}
SHADOW_RULES: dict[str, Rule] = {
    "sample": Num(maximum=1),
    "max_concurrency": Num(minimum=1, maximum=10_000, integer=True),
    "max_usd_per_day": ANY,
}
ROUTE_KEYS = {"name", "match", "weights", "baseline", "sticky", "shadow", *ROUTE_FLAGS}
MATCH_KEYS = {"paths", "models", "headers"}


def read_routes(r: Reader, value: Any, backends: set[str]) -> list[Route]:
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
    rt = r.mapping(spec, path, ROUTE_KEYS)
    name = r.string(rt.get("name"), f"{path}.name", f"route{i}")
    if not NAME.match(name):
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
        **r.values(rt, path, ROUTE_FLAGS),
    )


def _shadow(r: Reader, value: Any, path: str, backends: set[str]) -> Shadow | None:
    """Where a route's calls are copied to (SPEC §9); None when it has no ``shadow``."""
    if value is None:
        return None
    s = r.mapping(value, path, {"backend", *SHADOW_RULES})
    backend = r.string(s.get("backend"), f"{path}.backend")
    if backend not in backends:
        defined = ", ".join(sorted(backends))
        r.p.add(f"{path}.backend", f"unknown backend {backend!r} (defined: {defined})")
    return Shadow(backend=backend, **r.values(s, path, SHADOW_RULES))


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
    m = r.mapping(value, path, MATCH_KEYS)
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
