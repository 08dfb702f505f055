"""``/status``: the migration's state as one JSON document, rendered from snapshots.

Weights are shown in the file's own units. ``effective`` is where traffic goes now:
``configured`` with every non-closed canary circuit at 0 and its share on the route's
baseline (SPEC's example: 90/10 reads 100/0 while relay is open); ``canary_percentage``
is the effective non-baseline share of a route, in percent. ``migration`` says whether every
canary with configured weight is ready for 100%, and if not, why, in words. Nothing
here holds a secret: backends show their URL without userinfo or query, and no key is
ever read. The shape is ``canary.observe.document.StatusDocument``; sibling workers are
seen through the ``Peers`` protocol, so observe never imports fleet.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from canary.config.model import Backend, Config, Rollback, Route, redact_url
from canary.config.store import ConfigStore
from canary.observe.cost import backend_costs, cost_section
from canary.observe.document import (
    BackendCostDoc,
    BackendDoc,
    ConfigDoc,
    EventDoc,
    ReadinessDoc,
    RollbackDoc,
    RouteDoc,
    StatusDocument,
    Weights,
    WorkersDoc,
)
from canary.observe.equivalence import (
    Evidence,
    audit_section,
    equivalence_reason,
    prompt_match,
    shadow_section,
)
from canary.observe.meter import Meter
from canary.observe.rollout_view import rollout_events, rollout_section
from canary.safety.breaker import CLOSED, Breakers, Circuit, CircuitEvent
from canary.safety.rollouts import Rollouts
from canary.safety.windows import Stats


class Peers(Protocol):
    """The sibling workers of ``serve --workers N`` (``canary.fleet.workers.Fleet``)."""

    worker_id: str

    def fresh(self, now: float | None = None) -> list[dict[str, Any]]: ...
    def calls_by_worker(self) -> dict[str, int]: ...
    def since_counts(self, backend: str) -> tuple[int, int]: ...
    def window_peers(self, backend: str) -> list[dict[str, Any]]: ...


def _units(weights: Mapping[str, float]) -> Weights:
    return {k: int(v) if v == int(v) else v for k, v in weights.items()}


def canary_percentage(route: Route, weights: Mapping[str, float]) -> float:
    total = sum(weights.values())
    if total <= 0:
        return 0.0
    canary = sum(w for name, w in weights.items() if name != route.baseline)
    return round(100.0 * canary / total, 2)


def readiness(
    cfg: Config,
    breakers: Breakers,
    others: Callable[[str], tuple[int, int]] | None = None,
    evidence: Evidence | None = None,
) -> tuple[bool, str]:
    """Ready when every weighted canary has, since its circuit closed or its config changed,
    enough calls, an error rate below the bar, a closed circuit, and (with ``evidence``)
    answers equivalent to its baseline's (``canary.observe.equivalence``).

    ``others(backend)`` adds sibling workers' (requests, errors) since the same change."""
    bar = cfg.readiness
    candidates = sorted(
        {n for r in cfg.routes for n, w in r.weights.items() if w > 0 and n != r.baseline}
    )
    if not candidates:
        return False, "no canary backend has weight in routes.yaml"
    reasons = []
    for name in candidates:
        circuit = breakers.get(name)
        if circuit is None:
            continue
        requests, errors = others(name) if others is not None else (0, 0)
        requests += circuit.since_requests
        errors += circuit.since_errors
        differs = None
        if evidence is not None:  # mismatches before the circuit's last change do not count
            changed = circuit.changed_at.timestamp()
            differs = equivalence_reason(name, _baseline(cfg, name), bar, evidence, changed)
        if circuit.state != CLOSED:
            since = circuit.changed_at.astimezone().strftime("%H:%M:%S")
            state = circuit.state.replace("_", "-")
            reasons.append(f"{name}: circuit {state} since {since}{_failures(circuit)}")
        elif differs is not None:  # an answer in another model's name is not noise: say it first
            reasons.append(differs)
        elif requests < bar.min_requests:
            reasons.append(f"{name}: {requests} of {bar.min_requests} requests")
        else:
            rate = errors / requests
            if rate >= bar.max_error_rate:
                reasons.append(
                    f"{name}: error rate {rate:.3f} >= {bar.max_error_rate:g}{_failures(circuit)}"
                )
    if reasons:
        return False, "; ".join(reasons)
    return True, ", ".join(f"{n}: ready" for n in candidates)


def _baseline(cfg: Config, name: str) -> str:
    """The baseline of the first route that weights ``name``."""
    return next(r.baseline for r in cfg.routes if r.weights.get(name, 0) > 0)


_KIND_WORDS = {
    "401": "key refused (401)",
    "402": "credit spent (402)",
    "403": "account barred (403)",
    "rejected": "refused what the baseline served (4xx)",
    "429": "rate limited (429)",
    "5xx": "server errors (5xx)",
    "timeout": "timeouts",
    "connect": "connection failures",
    "stream_cut": "streams cut",
}


def _failures(circuit: Circuit) -> str:
    """How the backend mostly failed, in words: ``: key refused (401) on 40 of 40 calls``."""
    if not circuit.since_kinds:
        return ""
    kind, count = max(circuit.since_kinds.items(), key=lambda item: item[1])
    words = _KIND_WORDS.get(kind, kind)
    return f": {words} on {count} of {circuit.since_requests} calls"


