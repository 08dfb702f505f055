"""``canary status`` and ``canary report``: fixed ``/status`` documents rendered as text,
the report's JSON, and clear failures when the router cannot be read."""

from __future__ import annotations

import argparse
import copy
import io
import json
from typing import Any

import httpx
import pytest
from rich.console import Console, RenderableType

from canary.tools.cli import main
from canary.tools.console import (
    PIPE_WIDTH,
    NoCost,
    compact,
    output_console,
    render_report,
    render_status,
    report_data,
    savings_reason,
    usd,
)
from canary.tools.ops import Unavailable, fetch_status, run_report, run_status, status_url
from tests.helpers import free_port

OLD: dict[str, Any] = {  # a router from before cost accounting
    "config": {
        "path": "routes.yaml",
        "version": "5a38363e96771184ee568d7511e3f8ba",
        "loaded_at": "2026-11-30T03:30:59.703260+00:00",
        "error": None,
    },
    "state": "memory",
    "routes": [
        {
            "name": "chat",
            "baseline": "legacy",
            "configured": {"legacy": 90, "relay": 10},
            "effective": {"legacy": 100, "relay": 0},
            "canary_percentage": 0.0,
        }
    ],
    "backends": {
        "legacy": {
            "circuit": "closed",
            "role": "baseline",
            "requests": 130,
            "errors": 0,
            "error_rate": 0.0,
            "window_s": 60.0,
            "latency_ms": {"p50": 2.2, "p95": 3.8, "p99": 4.1},
            "qps": 2.2,
            "in_flight": 1,
        },
        "relay": {
            "circuit": "open",
            "role": "canary",
            "requests": 140,
            "errors": 10,
            "error_rate": 0.0714,
            "window_s": 60.0,
            "latency_ms": {"p50": 2.5, "p95": 5.8, "p99": 6.0},
            "qps": 0.0,
            "in_flight": 0,
        },
    },
    "migration": {"ready_for_full_migration": False, "reason": "relay: circuit open since 03:31"},
    "events": [
        {
            "at": f"2026-11-30T03:31:{s:02d}+00:00",
            "backend": "relay",
            "from": "closed" if s % 2 else "open",
            "to": "open" if s % 2 else "closed",
            "reason": f"event {s}",
        }
        for s in range(12, 0, -1)  # newest first, as /status lists them
    ],
    "rollback": {"window_s": 60.0, "max_error_rate": 0.05},
}

NEW = copy.deepcopy(OLD)
NEW["backends"]["legacy"] |= {
    "tokens": {"input": 1000, "output": 4000},
    "cost_usd": 0.04,
    "unpriced_tokens": {"input": 0, "output": 0},
    "unmetered_requests": 0,
}
NEW["backends"]["relay"] |= {
    "tokens": {"input": 200, "output": 900},
    "cost_usd": None,
    "unpriced_tokens": {"input": 200, "output": 900},
    "unmetered_requests": 3,
}
NEW["migration"]["projected_monthly_savings_usd"] = 1234.5
NEW["migration"]["projection_basis"] = "4,210 calls over 47 min"
NEW["cost"] = {
    "currency": "USD",
    "since": "2026-11-30T03:30:59+00:00",
    "by_model": [
        {
            "backend": "legacy",
            "model": "gpt-4.1",
            "requests": 130,
            "input_tokens": 1000,
            "output_tokens": 4000,
            "cost_usd": 0.04,
            "price": {"input": 8.0, "output": 8.0},
        },
        {
            "backend": "relay",
            "model": "gpt-4o",
            "requests": 140,
            "input_tokens": 200,
            "output_tokens": 900,
            "cost_usd": None,
            "price": None,
        },
    ],
    "total_usd": 0.04,
    "at_100_baseline_usd": 0.0488,
    "at_100_canary_usd": 0.00671,
    "token_rate_per_s": {"input": 12.5, "output": 40.0},
    "projected_monthly_savings_usd": 1234.5,
    "projection_basis": "4,210 calls over 47 min",
    "projection_calls": 4210,
    "projection_span_s": 2820.0,
    "projection_needs_s": 600.0,
    "unpriced": ["relay/gpt-4o"],
    "unmetered_requests": 3,
}


