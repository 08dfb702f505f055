"""``/status``: the migration's state as one JSON document, rendered from snapshots.

Weights are shown in the file's own units. ``effective`` is what the router uses now
(equal to ``configured`` until circuits can open); ``canary_percentage`` is the effective
non-baseline share of a route, in percent. Nothing here holds a secret: backends show
their URL without userinfo or query, and no key is ever read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from canary.config import Route, redact_url
from canary.reload import ConfigStore
from canary.stats import Stats


def _units(weights: Mapping[str, float]) -> dict[str, float | int]:
    return {k: int(v) if v == int(v) else v for k, v in weights.items()}


def canary_percentage(route: Route, weights: Mapping[str, float]) -> float:
    total = sum(weights.values())
    if total <= 0:
        return 0.0
    canary = sum(w for name, w in weights.items() if name != route.baseline)
    return round(100.0 * canary / total, 2)


def status_document(store: ConfigStore, stats: Stats) -> dict[str, Any]:
    cfg = store.config
    doc: dict[str, Any] = {
        "config": {
            "path": store.path,
            "version": cfg.version if cfg else None,
            "loaded_at": cfg.loaded_at.isoformat() if cfg else None,
            "error": store.error,
            "error_at": store.error_at.isoformat() if store.error_at else None,
        },
        "state": "memory",
        "routes": [],
        "backends": {},
    }
    if cfg is None:
        return doc
    for route in cfg.routes:
        effective = route.weights
        doc["routes"].append(
            {
                "name": route.name,
                "baseline": route.baseline,
                "configured": _units(route.weights),
                "effective": _units(effective),
                "canary_percentage": canary_percentage(route, effective),
                "sticky": str(route.sticky) if route.sticky else None,
                "fallback": route.fallback,
            }
        )
    for name, backend in cfg.backends.items():
        s = stats.window(name).snapshot()
        doc["backends"][name] = {
            "base_url": redact_url(backend.base_url),
            "requests": s.requests,
            "errors": s.errors,
            "error_rate": round(s.error_rate, 4),
            "window_s": s.window_s,
            "latency_ms": {"p50": s.p50_ms, "p95": s.p95_ms, "p99": s.p99_ms},
            "qps": round(s.qps, 2),
            "peak_qps": s.peak_qps,
            "in_flight": s.in_flight,
            "peak_concurrency": s.peak_concurrency,
            "total_requests": s.total_requests,
            "total_errors": s.total_errors,
            "limits": {"max_concurrency": backend.max_concurrency, "max_qps": backend.max_qps},
        }
    return doc
