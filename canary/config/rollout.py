"""Validation of the ``rollout`` block (SPEC §10): the tree -> ``Rollout``, problems located.

Kept apart from ``canary.config.validate`` (which calls ``rollout_block``) because its rules
read the backends and routes already validated: the backend must exist, be a canary (not
the baseline) on every route it rolls out on, and have a weight there to replace.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from canary.config.checks import Num, Reader
from canary.config.model import DEFAULT_STEPS, Analysis, Rollout, Route

_KEYS = {
    "backend",
    "routes",
    "steps",
    "step_s",
    "step_min_requests",
    "gates",
    "analysis",
    "webhooks",
}
_STEP = Num(strict_min=True, maximum=100)
_RATIO = Num(strict_min=True, maximum=1000)
_ANALYSIS: dict[str, Num] = {
    "max_error_rate": Num(maximum=1),
    "max_latency_ratio_p95": _RATIO,
    "max_ttfb_ratio_p95": _RATIO,
    "max_model_mismatch_rate": Num(maximum=1),
    "max_shadow_prompt_mismatch": Num(maximum=1),
}
_ROLLOUT: dict[str, Num] = {
    "step_s": Num(strict_min=True, maximum=86400 * 7),
    "step_min_requests": Num(integer=True),
}
STEP = _STEP  # each of ``steps`` and ``gates``
# The rule tables of this block by the dataclass they build (``validate.RULES`` holds them).
ROLLOUT_RULES: dict[type, Mapping[str, Num]] = {Rollout: _ROLLOUT, Analysis: _ANALYSIS}


def rollout_block(
    r: Reader, value: Any, backends: Mapping[str, object], routes: Sequence[Route]
) -> Rollout | None:
    """The ``rollout`` block, or None when the file has none (weights as written)."""
    if value is None:
        return None
    b = r.mapping(value, "rollout", _KEYS)
    backend = r.string(b.get("backend"), "rollout.backend")
    if not backend:
        r.p.add("rollout.backend", "required: the backend to roll out")
        return None
    if backend not in backends:
        r.p.add("rollout.backend", f"unknown backend {backend!r}")
        return None
    names = _routes(r, b.get("routes"), backend, routes)
    steps = _numbers(r, b.get("steps"), "rollout.steps")
    if steps is not None and any(a >= z for a, z in itertools.pairwise(steps)):
        r.p.add("rollout.steps", "must increase from one step to the next")
    gates = _numbers(r, b.get("gates"), "rollout.gates", empty_ok=True) or ()
    for i, gate in enumerate(gates):
        if gate not in (steps or DEFAULT_STEPS):
            r.p.add(f"rollout.gates[{i}]", f"{gate:g} is not one of the steps")
    given = r.values(b, "rollout", _ROLLOUT)
    extra: dict[str, Any] = {"steps": steps} if steps is not None else {}
    return Rollout(
        backend=backend,
        routes=names,
        gates=tuple(gates),
        analysis=_analysis(r, b.get("analysis")),
        webhooks=_webhooks(r, b.get("webhooks")),
        **extra,
        **given,
    )


def _routes(r: Reader, value: Any, backend: str, routes: Sequence[Route]) -> tuple[str, ...]:
    by_name = {route.name: route for route in routes}
    if value is None:
        names = [route.name for route in routes if backend in route.weights]
        names = [n for n in names if by_name[n].baseline != backend]
        if not names:
            r.p.add("rollout.backend", f"no route has {backend!r} in its weights")
        return tuple(names)
    given = r.strings(value, "rollout.routes") or []
    for i, name in enumerate(given):
        route = by_name.get(name)
        where = f"rollout.routes[{i}]"
        if route is None:
            r.p.add(where, f"unknown route {name!r}")
        elif backend not in route.weights:
            r.p.add(where, f"route {name!r} has no weight for {backend!r} (add it, even as 0)")
        elif route.baseline == backend:
            r.p.add(where, f"{backend!r} is the baseline of route {name!r}")
    return tuple(given)


def _numbers(
    r: Reader, value: Any, path: str, *, empty_ok: bool = False
) -> tuple[float, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or (not value and not empty_ok):
        r.p.add(
            path, "must be a non-empty list of percentages" if not empty_ok else "must be a list"
        )
        return None
    out = [r.number(v, f"{path}[{i}]", _STEP) for i, v in enumerate(value)]
    return tuple(float(x) for x in out if x is not None)


def _analysis(r: Reader, value: Any) -> Analysis:
    a = r.mapping(value, "rollout.analysis", _ANALYSIS.keys())
    given: dict[str, float | None] = {}
    for key, rule in _ANALYSIS.items():
        if key in a:  # present as null: that check is off
            given[key] = (
                None if a[key] is None else r.number(a[key], f"rollout.analysis.{key}", rule)
            )
    return Analysis(**given)


def _webhooks(r: Reader, value: Any) -> tuple[str, ...]:
    if value is None or value == []:
        return ()
    urls = r.strings(value, "rollout.webhooks") or []
    for i, url in enumerate(urls):
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            r.p.add(f"rollout.webhooks[{i}]", "must be an http:// or https:// URL")
    return tuple(urls)