def text(renderable: RenderableType, width: int = 160) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def line_with(rendered: str, word: str) -> str:
    return next(line for line in rendered.splitlines() if line.strip().startswith(word))


# --- status -------------------------------------------------------------------------------


def test_status_shows_config_routes_backends_verdict_and_events() -> None:
    """The whole document for a person, error rates against the rollback bar."""
    out = text(render_status(NEW))
    assert "routes.yaml  version 5a38363e9677" in out
    assert "state: memory" in out
    chat = line_with(out, "chat")
    assert "legacy 90  relay 10" in chat and "legacy 100  relay 0" in chat
    assert "error rate > 0.05 (!)" in out
    relay = line_with(out, "relay")
    assert "open" in relay and "10/140" in relay and "0.071 !" in relay
    assert "2.5/6.0" in relay and "200/900" in relay and "no price" in relay
    legacy = line_with(out, "legacy")
    assert "0.000" in legacy and "!" not in legacy and "$0.0400" in legacy
    assert "not ready - relay: circuit open since 03:31" in out
    assert (
        "projected monthly savings: $1,234.50 a month at the current token rate "
        "(4,210 calls over 47 min)"
    ) in out
    assert "circuit events, newest first:" in out
    assert "2026-11-30 03:31:12  relay open -> closed: event 12" in out
    assert "event 3" in out and "event 2" not in out  # the ten newest only


def test_status_of_an_older_router_has_no_money_columns() -> None:
    """Without tokens or cost in /status, nothing is shown as $0."""
    out = text(render_status(OLD))
    assert "tokens" not in out and "$" not in out
    assert "projected monthly savings: unknown: this router does not report it" in out


def test_status_says_why_savings_are_unknown() -> None:
    """A null projection names the unpriced pairs rather than printing $0."""
    doc = copy.deepcopy(NEW)
    doc["migration"]["projected_monthly_savings_usd"] = None
    assert savings_reason(doc) == (
        "unknown: no price for relay/gpt-4o (see pricing in routes.yaml)"
    )
    doc["cost"]["unpriced"] = []
    assert savings_reason(doc).startswith("unknown: ")


