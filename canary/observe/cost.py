"""Cost and ROI from metered tokens and ``pricing`` (USD per million tokens).

- spent: priced when each call ended, at the prices routes.yaml had then (``Meter.spent``),
  so a later price edit does not rewrite history;
- at 100% baseline / at 100% canary: every token so far at today's prices, each route's
  traffic on its baseline, or on its canary (the non-baseline backend with the most
  configured weight; a route without one stays on its baseline);
- projected monthly savings: the live token rate (last 5 minutes) per route and model, x
  (baseline price - canary price), x 30 days; 0 with no traffic in that time. It needs a
  base: ``None`` until ``PROJECTION_MIN_S`` of metered traffic has been seen (a few test
  calls with two huge prompts once projected six figures a month), and
  ``projection_basis`` says what it rests on ("4,210 calls over 47 min") or why there is
  none yet ("3 calls over 2 min; a projection needs 10 min of traffic").

A token with no price is never counted as $0: the pair is listed in ``unpriced``, and a
figure that would need its price is ``None``. ``total_usd`` is what the priced tokens
cost (``None`` when none were priced); ``complete`` says whether every token was.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from canary.config.model import Config, Price, Route
from canary.observe.document import (
    BackendCostDoc,
    CostDoc,
    ModelCostDoc,
    ProjectionBasisDoc,
    RateDoc,
)
from canary.observe.meter import Meter

SECONDS_PER_MONTH = 30 * 24 * 3600
PROJECTION_MIN_S = 600.0  # traffic seen before a month is extrapolated from it


def _usd(tokens_in: float, tokens_out: float, price: Price) -> float:
    return (tokens_in * price.input + tokens_out * price.output) / 1e6


def canary_of(route: Route) -> str:
    """The backend a route migrates to: its heaviest non-baseline backend, else its baseline."""
    best, weight = route.baseline, 0.0
    for name, w in route.weights.items():
        if name != route.baseline and w > weight:
            best, weight = name, w
    return best


def _price(cfg: Config, backend: str, model: str) -> Price | None:
    return cfg.pricing.get(backend, {}).get(model)


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


class _Sum:
    """A cost figure that is known only when every token in it has a price."""

    def __init__(self, missing: set[str]) -> None:
        self.usd = 0.0
        self.complete = True
        self.missing = missing

    def add(self, cfg: Config, backend: str, model: str, tin: float, tout: float) -> None:
        if not (tin or tout):
            return
        price = _price(cfg, backend, model)
        if price is None:
            self.complete = False
            self.missing.add(f"{backend}/{model}")
            return
        self.usd += _usd(tin, tout, price)

    def value(self) -> float | None:
        return _round(self.usd) if self.complete else None


def _span(seconds: float) -> str:
    """A duration in the words of a basis: ``40 s``, ``47 min``, ``3 h 5 min`` (rounded down)."""
    if seconds < 60:
        return f"{int(seconds)} s"
    minutes = int(seconds // 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h {minutes % 60} min"


def projection_basis(meter: Meter) -> ProjectionBasisDoc:
    """What a projection would rest on: metered calls, over how long, and whether that is
    enough (``PROJECTION_MIN_S``); ``projection_basis`` says so in words."""
    calls, seconds = meter.metered()
    needs = f"a projection needs {_span(PROJECTION_MIN_S)} of traffic"
    if not calls:
        words = f"no metered calls yet; {needs}"
    else:
        words = f"{calls:,} call{'' if calls == 1 else 's'} over {_span(seconds)}"
        if seconds < PROJECTION_MIN_S:
            words += f"; {needs}"
    return {
        "projection_basis": words,
        "projection_calls": calls,
        "projection_span_s": round(seconds, 3),
        "projection_needs_s": PROJECTION_MIN_S,
    }


def backend_costs(meter: Meter, cfg: Config) -> dict[str, BackendCostDoc]:
    """Per backend: tokens, priced cost, unpriced tokens, unmetered calls (for /status)."""
    out: dict[str, BackendCostDoc] = {}
    for name in cfg.backends:
        out[name] = {
            "tokens": {"input": 0, "output": 0},
            "cost_usd": None,
            "unpriced_tokens": {"input": 0, "output": 0},
            "unmetered_requests": meter.unmetered.get(name, 0),
        }
    for backend, _, _, tin, tout in meter.tokens_by_backend():
        row = out.get(backend)
        if row is not None:  # else a backend removed from routes.yaml since
            row["tokens"]["input"] += tin
            row["tokens"]["output"] += tout
    for (backend, _), usd in meter.spent.items():
        row = out.get(backend)
        if row is not None:
            row["cost_usd"] = (row["cost_usd"] or 0.0) + usd
    for (backend, _), (tin, tout) in meter.unpriced.items():
        row = out.get(backend)
        if row is not None:
            row["unpriced_tokens"]["input"] += tin
            row["unpriced_tokens"]["output"] += tout
    for row in out.values():
        row["cost_usd"] = _round(row["cost_usd"])
    return out


def cost_section(meter: Meter, cfg: Config) -> CostDoc:
    """The ``cost`` section of /status: what ``canary report`` renders."""
    # route -> (where its traffic goes at 100% baseline, at 100% canary)
    moves: Mapping[str, tuple[str, str]] = {r.name: (r.baseline, canary_of(r)) for r in cfg.routes}
    missing = {f"{b}/{m}" for (b, m), (tin, tout) in meter.unpriced.items() if tin or tout}
    baseline, target = _Sum(missing), _Sum(missing)
    for (route_name, backend, model), (_, tin, tout) in meter.tokens.items():
        base, to = moves.get(route_name, (backend, backend))  # a route renamed: it stays put
        baseline.add(cfg, base, model, tin, tout)
        target.add(cfg, to, model, tin, tout)
    savings, rate = _projection(meter, cfg, moves, missing)
    basis = projection_basis(meter)
    based = basis["projection_span_s"] >= PROJECTION_MIN_S
    spent_usd = _round(sum(meter.spent.values())) if meter.spent else None
    complete = not any(tin or tout for tin, tout in meter.unpriced.values())
    base_usd = baseline.value()
    return {
        "currency": "USD",
        "since": datetime.fromtimestamp(meter.started_at, UTC).isoformat(),
        "by_model": _by_model(meter, cfg),
        # nothing yet costs $0; tokens with no price at all cost an unknown amount
        "total_usd": spent_usd if spent_usd is not None else (None if meter.tokens else 0.0),
        "complete": complete,
        "at_100_baseline_usd": base_usd,
        "at_100_canary_usd": target.value(),
        "savings_so_far_usd": (
            _round(base_usd - (spent_usd or 0.0)) if base_usd is not None and complete else None
        ),
        "token_rate_per_s": rate,
        "projected_monthly_savings_usd": savings.value() if based else None,
        **basis,
        "unpriced": sorted(missing),
        "unmetered_requests": sum(meter.unmetered.values()),
    }


def _by_model(meter: Meter, cfg: Config) -> list[ModelCostDoc]:
    rows: list[ModelCostDoc] = []
    for backend, model, calls, tin, tout in meter.tokens_by_backend():
        price = _price(cfg, backend, model)
        spent = meter.spent.get((backend, model))
        unpriced = meter.unpriced.get((backend, model), [0, 0])
        rows.append(
            {
                "backend": backend,
                "model": model,
                "requests": calls,
                "input_tokens": tin,
                "output_tokens": tout,
                "cost_usd": None if spent is None else _round(spent),
                "unpriced_tokens": {"input": unpriced[0], "output": unpriced[1]},
                "price": None if price is None else {"input": price.input, "output": price.output},
            }
        )
    return rows


def _projection(
    meter: Meter, cfg: Config, moves: Mapping[str, tuple[str, str]], missing: set[str]
) -> tuple[_Sum, RateDoc]:
    """Monthly savings at the live token rate, and that rate; unpriced pairs join ``missing``."""
    savings = _Sum(missing)
    rate_in = rate_out = 0.0
    for (route_name, model), (rin, rout) in meter.token_rate().items():
        rate_in += rin
        rate_out += rout
        base, to = moves.get(route_name, ("", ""))
        if base == to:  # no canary on this route (or the route is gone): nothing moves
            continue
        was, now = _price(cfg, base, model), _price(cfg, to, model)
        if was is None or now is None:
            savings.complete = False
            missing.update(f"{b}/{model}" for b, p in ((base, was), (to, now)) if p is None)
            continue
        savings.usd += (_usd(rin, rout, was) - _usd(rin, rout, now)) * SECONDS_PER_MONTH
    return savings, {"input": round(rate_in, 3), "output": round(rate_out, 3)}
