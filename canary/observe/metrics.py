"""``/metrics``: Prometheus text rendered at scrape time from the meter and ``/status``.

The proxy never touches a Prometheus object (``canary.observe.meter`` keeps plain counters); a
scrape builds metric families from those counters and from the same status document
``/status`` serves, so the two never disagree, and with ``--workers N`` both are the
sum of every worker. Label values are route and backend names from routes.yaml, a
bounded set of model names, status classes and failure kinds: never user ids or paths.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from canary.observe.document import BackendDoc, RouteDoc, StatusDocument
from canary.observe.meter import LATENCY_BUCKETS_S, Meter
from canary.safety.equivalence import VERDICTS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CIRCUIT_VALUES = {"closed": 0, "half_open": 1, "open": 2}
_BOUNDS = [f"{b:g}" for b in LATENCY_BUCKETS_S] + ["+Inf"]


def _none(name: str) -> str:
    return name or "none"  # a refusal before routing has no route and no backend


def families(doc: StatusDocument, meter: Meter) -> Iterator[Metric]:
    """Every canary metric family, from a /status document and the (merged) meter."""
    yield from _call_families(meter)
    yield from _limiter_families(meter)
    yield from _token_families(meter)
    yield from _session_families(meter)
    yield _counter(
        "canary_model_audit",
        "Answers by the model they named against the one asked (after model_map): match, "
        "variant (a dated or versioned name), mismatch, absent.",
        ["backend", "model", "verdict"],
        (
            ((backend, model, verdict), n)
            for (backend, model), counts in meter.audits.items()
            for verdict, n in zip(VERDICTS, counts, strict=True)
        ),
    )
    yield from _shadow_families(doc.get("shadow") or {})
    yield from _backend_families(doc["backends"])
    yield from _route_families(doc["routes"])
    yield from _state_families(doc)
    yield from _rollout_families(doc)
    yield from _billing_families(doc.get("billing") or {})


def _billing_families(billing: Mapping[str, Any]) -> Iterator[Metric]:
    """The spend audit (SPEC §11): a backend is left out of a gauge while its figure is null."""
    gauges = (
        ("canary_billing_ratio", "ratio", "A backend's bill / its metered cost, last hour."),
        ("canary_balance_usd", "balance_usd", "A backend's balance left, as its billing API says."),
        ("canary_runway_hours", "runway_h", "Hours the balance lasts at the last hour's burn."),
    )
    for name, key, doc in gauges:
        gauge = GaugeMetricFamily(name, doc, labels=["backend"])
        for backend, figures in sorted(billing.items()):
            if figures.get(key) is not None:
                gauge.add_metric([backend], figures[key])
        yield gauge


def _call_families(meter: Meter) -> Iterator[Metric]:
    requests = CounterMetricFamily(
        "canary_requests",
        "Calls by route, backend and status class (a refusal before routing: none/none).",
        labels=["route", "backend", "status_class"],
    )
    for (route, backend, cls), n in sorted(meter.requests.items()):
        requests.add_metric([_none(route), _none(backend), cls], n)
    yield requests

    latency = HistogramMetricFamily(
        "canary_request_duration_seconds",
        "Time from a call's start to its last byte or failure, per backend.",
        labels=["backend"],
    )
    for backend, hist in sorted(meter.latency.items()):
        cumulative, buckets = 0.0, list[tuple[str, float]]()
        for bound, count in zip(_BOUNDS, hist[:-1], strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        latency.add_metric([backend], buckets, sum_value=hist[-1])
    yield latency

    yield _counter(
        "canary_upstream_failures",
        "Failed upstream tries by kind: timeout, connect, 5xx, 429, stream_cut, session_cut, "
        "401 (key refused), 402, 403 (account barred), credit_spent (a code in the error body "
        "or a 402: insufficient_quota, insufficient_user_quota...), rejected (a 4xx the "
        "baseline then served).",
        ["backend", "kind"],
        meter.failures.items(),
    )
    yield _counter(
        "canary_internal_errors",
        "Faults of the router itself, answered as 500 internal_error.",
        [],
        [((), meter.internal_errors)],
    )
    yield _counter(
        "canary_retries", "Tries made again on the same backend.", ["backend"], _one(meter.retries)
    )
    yield _counter(
        "canary_fallbacks",
        "Calls answered by the route's baseline after this backend failed first.",
        ["route", "backend"],
        meter.fallbacks.items(),
    )


def _limiter_families(meter: Meter) -> Iterator[Metric]:
    yield _counter(
        "canary_limiter_waits",
        "Calls that queued for a concurrency or QPS slot.",
        ["backend"],
        _one(meter.limiter_waits),
    )
    yield _counter(
        "canary_limiter_wait_seconds",
        "Time calls spent queued for a slot.",
        ["backend"],
        _one(meter.limiter_wait_s),
    )
    yield _counter(
        "canary_limiter_rejections",
        "Calls refused with 429 after the queue time (not backend errors).",
        ["backend"],
        _one(meter.limiter_rejections),
    )


def _token_families(meter: Meter) -> Iterator[Metric]:
    tokens = CounterMetricFamily(
        "canary_tokens",
        "Tokens reported by providers, by backend, client model and direction.",
        labels=["backend", "model", "direction"],
    )
    for backend, model, _, tin, tout in meter.tokens_by_backend():
        tokens.add_metric([backend, model, "input"], tin)
        tokens.add_metric([backend, model, "output"], tout)
    yield tokens
    yield _counter(
        "canary_unmetered_requests",
        "Answered calls whose usage could not be read (streams without include_usage).",
        ["backend"],
        _one(meter.unmetered),
    )


def _session_families(meter: Meter) -> Iterator[Metric]:
    """WebSocket sessions (SPEC §3a): open now, opened, cut, frames and bytes each way."""
    rows = sorted(meter.sessions.items())
    open_now = GaugeMetricFamily(
        "canary_sessions_open", "WebSocket sessions open now.", labels=["backend"]
    )
    for name, row in rows:
        open_now.add_metric([name], row[0])
    yield open_now
    yield _counter(
        "canary_sessions", "WebSocket sessions accepted upstream.", ["backend"], _col(rows, 1)
    )
    yield _counter(
        "canary_sessions_cut",
        "WebSocket sessions the upstream ended abnormally (1006, 1011, no close frame).",
        ["backend"],
        _col(rows, 2),
    )
    for unit, first in (("frames", 3), ("bytes", 5)):
        yield _counter(
            f"canary_session_{unit}",
            f"WebSocket {unit} relayed; direction in: client to upstream, out: back.",
            ["backend", "direction"],
            [
                ((name, d), row[first + i])
                for name, row in rows
                for i, d in enumerate(("in", "out"))
            ],
        )


def _col(rows: list[tuple[str, list[int]]], index: int) -> list[tuple[tuple[str], int]]:
    return [((name,), row[index]) for name, row in rows]


def _backend_families(backends: Mapping[str, BackendDoc]) -> Iterator[Metric]:
    cost = CounterMetricFamily(
        "canary_cost_usd", "Cost of priced tokens at the prices in routes.yaml.", labels=["backend"]
    )
    unpriced = CounterMetricFamily(
        "canary_unpriced_tokens",
        "Tokens of models with no price.",
        labels=["backend", "direction"],
    )
    circuit = GaugeMetricFamily(
        "canary_circuit_state", "Circuit: 0 closed, 1 half_open, 2 open.", labels=["backend"]
    )
    in_flight = GaugeMetricFamily("canary_in_flight", "Calls in flight.", labels=["backend"])
    error_rate = GaugeMetricFamily(
        "canary_error_rate", "Error rate over rollback.window_s.", labels=["backend"]
    )
    for name, b in sorted(backends.items()):
        if b["cost_usd"] is not None:
            cost.add_metric([name], b["cost_usd"])
        unpriced.add_metric([name, "input"], b["unpriced_tokens"]["input"])
        unpriced.add_metric([name, "output"], b["unpriced_tokens"]["output"])
        circuit.add_metric([name], CIRCUIT_VALUES[b["circuit"]])
        in_flight.add_metric([name], b["in_flight"])
        error_rate.add_metric([name], b["error_rate"])
    yield from (cost, unpriced, circuit, in_flight, error_rate)


def _route_families(routes: Iterable[RouteDoc]) -> Iterator[Metric]:
    weight = GaugeMetricFamily(
        "canary_weight",
        "Route weights in routes.yaml units: configured, and effective (open circuits at 0).",
        labels=["route", "backend", "kind"],
    )
    canary_pct = GaugeMetricFamily(
        "canary_canary_percentage", "Effective non-baseline share of a route.", labels=["route"]
    )
    for route in routes:
        for backend, w in route["configured"].items():
            weight.add_metric([route["name"], backend, "configured"], w)
        for backend, w in route["effective"].items():
            weight.add_metric([route["name"], backend, "effective"], w)
        canary_pct.add_metric([route["name"]], route["canary_percentage"])
    yield from (weight, canary_pct)


def _state_families(doc: StatusDocument) -> Iterator[Metric]:
    rollback = doc.get("rollback")
    if rollback is not None:
        yield GaugeMetricFamily(
            "canary_max_error_rate", "rollback.max_error_rate", value=rollback["max_error_rate"]
        )
    migration = doc["migration"]
    yield GaugeMetricFamily(
        "canary_ready_for_full_migration",
        "1 when every canary is ready for 100%.",
        value=1 if migration["ready_for_full_migration"] else 0,
    )
    savings = migration.get("projected_monthly_savings_usd")
    # No projection (under 10 min of traffic, or a price missing): no sample, rather than
    # NaN. An absent series is what absent() alerts and "No data" panels expect; a NaN
    # sample looks present, compares false in every alert and turns any sum() into NaN.
    if savings is not None:
        yield GaugeMetricFamily(
            "canary_projected_monthly_savings_usd",
            "Live token rate x (baseline - canary price) x 30 days; absent without a base.",
            value=savings,
        )
    basis = doc.get("cost")
    if basis is not None:
        yield GaugeMetricFamily(
            "canary_projection_basis_seconds",
            "Seconds of metered traffic the savings projection rests on (it needs "
            f"{basis['projection_needs_s']:g}).",
            value=basis["projection_span_s"],
        )
    yield GaugeMetricFamily(
        "canary_config_error",
        "1 while the file on disk is invalid (the last good config keeps serving).",
        value=1 if doc["config"]["error"] else 0,
    )
    state = GaugeMetricFamily(
        "canary_state", "Shared state: 1 for the current one.", labels=["state"]
    )
    for name in ("memory", "redis", "degraded"):
        state.add_metric([name], 1 if doc["state"] == name else 0)
    yield state


def _shadow_families(shadow: Mapping[str, Any]) -> Iterator[Metric]:
    """Shadow traffic per route (SPEC §9): calls, skips, spend, and the pairs' comparison."""
    calls = (((r, s["backend"]), s["calls"]) for r, s in shadow.items())
    yield _counter("canary_shadow_calls", "Shadow copies sent.", ["route", "backend"], calls)
    errors = (((r, s["backend"]), s["errors"]) for r, s in shadow.items())
    yield _counter(
        "canary_shadow_errors", "Shadow copies that failed.", ["route", "backend"], errors
    )
    skipped = (((r, c), n) for r, s in shadow.items() for c, n in s["skipped"].items())
    yield _counter(
        "canary_shadow_skipped",
        "Copies not sent: over max_concurrency (concurrency) or max_usd_per_day (budget).",
        ["route", "cause"],
        skipped,
    )
    cost = (((r,), s["cost_usd"]) for r, s in shadow.items())
    yield _counter("canary_shadow_cost_usd", "Shadow spend at pricing.", ["route"], cost)
    compare = GaugeMetricFamily(
        "canary_shadow_compare",
        "Shadow pairs over the window: agreement shares and shadow/primary ratios.",
        labels=["route", "figure"],
    )
    for route, s in sorted(shadow.items()):
        for figure, value in s["compare"].items():
            if value is not None:
                compare.add_metric([route, figure], float(value))
    yield compare