def pending(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` as a router that has seen 3 calls over 2 minutes reports it."""
    doc = copy.deepcopy(doc)
    basis = "3 calls over 2 min; a projection needs 10 min of traffic"
    doc["migration"] |= {"projected_monthly_savings_usd": None, "projection_basis": basis}
    doc["cost"] |= {
        "projected_monthly_savings_usd": None,
        "projection_basis": basis,
        "projection_calls": 3,
        "projection_span_s": 120.0,
    }
    return doc


def test_status_says_a_projection_is_not_yet_based_and_why() -> None:
    """Under 10 minutes of traffic the projection is "not yet", with its basis, before any
    missing price (the wait resolves itself; a price needs an edit, named once based)."""
    doc = pending(NEW)
    expected = "not yet: 3 calls over 2 min; a projection needs 10 min of traffic"
    assert savings_reason(doc) == expected
    assert f"projected monthly savings: {expected}" in text(render_status(doc))


def test_status_shows_a_config_error_and_copes_with_a_sparse_document() -> None:
    """A rejected edit is shown in red words; missing sections do not crash the view."""
    error = "routes.yaml:3: routes[0].weights: bad"
    out = text(render_status({"config": {"error": error}}))
    assert f"config error (not serving): {error}" in out and "loaded: never" in out
    doc = copy.deepcopy(OLD)
    doc["config"]["error"] = error
    assert f"config error (last good config still serving): {error}" in text(render_status(doc))
    assert "circuit events: none" in out


def test_a_null_cost_without_tokens_is_a_dash_not_no_price() -> None:
    """ "no price" is for traffic that could not be priced, not for no traffic."""
    doc = copy.deepcopy(NEW)
    doc["backends"]["relay"]["tokens"] = {"input": 0, "output": 0}
    relay = line_with(text(render_status(doc)), "relay")
    assert "no price" not in relay and relay.rstrip().endswith("-")


# --- report -------------------------------------------------------------------------------


def test_report_data_is_stable_and_leaves_unknowns_null() -> None:
    """``report --json``: rows, totals, both 100% figures; unknown savings stay null."""
    data = report_data(NEW)
    assert set(data) == {
        "currency", "since", "rows", "totals", "at_100_baseline_usd", "at_100_canary_usd",
        "savings_so_far_usd", "savings_at_100_canary_usd", "projected_monthly_savings_usd",
        "projection_basis", "projection_pending", "token_rate_per_s", "unpriced",
        "unmetered_requests", "shadow", "billing",
    }  # fmt: skip
    assert (data["projection_basis"], data["projection_pending"]) == (
        "4,210 calls over 47 min",
        False,
    )
    assert data["rows"][1] == {
        "backend": "relay",
        "model": "gpt-4o",
        "requests": 140,
        "input_tokens": 200,
        "output_tokens": 900,
        "price_input_per_1m": None,
        "price_output_per_1m": None,
        "cost_usd": None,
    }
    assert data["totals"] == {
        "requests": 270,
        "input_tokens": 1200,
        "output_tokens": 4900,
        "cost_usd": 0.04,
        "complete": False,
    }
    assert data["savings_so_far_usd"] is None  # total_usd leaves out the unpriced pair
    assert data["savings_at_100_canary_usd"] == pytest.approx(0.0488 - 0.00671)
    json.dumps(data)


def test_savings_so_far_when_everything_is_priced() -> None:
    doc = copy.deepcopy(NEW)
    doc["cost"]["unpriced"] = []
    assert report_data(doc)["savings_so_far_usd"] == pytest.approx(0.0088)


def test_report_table_shows_prices_unpriced_and_unmetered() -> None:
    """Unpriced pairs read "no price" and stay out of every total; unmetered calls are named."""
    out = text(render_report(report_data(NEW)))
    legacy = line_with(out, "legacy")
    assert "gpt-4.1" in legacy and "1,000" in legacy and "4,000" in legacy
    assert "8.00" in legacy and "$0.0400" in legacy
    relay = line_with(out, "relay")
    assert "gpt-4o" in relay and "no price" in relay and "$" not in relay
    total = line_with(out, "total")
    assert "270" in total and "$0.0400 *" in total
    assert "100% baseline: $0.0488" in out
    assert "100% canary:   $0.0067" in out
    assert "saved so far vs all-baseline:      unknown: no price for relay/gpt-4o" in out
    assert "projected monthly savings:         $1,234.50" in out
    assert "the last 5 minutes, for 30 days; 4,210 calls over 47 min)" in out
    assert "* unpriced, so in no total (no price in routes.yaml pricing): relay/gpt-4o" in out
    assert "unmetered: 3 answered requests had no usage" in out


def test_report_holds_each_bill_against_its_meter() -> None:
    """``/status.billing`` in the report: billed against metered, balance and runway; a
    failing poll says why, in the table and in ``--json``."""
    doc = copy.deepcopy(NEW)
    doc["billing"] = {
        "relay": {"api": "new-api", "billed_usd": 0.26, "metered_usd": 0.2, "ratio": 1.3,
                  "balance_usd": 4.74, "runway_h": 3.2, "since": "2026-01-01T00:00:00+00:00",
                  "polled_at": "2026-01-01T00:10:00+00:00", "error": None},
        "legacy": {"api": "openrouter", "polled_at": None,
                   "error": "/api/v1/key answered HTTP 401"},
    }  # fmt: skip
    data = report_data(doc)
    assert data["billing"]["relay"]["ratio"] == 1.3
    assert data["billing"]["legacy"]["billed_usd"] is None
    out = text(render_report(data))
    assert (
        "bill relay (new-api): billed $0.2600 for calls metered at $0.2000 (last hour 1.30x); "
        "balance $4.7400, runway 3.2 h" in out
    )
    assert "bill legacy (openrouter): not read yet: /api/v1/key answered HTTP 401" in out
    assert "bill relay (new-api): billed $0.2600" in text(render_status(doc))  # status too


def test_report_without_a_base_prints_the_basis_instead_of_money() -> None:
    """Under 10 minutes of traffic, report says "not yet" and why, and no token-rate line
    pretends to back a figure; ``--json`` has the null and the basis."""
    data = report_data(pending(NEW))
    assert data["projected_monthly_savings_usd"] is None
    assert data["projection_pending"] is True
    out = text(render_report(data))
    assert (
        "projected monthly savings:         not yet: 3 calls over 2 min; "
        "a projection needs 10 min of traffic"
    ) in out
    assert "tokens/s, the last 5 minutes" not in out


def test_names_are_shown_literally_never_as_markup() -> None:
    """A client's model name or a backend name with [brackets] is printed as written."""
    doc = {
        "cost": {
            "since": "2026-11-30T03:53:59+00:00",
            "by_model": [
                {"backend": "relay", "model": "evil[/]", "requests": 1, "input_tokens": 2,
                 "output_tokens": 3, "cost_usd": None, "price": None},
                {"backend": "legacy", "model": "[link=http://x]m", "requests": 1,
                 "input_tokens": 2, "output_tokens": 3, "cost_usd": None, "price": None},
            ],
            "total_usd": None,
            "unpriced": ["relay/evil[/]"],
        }
    }  # fmt: skip
    rendered = text(render_report(report_data(doc)))
    assert "evil[/]" in rendered and "[link=http://x]m" in rendered
    assert line_with(rendered, "total").rstrip().endswith("no price")  # unknown, never $0


def test_report_of_a_router_without_cost_is_refused() -> None:
    with pytest.raises(NoCost, match="no cost section"):
        report_data(OLD)


def test_token_counts_are_compact_in_status() -> None:
    assert [compact(n) for n in (0, 9999, 12_345, 4_560_000, 7_000_000_000)] == [
        "0", "9999", "12.3k", "4.6M", "7.0G"
    ]  # fmt: skip


def test_money_formats() -> None:
    assert usd(0.0123456) == "$0.0123"
    assert usd(1234.5) == "$1,234.50"
    assert usd(-2.5) == "-$2.5000"
    assert usd(None) == "unknown"


# --- reading /status ------------------------------------------------------------------------


def test_status_url_accepts_the_router_base_in_any_usual_form() -> None:
    for url in ("http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/status"):
        assert status_url(url) == "http://h:1/status"


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(503, text="down"), "answered 503"),
        (httpx.Response(200, text="<html>"), "did not answer with a JSON object"),
        (httpx.Response(200, json=[1, 2]), "did not answer with a JSON object"),
    ],
)
def test_a_bad_answer_is_unavailable_with_a_reason(response: httpx.Response, message: str) -> None:
    transport = httpx.MockTransport(lambda request: response)
    with pytest.raises(Unavailable, match=message):
        fetch_status("http://router.test", transport=transport)


def test_a_silent_router_is_unavailable_after_the_timeout() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("no answer", request=request)

    with pytest.raises(Unavailable, match=r"no answer from http://r\.test/status within 5 s"):
        fetch_status("http://r.test", transport=httpx.MockTransport(handler))


def test_verbs_print_the_document(capsys: Any) -> None:
    """--json prints the raw /status, and report's stable object; no cost section is exit 1."""
    args = argparse.Namespace(url="http://router.test", json=True)
    assert run_status(args, fetch=lambda url: NEW) == 0
    assert json.loads(capsys.readouterr().out) == NEW
    assert run_report(args, fetch=lambda url: NEW) == 0
    assert json.loads(capsys.readouterr().out) == report_data(NEW)
    assert run_report(args, fetch=lambda url: OLD) == 1
    assert "canary report: this router's /status has no cost section" in capsys.readouterr().err


def test_verbs_render_for_a_person(capsys: Any) -> None:
    args = argparse.Namespace(url="http://router.test", json=False)
    console = Console(record=True, width=160, file=io.StringIO())
    assert run_status(args, console, fetch=lambda url: NEW) == 0
    assert run_report(args, console, fetch=lambda url: NEW) == 0
    out = console.export_text()
    assert "circuit events, newest first:" in out and "projected monthly savings:" in out


@pytest.mark.parametrize("verb", ["status", "report"])
def test_nothing_listening_is_exit_1_with_one_clear_line(verb: str, capsys: Any) -> None:
    """A port where nothing listens: exit 1 and one line saying so."""
    url = f"http://127.0.0.1:{free_port()}"
    assert main([verb, "--url", url]) == 1
    out = capsys.readouterr()
    assert out.err.startswith(f"canary {verb}: cannot reach {url}/status: ")
    assert "is `canary serve` running?" in out.err and out.out == ""


# --- width ---------------------------------------------------------------------------------


def test_output_to_a_pipe_has_no_width_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a terminal and no $COLUMNS: as wide as needed (rich alone would assume 80)."""
    monkeypatch.delenv("COLUMNS", raising=False)
    assert output_console().width == PIPE_WIDTH
    assert output_console(stderr=True).width == PIPE_WIDTH


def test_output_width_follows_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """$COLUMNS, set by a user or a script, is the width."""
    monkeypatch.setenv("COLUMNS", "100")
    assert output_console().width == 100


def test_a_narrow_console_folds_long_names_rather_than_cutting_them() -> None:
    """At 60 columns, a long backend or model name wraps onto more lines; no "…"."""
    long_backend = "anthropic-relay-production-eu-west-1"
    long_model = "claude-3-5-sonnet-20241022-preview"
    doc = json.loads(json.dumps(NEW))
    doc["backends"] = {long_backend: doc["backends"]["relay"]}
    doc["cost"]["by_model"][0].update(backend=long_backend, model=long_model)
    for rendered in (text(render_status(doc), 60), text(render_report(report_data(doc)), 60)):
        assert "…" not in rendered
        first_column = "".join(line.split()[0] for line in rendered.splitlines() if line.strip())
        assert long_backend in first_column


def test_report_shows_shadow_spend_and_the_pairs_comparison() -> None:
    """Each route's shadow copies: spend, skips and how the pairs compare, in JSON and words."""
    doc = copy.deepcopy(NEW)
    compare = {
        "pairs": 40,
        "status_agreement": 1.0,
        "prompt_tokens_match": 0.25,
        "latency_ratio_p50": 0.8,
        "completion_tokens_ratio_p50": 0.5,
        "exact_match": None,
        "model_mismatch": 40,
    }
    doc["shadow"] = {
        "chat": {
            "backend": "relay",
            "calls": 42,
            "errors": 2,
            "skipped": {"concurrency": 3, "budget": 0},
            "cost_usd": 0.0123,
            "cost_today_usd": 0.0123,
            "compare": compare,
            "sample": 0.2,
        }
    }
    data = report_data(doc)
    assert data["shadow"]["chat"]["compare"]["model_mismatch"] == 40
    assert "sample" not in data["shadow"]["chat"]
    out = text(render_report(data))
    assert "shadow chat -> relay: 42 copies (2 failed, 3 skipped)" in out
    assert "prompt tokens equal 25%" in out and "model mismatches 40" in out
    assert report_data(NEW)["shadow"] == {}
