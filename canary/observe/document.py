"""The ``/status`` document's shape, as TypedDicts (SPEC §6): what every reader may rely on.

``canary.observe.status`` builds it, ``canary.observe.cost`` its cost parts; ``/metrics``,
the dashboard, ``canary status``/``report`` and the demo read it. These are plain dicts at run
time (JSON as served), typed for the builder and the readers in this process. Keys marked
``NotRequired`` are there once a valid config is loaded (``draining``: always, over HTTP).
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

Weights = dict[str, float | int]  # routes.yaml's own units: 90, not 90.0


class ConfigDoc(TypedDict):
    path: str
    version: str | None  # sha256 of the file serving; None before a valid load
    loaded_at: str | None  # ISO 8601
    error: str | None  # why the file on disk is not serving (the last good one still is)
    error_at: str | None


class RouteDoc(TypedDict):
    name: str
    baseline: str
    configured: Weights
    effective: Weights  # every non-closed canary at 0, its share on the baseline
    canary_percentage: float
    sticky: str | None
    fallback: bool


class TokensDoc(TypedDict):
    input: int
    output: int


class LatencyDoc(TypedDict):
    p50: float
    p95: float
    p99: float


class LimitsDoc(TypedDict):
    max_concurrency: int | None
    max_qps: float | None


class SinceChangeDoc(TypedDict):
    """A canary's readiness counts since its circuit last changed (every worker's)."""

    at: str
    requests: int
    errors: int


class BackendCostDoc(TypedDict):
    tokens: TokensDoc
    cost_usd: float | None  # None: nothing priced yet
    unpriced_tokens: TokensDoc
    unmetered_requests: int  # answered calls whose usage could not be read


class SessionsDoc(TypedDict):
    """A backend's WebSocket sessions (SPEC §3a), lifetime; ``in`` is client -> upstream."""

    open: int
    total: int
    cut: int  # ended abnormally by the upstream (session_cut)
    frames_in: int
    frames_out: int
    bytes_in: int
    bytes_out: int


class BackendDoc(BackendCostDoc):
    """One backend: window figures (``window_s``), lifetime totals, limits and cost."""

    base_url: str  # without userinfo or query
    circuit: str  # closed | open | half_open
    role: str  # canary | baseline
    requests: int
    errors: int
    error_rate: float
    window_s: float
    latency_ms: LatencyDoc
    qps: float
    peak_qps: float
    in_flight: int
    peak_concurrency: int
    total_requests: int
    total_errors: int
    limits: LimitsDoc
    sessions: SessionsDoc
    since_change: NotRequired[SinceChangeDoc]  # canaries only


class MigrationDoc(TypedDict):
    ready_for_full_migration: bool
    reason: str  # the first thing missing, in words
    projected_monthly_savings_usd: NotRequired[float | None]
    projection_basis: NotRequired[str]


# "from" is a keyword: the functional form.
EventDoc = TypedDict(
    "EventDoc",
    {
        "at": str,
        "backend": str,
        "from": str,
        "to": str,
        "reason": str,
        "requests": int,
        "errors": int,
        "origin": str,  # local | replica (followed from another replica)
    },
)


class WorkersDoc(TypedDict):
    this: str
    alive: int
    calls: dict[str, int]  # lifetime, per worker: is the load spread?


class PriceDoc(TypedDict):
    input: float  # USD per million tokens
    output: float


class ModelCostDoc(TypedDict):
    backend: str
    model: str
    requests: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    unpriced_tokens: TokensDoc
    price: PriceDoc | None


class RateDoc(TypedDict):
    input: float  # tokens per second, over the last 5 minutes
    output: float


class ProjectionBasisDoc(TypedDict):
    """What a savings projection rests on; it is None until ``projection_needs_s``."""

    projection_basis: str  # in words: "4,210 calls over 47 min", or why there is none yet
    projection_calls: int
    projection_span_s: float
    projection_needs_s: float


class CostDoc(ProjectionBasisDoc):
    """What ``canary report`` renders; a figure that needs a missing price is None."""

    currency: str
    since: str
    by_model: list[ModelCostDoc]
    total_usd: float | None
    complete: bool  # every token priced
    at_100_baseline_usd: float | None
    at_100_canary_usd: float | None
    savings_so_far_usd: float | None
    token_rate_per_s: RateDoc
    projected_monthly_savings_usd: float | None
    unpriced: list[str]  # "backend/model" pairs with no price
    unmetered_requests: int