def status_document(
    store: ConfigStore,
    stats: Stats,
    breakers: Breakers,
    meter: Meter,
    state: str = "memory",
    fleet: Peers | None = None,
    rollouts: Rollouts | None = None,
) -> StatusDocument:
    """The /status document; with ``fleet`` (``--workers N``), every worker's figures.

    ``meter`` is already merged by the caller (``Fleet.merged_meter``): /metrics needs it too.
    """
    cfg = store.config
    doc: StatusDocument = {
        "config": _config(store),
        "state": state,
        "routes": [],
        "backends": {},
        "migration": {"ready_for_full_migration": False, "reason": "no valid config loaded"},
        "events": _events(breakers.events, meter.audit_events),
    }
    if cfg is None:
        return doc
    if fleet is not None:
        doc["workers"] = _workers(fleet)
    peers = fleet.window_peers if fleet else None
    evidence = Evidence(meter, stats, peers, prompt_match(cfg, meter))
    ready, reason = readiness(cfg, breakers, fleet.since_counts if fleet else None, evidence)
    cost = cost_section(meter, cfg)
    doc["migration"] = {
        "ready_for_full_migration": ready,
        "reason": reason,
        "projected_monthly_savings_usd": cost["projected_monthly_savings_usd"],
        "projection_basis": cost["projection_basis"],
    }
    doc["cost"] = cost
    doc["rollback"] = _rollback(cfg.rollback)
    doc["readiness"] = _readiness_bars(cfg)
    doc["audit"] = audit_section(meter)
    doc["shadow"] = shadow_section(cfg, meter)
    overrides = rollouts.overrides if rollouts is not None else {}
    doc["routes"] = [
        _route(route, breakers.effective(route, overrides.get(route.name))) for route in cfg.routes
    ]
    if rollouts is not None:
        doc["rollout"] = rollout_section(rollouts)
        doc["events"] = sorted(
            doc["events"] + rollout_events(rollouts), key=lambda e: e["at"], reverse=True
        )
    costs = backend_costs(meter, cfg)
    doc["backends"] = {
        name: _backend(name, backend, stats, breakers, costs[name], fleet)
        for name, backend in cfg.backends.items()
    }
    return doc


def _readiness_bars(cfg: Config) -> ReadinessDoc:
    bar = cfg.readiness
    return {
        "min_requests": bar.min_requests,
        "max_error_rate": bar.max_error_rate,
        "max_model_mismatch_rate": bar.max_model_mismatch_rate,
        "min_prompt_token_match": bar.min_prompt_token_match,
        "max_latency_ratio_p95": bar.max_latency_ratio_p95,
    }


def _config(store: ConfigStore) -> ConfigDoc:
    cfg = store.config
    return {
        "path": store.path,
        "version": cfg.version if cfg else None,
        "loaded_at": cfg.loaded_at.isoformat() if cfg else None,
        "error": store.error,
        "error_at": store.error_at.isoformat() if store.error_at else None,
    }


def _events(
    circuits: Sequence[CircuitEvent], audits: Sequence[tuple[float, str, str, str]]
) -> list[EventDoc]:
    """Circuit changes and first model mismatches (SPEC §9), newest first."""
    out = [_event(e) for e in reversed(circuits)]
    if not audits:
        return out
    for at, backend, asked, answered in audits:
        stamp = datetime.fromtimestamp(at, UTC).isoformat()
        out.append(
            {
                "at": stamp,
                "backend": backend,
                "from": "match",
                "to": "mismatch",
                "reason": f"answered as {answered} when asked for {asked}",
                "requests": 0,
                "errors": 0,
                "origin": "local",
            }
        )
    out.sort(key=lambda e: datetime.fromisoformat(e["at"]), reverse=True)
    return out


def _event(e: CircuitEvent) -> EventDoc:
    return {
        "at": e.at.isoformat(),
        "backend": e.backend,
        "from": e.from_state,
        "to": e.to_state,
        "reason": e.reason,
        "requests": e.requests,
        "errors": e.errors,
        "origin": "replica" if e.remote else "local",
    }


def _workers(fleet: Peers) -> WorkersDoc:
    return {
        "this": fleet.worker_id,
        "alive": 1 + len(fleet.fresh()),
        "calls": fleet.calls_by_worker(),  # lifetime, per worker: is the load spread?
    }


def _rollback(rb: Rollback) -> RollbackDoc:
    return {
        "window_s": rb.window_s,
        "min_requests": rb.min_requests,
        "max_error_rate": rb.max_error_rate,
        "open_s": rb.open_s,
        "probe_requests": rb.probe_requests,
        "auto_resume": rb.auto_resume,
    }


def _route(route: Route, effective: Mapping[str, float]) -> RouteDoc:
    return {
        "name": route.name,
        "baseline": route.baseline,
        "configured": _units(route.weights),
        "effective": _units(effective),
        "canary_percentage": canary_percentage(route, effective),
        "sticky": str(route.sticky) if route.sticky else None,
        "fallback": route.fallback,
    }


def _backend(
    name: str,
    backend: Backend,
    stats: Stats,
    breakers: Breakers,
    cost: BackendCostDoc,
    fleet: Peers | None,
) -> BackendDoc:
    s = stats.window(name).snapshot(fleet.window_peers(name) if fleet else ())
    circuit = breakers.get(name)
    doc: BackendDoc = {
        "base_url": redact_url(backend.base_url),
        "circuit": circuit.state if circuit else CLOSED,
        "role": "canary" if circuit else "baseline",
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
        "tokens": cost["tokens"],
        "cost_usd": cost["cost_usd"],
        "unpriced_tokens": cost["unpriced_tokens"],
        "unmetered_requests": cost["unmetered_requests"],
    }
    if circuit is not None:
        requests, errors = fleet.since_counts(name) if fleet else (0, 0)
        doc["since_change"] = {
            "at": circuit.changed_at.isoformat(),
            "requests": circuit.since_requests + requests,
            "errors": circuit.since_errors + errors,
        }
    return doc
