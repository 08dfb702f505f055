"""The router's ``/status`` for a person: the views of ``canary status`` and ``canary report``.

Pure functions of one ``/status`` document, rendered with rich, so tests feed them fixed
documents; they cope with sections an older router does not send. Money that cannot be
priced is "unknown" or "no price", with the reason, and is never shown as $0.

Names are never cut: a table too wide for a terminal folds its cells onto more lines, and
output to a pipe or a file (which has no width) is as wide as it needs to be.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from canary.errors import NoCost
from canary.tools.spend_view import billing_data, billing_lines

EVENTS_SHOWN = 10
CIRCUIT_STYLES = {"closed": "bold green", "open": "bold red", "half_open": "bold yellow"}
PIPE_WIDTH = 10_000  # "as wide as it needs": tables take their natural width below this


def output_console(*, stderr: bool = False) -> Console:
    """A console for stdout (or stderr): a terminal's own width; else ``$COLUMNS``; else,
    for a pipe or a file, no width limit, where rich would assume 80 and cut names."""
    console = Console(stderr=stderr)
    if console.is_terminal or os.environ.get("COLUMNS", "").isdigit():
        return console
    return Console(stderr=stderr, width=PIPE_WIDTH)


# --- small formatters -------------------------------------------------------------------


def usd(value: float | None) -> str:
    if value is None:
        return "unknown"
    sign = "-" if value < 0 else ""
    value = abs(value)
    return f"{sign}${value:,.2f}" if value >= 100 else f"{sign}${value:.4f}"


def literal(*cells: RenderableType) -> list[RenderableType]:
    """Table cells with every string taken literally: names come from routes.yaml and
    model names from clients, and rich would read ``[...]`` in them as markup."""
    return [Text(c) if isinstance(c, str) else c for c in cells]


def number(value: Any, spec: str = ",") -> str:
    return "-" if value is None else format(value, spec)


def clock_time(at: Any) -> str:
    """An ISO 8601 time as ``YYYY-MM-DD HH:MM:SS``, in the offset it was written in."""
    try:
        return datetime.fromisoformat(str(at)).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return str(at)


def weights(values: Mapping[str, Any]) -> str:
    return "  ".join(f"{name} {w:g}" for name, w in values.items()) or "-"


def titled_table(title: str, *columns: str, left: int = 1) -> Table:
    table = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        collapse_padding=True,
    )
    for i, column in enumerate(columns):
        # fold, not "…": a name cut short may read as another one
        table.add_column(column, justify="left" if i < left else "right", overflow="fold")
    return table


# --- canary status ----------------------------------------------------------------------


def projection_pending(cost: Mapping[str, Any]) -> bool:
    """The router has not seen enough traffic to project from (an older router: unknown,
    so False, and other reasons are given)."""
    span, needs = cost.get("projection_span_s"), cost.get("projection_needs_s")
    return span is not None and needs is not None and span < needs


def savings_reason(doc: Mapping[str, Any]) -> str:
    """Projected monthly savings and what it rests on, or ``not yet``/``unknown: <why>``."""
    migration = doc.get("migration") or {}
    if "projected_monthly_savings_usd" not in migration:
        return "unknown: this router does not report it (it predates cost accounting)"
    value = migration["projected_monthly_savings_usd"]
    basis = migration.get("projection_basis")
    if value is not None:
        return f"{usd(value)} a month at the current token rate" + (f" ({basis})" if basis else "")
    if basis and projection_pending(doc.get("cost") or {}):
        return f"not yet: {basis}"
    unpriced = (doc.get("cost") or {}).get("unpriced") or []
    if unpriced:
        return "unknown: no price for " + ", ".join(unpriced) + " (see pricing in routes.yaml)"
    return "unknown: the router cannot price baseline against canary yet (see pricing)"


def render_status(doc: Mapping[str, Any]) -> RenderableType:
    """The whole ``/status`` document for a person: config, routes, backends, verdict."""
    config = doc.get("config") or {}
    version = str(config.get("version") or "-")[:12]
    loaded = clock_time(config["loaded_at"]) if config.get("loaded_at") else "never"
    state = str(doc.get("state") or "?")
    parts: list[RenderableType] = [
        Text.assemble(("config: ", "bold"), f"{config.get('path', '?')}  version {version}"),
        Text.assemble(("loaded: ", "bold"), loaded, ("   state: ", "bold"), state),
    ]
    if config.get("error"):
        serving = "last good config still serving" if config.get("version") else "not serving"
        parts.append(Text(f"config error ({serving}): {config['error']}", "bold red"))
    routes = titled_table(
        "routes", "route", "baseline", "configured", "effective", "canary %", left=4
    )
    for r in doc.get("routes") or ():
        configured, effective = r.get("configured") or {}, r.get("effective") or {}
        eff = Text()
        for name, w in effective.items():
            eff.append(f"{name} {w:g}  ", "bold red" if configured.get(name) and not w else "")
        pct = r.get("canary_percentage")
        routes.add_row(
            *literal(
                str(r.get("name", "?")),
                str(r.get("baseline", "?")),
                weights(configured),
                eff,
                number(pct, "g"),
            )
        )
    parts.append(routes)
    parts.append(_backends(doc))
    migration = doc.get("migration") or {}
    ready = bool(migration.get("ready_for_full_migration"))
    parts.append(
        Text.assemble(
            ("migration: ", "bold"),
            (
                "ready for full migration" if ready else "not ready",
                "bold green" if ready else "yellow",
            ),
            f" - {migration.get('reason') or 'no reason given'}",
        )
    )
    parts.append(Text.assemble(("projected monthly savings: ", "bold"), savings_reason(doc)))
    parts += [Text(line) for line in billing_lines(billing_data(doc))]  # SPEC §11
    events = list(doc.get("events") or ())[:EVENTS_SHOWN]  # /status lists the newest first
    lines = [
        f"{clock_time(e.get('at'))}  {e.get('backend')} {e.get('from')} -> {e.get('to')}: "
        f"{e.get('reason', '')}"
        for e in events
    ]
    parts.append(Text("circuit events, newest first:" if lines else "circuit events: none", "bold"))
    parts.append(Text("\n".join(lines), "dim"))
    return Group(*parts)


def _backends(doc: Mapping[str, Any]) -> Table:
    backends = doc.get("backends") or {}
    bar = (doc.get("rollback") or {}).get("max_error_rate")
    window = next((b.get("window_s") for b in backends.values()), None)
    title = "backends" + (f", last {window:g} s" if window else "")
    if bar is not None:
        title += f"; a canary is rolled back when its error rate > {bar:.4g} (!)"
    metered = any("tokens" in b for b in backends.values())
    columns = ["backend", "circuit", "errors/\nrequests", "error\nrate", "p50/p99\nms", "qps"]
    columns += ["in\nflight", *(("tokens\nin/out", "cost") if metered else ())]
    table = titled_table(title, *columns, left=2)
    for name, b in backends.items():
        rate = b.get("error_rate")
        over = bar is not None and rate is not None and rate > bar
        circuit = str(b.get("circuit", "?"))
        latency = b.get("latency_ms") or {}
        row: list[RenderableType] = [
            name,
            Text(circuit.replace("_", "-"), CIRCUIT_STYLES.get(circuit, "dim")),
            f"{number(b.get('errors'))}/{number(b.get('requests'))}",
            Text(number(rate, ".3f") + (" !" if over else "  "), "bold red" if over else ""),
            f"{number(latency.get('p50'), '.1f')}/{number(latency.get('p99'), '.1f')}",
            number(b.get("qps"), ".1f"),
            number(b.get("in_flight")),
        ]
        if metered:
            row += _spend(b)
        table.add_row(*literal(*row))
    return table


def _spend(b: Mapping[str, Any]) -> list[RenderableType]:
    """Tokens and cost of one backend; a null cost with tokens is "no price", not $0."""
    tokens = b.get("tokens") or {}
    used = bool(tokens.get("input") or tokens.get("output"))
    cost: RenderableType = usd(b.get("cost_usd"))
    if b.get("cost_usd") is None:
        cost = Text("no price", "yellow") if used else "-"
    if not tokens:
        return ["-", cost]
    return [f"{compact(tokens.get('input', 0))}/{compact(tokens.get('output', 0))}", cost]


def compact(n: int) -> str:
    """A count in at most five characters: 9999, 12.3k, 4.6M (``canary report`` is exact)."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= 10_000 and n >= scale:
            return f"{n / scale:.1f}{suffix}"
    return str(n)