ROLLOUT_STATES = (
    "progressing",
    "awaiting_promotion",
    "paused",
    "promoted",
    "failed",
    "aborted",
)


def _rollout_families(doc: StatusDocument) -> Iterator[Metric]:
    """A progressive rollout's step and state (SPEC §10); no samples without one."""
    rollout = doc.get("rollout")
    if not rollout:
        return
    backend = rollout["backend"]
    percent = GaugeMetricFamily(
        "canary_rollout_step_percent",
        "The rolled-out backend's share of its routes now, in percent.",
        labels=["backend"],
    )
    percent.add_metric([backend], rollout["percent"])
    state = GaugeMetricFamily(
        "canary_rollout_state", "Rollout state: 1 for the current one.", labels=["backend", "state"]
    )
    for name in ROLLOUT_STATES:
        state.add_metric([backend, name], 1 if rollout["state"] == name else 0)
    yield from (percent, state)


def _one(d: dict[str, Any]) -> Iterable[tuple[tuple[str], Any]]:
    return (((k,), v) for k, v in d.items())


def _counter(
    name: str, doc: str, labels: list[str], items: Iterable[tuple[tuple[str, ...], Any]]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in sorted(items):
        family.add_metric(list(key), value)
    return family


class _Families(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics


def render(doc: StatusDocument, meter: Meter) -> bytes:
    """The Prometheus text exposition of ``families``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families(doc, meter))))
    return generate_latest(registry)