class RollbackDoc(TypedDict):
    window_s: float
    min_requests: int
    max_error_rate: float
    open_s: float
    probe_requests: int
    auto_resume: bool


class ReadinessDoc(TypedDict):
    min_requests: int
    max_error_rate: float
    max_model_mismatch_rate: float
    min_prompt_token_match: float
    max_latency_ratio_p95: float
    max_billing_ratio: float | None
    min_runway_h: float | None
    min_same_model_p: float | None  # None: the shadow pairs' same-model test is not a bar


class AuditCountsDoc(TypedDict):
    """The model audit of one backend and asked model (SPEC §9)."""

    match: int
    variant: int
    mismatch: int
    absent: int
    last_mismatch: str | None  # the name it last answered as, when not the one asked


class SideDoc(TypedDict):
    requests: int
    errors: int
    error_rate: float | None  # None: no calls
    p95_ms: float | None


class CheckDoc(TypedDict):
    check: str  # error_rate | latency_ratio_p95 | ttfb_ratio_p95 | model_mismatch_rate
    value: float | None  # None: no data (never a pass)
    threshold: float
    verdict: str  # pass | fail | no_data


class AnalysisDoc(TypedDict):
    elapsed_s: float
    step_s: float
    step_min_requests: int
    canary: SideDoc  # over the step
    baseline: SideDoc
    checks: list[CheckDoc]


class RolloutDoc(TypedDict):
    """SPEC §10: a progressive rollout's state, what it still needs, its history."""

    backend: str
    routes: list[str]
    state: str  # progressing | awaiting_promotion | paused | promoted | failed | aborted
    step: int  # 1-based; 0 before the first step
    percent: float | int
    steps: list[float | int]
    gates: list[float | int]
    since: str
    needs: str
    analysis: AnalysisDoc
    history: list[dict[str, object]]  # newest first
    decides: bool  # this replica decides (false: it follows another)
    weights_line: dict[str, str] | None  # route -> what to write into routes.yaml, once promoted
    saved: str  # where its state is kept (a file, Redis), or why nowhere


class LastHourDoc(TypedDict):
    billed_usd: float
    metered_usd: float
    span_s: float  # the samples the ratio rests on: up to an hour


class BillingDoc(TypedDict):
    """A backend's bill against its meter (SPEC §11)."""

    api: str  # new-api | one-api | openrouter | sub2api
    balance_usd: float | None  # None: unlimited, or the API does not say
    billed_usd: float | None  # the spend counter's rise since polling began (this span)
    metered_usd: float | None  # canary's cost at ``pricing`` of what it sent, same span
    ratio: float | None  # billed / metered over the last hour; None below $0.01 metered
    runway_h: float | None  # balance / the last hour's burn; None: no burn or no balance
    polled_at: str | None  # the last good poll
    error: str | None  # why the last poll gave nothing (the figures are the last good ones)
    since: str | None  # when this span began (polling began, or a counter went back)
    last_hour: LastHourDoc
    restarts: int  # spans begun again: a top-up, a reset counter, a restarted fleet


class SameModelDoc(TypedDict):
    """The same-model test's last result (``canary verify --distribution``)."""

    test: str  # the two-sample test run, e.g. "mmd"
    p_value: float | None
    alpha: float
    verdict: str  # "differs" when p_value < alpha, else "same" (or the tool's word)
    prompts: int
    samples: int
    calls: int
    cost_usd: float | None
    at: str  # when it ran, ISO 8601
    config_version: str  # sha256 of the routes.yaml it ran against


class StatusDocument(TypedDict):
    config: ConfigDoc
    state: str  # memory | redis | degraded
    routes: list[RouteDoc]
    backends: dict[str, BackendDoc]
    migration: MigrationDoc
    events: list[EventDoc]  # newest first
    workers: NotRequired[WorkersDoc]  # serve --workers N
    cost: NotRequired[CostDoc]
    rollback: NotRequired[RollbackDoc]
    readiness: NotRequired[ReadinessDoc]
    audit: NotRequired[dict[str, dict[str, AuditCountsDoc]]]  # backend -> asked model -> counts
    shadow: NotRequired[dict[str, dict[str, Any]]]  # route -> shadow figures and compare
    rollout: NotRequired[RolloutDoc | None]  # None: no rollout block
    billing: NotRequired[dict[str, BillingDoc]]  # backends with ``billing`` (SPEC §11)
    # the last ``verify --distribution`` against the config serving (observe.same_model)
    same_model: NotRequired[SameModelDoc]
    draining: NotRequired[bool]  # set by the app: SIGTERM received, finishing what is in flight