# --- canary report ----------------------------------------------------------------------


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 6)


def report_data(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The ROI figures from ``/status.cost``, as the stable object ``report --json`` prints.

    Sums leave out what is unknown: ``savings_so_far_usd`` is null while any pair is unpriced,
    because ``total_usd`` then covers only part of the traffic.
    """
    cost = doc.get("cost")
    if not isinstance(cost, Mapping):
        raise NoCost("this router's /status has no cost section: upgrade canary on the router")
    rows = []
    for m in cost.get("by_model") or ():
        price = m.get("price") or {}
        rows.append(
            {
                "backend": m.get("backend"),
                "model": m.get("model"),
                "requests": m.get("requests") or 0,
                "input_tokens": m.get("input_tokens") or 0,
                "output_tokens": m.get("output_tokens") or 0,
                "price_input_per_1m": price.get("input"),
                "price_output_per_1m": price.get("output"),
                "cost_usd": m.get("cost_usd"),
            }
        )
    unpriced = list(cost.get("unpriced") or [])
    baseline, canary = cost.get("at_100_baseline_usd"), cost.get("at_100_canary_usd")
    total = cost.get("total_usd")
    return {
        "currency": cost.get("currency", "USD"),
        "since": cost.get("since"),
        "rows": rows,
        "totals": {
            "requests": sum(r["requests"] for r in rows),
            "input_tokens": sum(r["input_tokens"] for r in rows),
            "output_tokens": sum(r["output_tokens"] for r in rows),
            "cost_usd": total,
            "complete": not unpriced,
        },
        "at_100_baseline_usd": baseline,
        "at_100_canary_usd": canary,
        "savings_so_far_usd": None if unpriced else _minus(baseline, total),
        "savings_at_100_canary_usd": _minus(baseline, canary),
        "projected_monthly_savings_usd": cost.get("projected_monthly_savings_usd"),
        "projection_basis": cost.get("projection_basis"),
        "projection_pending": projection_pending(cost),
        "token_rate_per_s": cost.get("token_rate_per_s"),
        "unpriced": unpriced,
        "unmetered_requests": cost.get("unmetered_requests", 0),
        "shadow": {
            route: {key: s.get(key) for key in _SHADOW_KEYS}
            for route, s in (doc.get("shadow") or {}).items()
        },
        "billing": billing_data(doc),  # SPEC §11: billed against metered
    }


_SHADOW_KEYS = ("backend", "calls", "errors", "skipped", "cost_usd", "cost_today_usd", "compare")


def render_report(data: Mapping[str, Any]) -> RenderableType:
    """The ROI table: per backend and model, totals, and what 100% either way would cost;
    then each route's shadow spend and how its pairs compare (SPEC §9)."""
    lines = _what_ifs(data) + [_shadow_line(r, s) for r, s in (data.get("shadow") or {}).items()]
    lines += billing_lines(data.get("billing") or {})
    return Group(_cost_table(data), Text("\n".join(lines)))


def _shadow_line(route: str, s: Mapping[str, Any]) -> str:
    """One route's shadow traffic in words: spend, skips, and the pairs' agreement."""
    c = s.get("compare") or {}
    skipped = sum((s.get("skipped") or {}).values())

    def share(key: str) -> str:
        value = c.get(key)
        return "-" if value is None else f"{value:.0%}"

    def ratio(key: str) -> str:
        value = c.get(key)
        return "-" if value is None else f"{value:.2f}x"

    return (
        f"shadow {route} -> {s.get('backend')}: {s.get('calls')} copies "
        f"({s.get('errors')} failed, {skipped} skipped), {usd(s.get('cost_usd'))}; "
        f"{c.get('pairs', 0)} pairs: status agree {share('status_agreement')}, prompt tokens "
        f"equal {share('prompt_tokens_match')}, latency p50 {ratio('latency_ratio_p50')}, "
        f"completion tokens p50 {ratio('completion_tokens_ratio_p50')}, exact "
        f"{share('exact_match')}, model mismatches {c.get('model_mismatch', 0)}"
    )


def _cost_table(data: Mapping[str, Any]) -> Table:
    """Per backend and model: requests, tokens, prices and cost so far, then the totals."""
    title = f"cost per backend and model since {clock_time(data['since'])} ({data['currency']})"
    table = titled_table(
        title,
        "backend",
        "model",
        "requests",
        "input tokens",
        "output tokens",
        "$/1M in",
        "$/1M out",
        "cost so far",
        left=2,
    )
    for r in data["rows"]:
        priced = r["cost_usd"] is not None
        table.add_row(
            *literal(str(r["backend"]), str(r["model"])),
            number(r["requests"]),
            number(r["input_tokens"]),
            number(r["output_tokens"]),
            number(r["price_input_per_1m"], ".2f"),
            number(r["price_output_per_1m"], ".2f"),
            usd(r["cost_usd"]) if priced else Text("no price", "yellow"),
        )
    t = data["totals"]
    if t["cost_usd"] is None:
        total = "no price"
    else:
        total = usd(t["cost_usd"]) + ("" if t["complete"] else " * (priced tokens only)")
    table.add_section()
    table.add_row(
        "total",
        "",
        number(t["requests"]),
        number(t["input_tokens"]),
        number(t["output_tokens"]),
        "",
        "",
        Text(total, "bold"),
    )
    return table


def _what_ifs(data: Mapping[str, Any]) -> list[str]:
    """The same traffic at 100% either way, the savings, and what no figure includes."""
    why = "unknown: " + (
        "no price for " + ", ".join(data["unpriced"]) if data["unpriced"] else "not priced"
    )

    def money(value: float | None) -> str:
        return why if value is None else usd(value)

    projected = money(data["projected_monthly_savings_usd"])
    basis = data.get("projection_basis")
    if data.get("projection_pending") and basis:
        projected = f"not yet: {basis}"
    lines = [
        f"the same traffic at 100% baseline: {money(data['at_100_baseline_usd'])}",
        f"the same traffic at 100% canary:   {money(data['at_100_canary_usd'])}",
        f"saved so far vs all-baseline:      {money(data['savings_so_far_usd'])}",
        f"projected monthly savings:         {projected}",
    ]
    rate = data.get("token_rate_per_s") or {}
    if rate and not data.get("projection_pending"):
        based = f"; {basis}" if basis else ""
        lines.append(
            f"  (at {rate.get('input', 0):,.1f} input and {rate.get('output', 0):,.1f} "
            f"output tokens/s, the last 5 minutes, for 30 days{based})"
        )
    if data["unpriced"]:
        lines.append(
            "* unpriced, so in no total (no price in routes.yaml pricing): "
            + ", ".join(data["unpriced"])
        )
    if data["unmetered_requests"]:
        lines.append(
            f"unmetered: {data['unmetered_requests']:,} answered requests had no usage "
            "(e.g. streams without stream_options.include_usage); not in any figure"
        )
    return lines
