"""End to end in a real browser: Debian's headless chromium, driven by playwright, watches
``/dashboard`` of a real ``canary serve`` while the relay (a real ``canary simulate``)
breaks and its circuit opens. The page must load without console errors, draw its charts,
follow the traffic, show the rollback, and reload the config with the admin token; a page
opened after the traffic stopped draws the last minutes from the router's history. Its
screenshot is docs/dashboard.png (``CANARY_UPDATE_DOCS=1`` writes it)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from canary.observe.history import FIELDS
from tests.helpers import free_port, run_process

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
# No sandbox (root in CI), and nothing that reaches beyond 127.0.0.1.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CLIENT_KEY = "ck-dash-e2e-SECRET-111111"
ADMIN_TOKEN = "adm-dash-e2e-SECRET-222222"
ROUTES = """
backends:
  legacy:
    base_url: ${LEGACY_BASE_URL}
    timeout_s: 10
  relay:
    base_url: ${RELAY_BASE_URL}
    timeout_s: 10
routes:
  - name: chat
    match:
      paths: [/v1/chat/completions]
    weights: {legacy: 50, relay: 50}
    baseline: legacy
    fallback: true
rollback:
  window_s: 10
  min_requests: 20
  max_error_rate: 0.2
  open_s: 60
  probe_requests: 5
readiness:
  min_requests: 50
  max_error_rate: 0.05
retry:
  max_attempts: 1
auth:
  api_keys: ${CANARY_API_KEYS}
  admin_token: ${CANARY_ADMIN_TOKEN}
pricing:
  legacy: {gpt-4.1: {input: 8.00, output: 8.00}}
  relay: {gpt-4.1: {input: 1.10, output: 1.10}}
"""
RATE = 25  # calls per second while the test runs: a steady rate for the charts to follow
MAX_CALLS = 3000  # bound on the whole test's traffic


def chromium_or_skip() -> None:
    """Skip with a reason when no browser is here, except in CI, where that is a failure."""
    missing = []
    if not os.path.exists(CHROMIUM):
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install -e '.[dev]')")
    if missing:
        reason = "dashboard browser test needs " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; .ci/run installs it")
        pytest.skip(reason)


class Traffic:
    """Chat completions through the router at ``RATE`` per second from a background thread,
    paced open-loop (the pace is the load's shape, not a wait for something to settle)."""

    def __init__(self, url: str) -> None:
        self.client = openai.OpenAI(
            base_url=f"{url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=10
        )
        self.sent = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        self.client.close()

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set() and self.sent < MAX_CALLS:
            try:
                self.client.chat.completions.create(
                    model="gpt-4.1", messages=[{"role": "user", "content": "hi"}]
                )
            except openai.APIError as exc:  # counted; the test asserts there are none
                self.failed.append(type(exc).__name__)
            self.sent += 1
            self._stop.wait(max(0.0, start + self.sent / RATE - time.monotonic()))


def poll(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """``condition()``'s first truthy value within ``timeout`` seconds, else fail with ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


@pytest.fixture
def router(sims: tuple[str, str], tmp_path: Path) -> Iterator[str]:
    """``canary serve`` with auth on, in front of the freshly reset simulators."""
    legacy, relay = sims
    for base in sims:
        httpx.post(base + "/_sim/reset").raise_for_status()
        httpx.post(base + "/_sim/faults", json={"error_rate": 0}).raise_for_status()
    config = tmp_path / "routes.yaml"
    config.write_text(ROUTES)
    port = free_port()
    env = {
        "LEGACY_BASE_URL": f"{legacy}/v1",
        "RELAY_BASE_URL": f"{relay}/v1",
        "CANARY_API_KEYS": CLIENT_KEY,
        "CANARY_ADMIN_TOKEN": ADMIN_TOKEN,
    }
    args = [sys.executable, "-m", "canary", "serve", "-c", str(config), "--port", str(port)]
    with (
        tempfile.TemporaryFile() as log,
        run_process(args, f"http://127.0.0.1:{port}/readyz", output=log, env=env),
    ):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module", autouse=True)
def needs_chromium() -> None:
    """Decide before any process starts (autouse runs ahead of ``sims``)."""
    chromium_or_skip()


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def number(page: Any, selector: str) -> int:
    return int(page.locator(selector).inner_text().replace(",", "") or 0)


def inked(page: Any, chart: str) -> int:
    """Pixels drawn in ``chart``'s canvas that are neither transparent nor white."""
    return int(
        page.evaluate(
            """(id) => {
                const c = document.querySelector('#' + id + ' canvas');
                if (!c || !c.width || !c.height) return 0;
                const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0;
                for (let i = 0; i < px.length; i += 4) {
                    if (px[i + 3] > 0 && (px[i] < 250 || px[i + 1] < 250 || px[i + 2] < 250)) n++;
                }
                return n;
            }""",
            chart,
        )
    )


def points(page: Any) -> int:
    return int(page.locator("#chart-traffic").get_attribute("data-points") or 0)


def history(page: Any) -> dict[str, Any]:
    """The page's per-second rows: ``t``, ``threshold`` and a dict of columns per backend."""
    return dict(
        page.evaluate(
            """() => {
                const h = window.canaryDashboard.history;
                const b = Object.fromEntries([...h.backends].map(([k, v]) => [k, v]));
                return {t: h.t, threshold: h.threshold, ...b};
            }"""
        )
    )


def series_with_numbers(page: Any, chart: str) -> int:
    """How many of ``chart``'s series (time aside) hold at least one number."""
    return int(
        page.evaluate(
            """(name) => window.canaryDashboard.charts[name].data.slice(1)
                .filter((s) => s.some((v) => typeof v === 'number')).length""",
            chart,
        )
    )


def empty_badges(page: Any) -> list[str]:
    """Badges drawn on the page (visible) with no text in them: their ids or classes."""
    return list(
        page.evaluate(
            """() => [...document.querySelectorAll('.badge')]
                .filter((b) => b.getClientRects().length && !b.textContent.trim())
                .map((b) => b.id || b.className)"""
        )
    )


def seconds_with_calls(router: str) -> int:
    """Seconds of the router's history in which any backend answered a call."""
    doc = httpx.get(f"{router}/status/history").json()
    columns = [b["calls"] for b in doc["backends"].values()]
    return sum(1 for i in range(len(doc["t"])) if any(c[i] for c in columns))


def keep_screenshot(shot: Path) -> None:
    """The docs' picture is this screenshot, never edited: ``CANARY_UPDATE_DOCS=1`` writes
    it to docs/dashboard.png; ``CANARY_SCREENSHOT_DIR`` keeps a copy (CI artifacts)."""
    print(f"dashboard screenshot: {shot}")
    if os.environ.get("CANARY_UPDATE_DOCS") == "1":
        docs = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
        print(f"dashboard screenshot written to: {shutil.copy(shot, docs)}")
    if target := os.environ.get("CANARY_SCREENSHOT_DIR"):
        Path(target).mkdir(parents=True, exist_ok=True)
        copy = shutil.copy(shot, Path(target) / "dashboard.png")
        print(f"dashboard screenshot copied to: {copy}")


def test_the_dashboard_shows_a_rollback(
    browser: Any, router: str, sims: tuple[str, str], tmp_path: Path
) -> None:
    """Healthy traffic, then a broken relay: the page follows both and shows the rollback."""
    _, relay = sims
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{router}/dashboard")
    assert page.title() == "canary dashboard"

    with Traffic(router) as traffic:
        # Healthy: both backends answer, the numbers on the page go up, the charts draw.
        poll(lambda: number(page, "#total-requests") >= 20, 20, "the page counts calls")
        before = number(page, "#total-requests")
        poll(lambda: number(page, "#total-requests") > before, 10, "the count goes up")
        poll(lambda: points(page) >= 6, 15, "six polls on the charts")
        for chart in ("chart-traffic", "chart-errors", "chart-latency", "chart-circuits"):
            box = page.locator(f"#{chart} canvas").bounding_box()
            assert box is not None and box["width"] > 300 and box["height"] > 100, chart
            poll(lambda c=chart: inked(page, c) > 2000, 5, f"{chart} drawn")
        relay_row = page.locator('#backends tr[data-backend="relay"]')
        assert relay_row.locator(".circuit").inner_text() == "closed"
        assert number(page, '#backends tr[data-backend="relay"] .total') > 0
        assert page.locator("#events li.empty").count() == 1
        traffic_ink = inked(page, "chart-traffic")

        # Broken relay: its circuit opens, the page says so and shows the transition.
        httpx.post(relay + "/_sim/faults", json={"error_rate": 1.0, "status_code": 503})
        poll(lambda: relay_row.locator(".circuit").inner_text() == "open", 30, "relay open")
        opened_at = points(page)
        transition = page.locator(
            '#events li[data-backend="relay"][data-from="closed"][data-to="open"]'
        )
        assert transition.count() == 1
        assert "error rate" in transition.inner_text()
        assert page.locator("#verdict-title").inner_text() == "Not ready for full migration"
        assert "relay: circuit open" in page.locator("#verdict-reason").inner_text()
        weight = page.locator('#routes tr[data-route="chat"] .weight[data-backend="relay"]')
        assert weight.inner_text() == "relay 50 → 0"
        assert "over" in (relay_row.locator("td.num").nth(2).get_attribute("class") or "")
        # One row a second in every series, from the router's history; the second in which
        # the relay opened is sampled once it is over, and shows the errors that tripped it.
        poll(lambda: "open" in history(page)["relay"]["circuit"], 5, "the opening in history")
        rows = history(page)
        for name in ("relay", "legacy"):
            for column in ("calls", "errors", "share", "err", "p50", "p99", "circuit"):
                assert len(rows[name][column]) == len(rows["t"]), (name, column)
        assert rows["t"] == sorted(set(rows["t"])), "each second once"
        first_open = rows["relay"]["circuit"].index("open")
        assert rows["relay"]["circuit"][first_open - 1] == "closed"
        assert sum(e or 0 for e in rows["relay"]["errors"][: first_open + 1]) > 0
        assert rows["relay"]["err"][first_open] > 0 and rows["threshold"][first_open] == 20.0

        # Let the charts show the traffic on legacy alone for a few seconds, then picture it.
        poll(lambda: points(page) >= opened_at + 6, 15, "six polls after the rollback")
        assert inked(page, "chart-traffic") != traffic_ink, "the traffic chart changed"
        assert traffic.failed == [], "fallback answers every call"

    # Reload config with the admin token: kept in sessionStorage, never in the URL.
    page.click("#reload-open")
    page.fill("#reload-token", ADMIN_TOKEN)
    page.click("#reload-submit")
    poll(
        lambda: "Config unchanged" in page.locator("#reload-result").inner_text(),
        10,
        "reload answered",
    )
    assert page.evaluate("sessionStorage.getItem('canary.adminToken')") == ADMIN_TOKEN
    assert page.evaluate("localStorage.length") == 0
    assert ADMIN_TOKEN not in page.url and ADMIN_TOKEN not in page.content()
    assert errors == [], f"console errors: {errors}"

    # A wrong token is refused and forgotten (the browser logs the 401 it got, nothing else).
    page.fill("#reload-token", "wrong-token")
    page.click("#reload-submit")
    poll(
        lambda: "invalid admin token" in page.locator("#reload-result").inner_text(),
        10,
        "a wrong token is refused",
    )
    assert page.evaluate("sessionStorage.getItem('canary.adminToken')") is None
    assert errors == [
        "Failed to load resource: the server responded with a status of 401 (Unauthorized)"
    ]

    # The traffic has stopped: a page opened now draws the last minutes from the router.
    seen = seconds_with_calls(router)
    fresh = browser.new_page(viewport={"width": 1440, "height": 1000})
    fresh.on("pageerror", lambda e: errors.append(str(e)))
    fresh.goto(f"{router}/dashboard")
    poll(lambda: points(fresh) > 0, 10, "the first poll drawn")
    assert points(fresh) >= seen >= 10, "the history is drawn on open, not polled since"
    for chart in ("traffic", "errors", "latency"):
        assert series_with_numbers(fresh, chart) >= 2, f"{chart}: a non-empty series on open"
    for chart in ("chart-traffic", "chart-errors", "chart-latency", "chart-circuits"):
        poll(lambda c=chart: inked(fresh, c) > 2000, 5, f"{chart} drawn on open")
    labels = fresh.evaluate("window.canaryDashboard.charts.traffic.axes[0]._values")
    assert len(labels) >= 2 and len(labels) == len(set(labels)), f"each second once: {labels}"
    assert empty_badges(fresh) == [], "a badge with nothing to say is not drawn"
    assert fresh.locator("#rollback-note").inner_text().startswith("Rolled back: relay is open")
    assert fresh.locator("#verdict-title").inner_text() == "Not ready for full migration"
    assert fresh.locator("#verdict-reason").inner_text().startswith("relay: circuit open since")
    assert fresh.locator("#savings").inner_text() == "not yet"  # never a projection of seconds
    assert fresh.locator("#capabilities").is_hidden(), "no panel without its fields"
    assert fresh.locator("#shadow").is_hidden(), "no table without rows (no shadow here)"
    shot = tmp_path / "dashboard.png"
    fresh.screenshot(path=str(shot), full_page=True)
    keep_screenshot(shot)
    assert errors[1:] == [], f"console errors: {errors}"


def test_unknown_cost_is_shown_as_unknown_never_zero(browser: Any, router: str) -> None:
    """The cost figures from /status render as money; a null (no price) renders as words,
    never as $0. (The /status here is the router's own, with cost fields filled in.)"""
    doc = httpx.get(f"{router}/status").json()
    doc["backends"]["legacy"].update(
        tokens={"input": 120000, "output": 30000}, cost_usd=1.2, unmetered_requests=0
    )
    doc["backends"]["relay"].update(
        tokens={"input": 50000, "output": 9000},
        cost_usd=None,
        unpriced_tokens={"input": 50000, "output": 9000},
    )
    doc["migration"]["projected_monthly_savings_usd"] = None
    doc["cost"] = {
        "currency": "USD",
        "since": doc["config"]["loaded_at"],
        "by_model": [
            {
                "backend": "legacy",
                "model": "gpt-4.1",
                "requests": 150,
                "input_tokens": 120000,
                "output_tokens": 30000,
                "cost_usd": 1.2,
                "price": {"input": 8.0, "output": 8.0},
            },
            {
                "backend": "relay",
                "model": "gpt-4o",
                "requests": 60,
                "input_tokens": 50000,
                "output_tokens": 9000,
                "cost_usd": None,
                "price": None,
            },
        ],
        "total_usd": 1.2,
        "at_100_baseline_usd": 1.672,
        "at_100_canary_usd": None,
        "token_rate_per_s": {"input": 12.5, "output": 3.0},
        "projected_monthly_savings_usd": None,
        "unpriced": ["relay/gpt-4o"],
        "unmetered_requests": 0,
    }
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    body = json.dumps(doc)
    page.route("**/status", lambda route: route.fulfill(content_type="application/json", body=body))
    page.goto(f"{router}/dashboard")

    relay = page.locator('#backends tr[data-backend="relay"]')
    poll(lambda: relay.count() == 1, 10, "the backends table")
    assert relay.locator("td").last.inner_text() == "no price"
    legacy_cost = page.locator('#backends tr[data-backend="legacy"] td').last.inner_text()
    assert legacy_cost == "$1.20"
    assert page.locator("#savings").inner_text() == "unknown"
    assert "no price" in page.locator("#savings-sub").inner_text()
    cost = page.locator("#cost-summary").inner_text()
    assert "$1.67" in cost and "relay/gpt-4o" in cost
    models = page.locator("#cost-models tbody tr")
    assert models.count() == 2
    assert models.nth(1).locator("td").last.inner_text() == "no price"
    for text in (
        page.locator("#backends").inner_text(),
        cost,
        page.locator("#cost-models").inner_text(),
    ):
        assert "$0" not in text
    assert errors == [], f"console errors: {errors}"

    # A known projection is money, with what it rests on.
    doc["migration"]["projected_monthly_savings_usd"] = 1234.5
    doc["migration"]["projection_basis"] = "4,210 calls over 47 min"
    body = json.dumps(doc)
    poll(lambda: page.locator("#savings").inner_text() == "$1,234.50", 5, "savings shown")
    assert "(4,210 calls over 47 min)" in page.locator("#savings-sub").inner_text()

    # Under 10 minutes of traffic there is no projection: "not yet" and the basis, never $0.
    basis = "3 calls over 2 min; a projection needs 10 min of traffic"
    doc["migration"] |= {"projected_monthly_savings_usd": None, "projection_basis": basis}
    doc["cost"] |= {"projection_span_s": 120.0, "projection_needs_s": 600.0}
    body = json.dumps(doc)
    poll(lambda: page.locator("#savings").inner_text() == "not yet", 5, "pending projection")
    assert page.locator("#savings-sub").inner_text() == basis
    summary = page.locator("#cost-summary").inner_text()
    assert "not yet" in summary and basis in summary and "$0" not in summary
    assert errors == [], f"console errors: {errors}"


def test_the_equivalence_panel_shows_the_audit_and_the_pairs(browser: Any, router: str) -> None:
    """A substituting relay's audit row stands out with the name it answered as; each
    route's shadow pairs show their agreement and ratios. (A filled-in /status.)"""
    doc = httpx.get(f"{router}/status").json()
    doc["audit"] = {
        "legacy": {"gpt-4.1": {"match": 40, "variant": 0, "mismatch": 0, "absent": 0,
                               "last_mismatch": None}},
        "relay": {"gpt-4.1": {"match": 0, "variant": 0, "mismatch": 37, "absent": 3,
                              "last_mismatch": "gpt-4o-mini"}},
    }  # fmt: skip
    compare = {"pairs": 40, "status_agreement": 1.0, "prompt_tokens_match": 0.25,
               "latency_ratio_p50": 0.5, "latency_ratio_p95": 0.75,
               "completion_tokens_ratio_p50": 0.5, "exact_match": None}  # fmt: skip
    doc["shadow"] = {"chat": {"backend": "relay", "skipped": {"concurrency": 2, "budget": 1},
                              "cost_usd": 0.25, "compare": compare}}  # fmt: skip
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    body = json.dumps(doc)
    page.route("**/status", lambda route: route.fulfill(content_type="application/json", body=body))
    page.goto(f"{router}/dashboard")
    rows = page.locator("#audit tbody tr")
    poll(lambda: rows.count() == 2, 10, "the audit table")
    assert "gpt-4o-mini" in rows.nth(1).inner_text()
    assert rows.nth(1).get_attribute("class") == "bad"
    shadow = page.locator("#shadow tbody tr").inner_text()
    assert "chat → relay" in shadow and "25" in shadow and "$0.25" in shadow
    assert "0.50\u00d7" in shadow  # the latency ratio, shadow / primary
    assert errors == [], f"console errors: {errors}"


def test_capability_panels_are_drawn_only_with_their_fields(browser: Any, router: str) -> None:
    """Sessions, the spend audit and the same-model result each get a panel once /status has
    their fields (the router's own /status, filled in), and none before."""
    doc = httpx.get(f"{router}/status").json()
    points = httpx.get(f"{router}/status/history").json()
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    bodies = {"status": json.dumps(doc), "history": json.dumps(points)}
    page.route(
        "**/status", lambda r: r.fulfill(content_type="application/json", body=bodies["status"])
    )
    page.route(
        "**/status/history*",
        lambda r: r.fulfill(content_type="application/json", body=bodies["history"]),
    )
    page.goto(f"{router}/dashboard")
    poll(lambda: page.locator('#backends tr[data-backend="relay"]').count() == 1, 10, "a poll")
    assert page.locator("#capabilities").is_hidden()

    doc["backends"]["relay"]["sessions"] = {"open": 3, "total": 41, "cut": 2}
    doc["billing"] = {
        "relay": {"api": "new-api", "balance_usd": 12.5, "billed_usd": 1.32, "metered_usd": 1.0,
                  "ratio": 1.32, "runway_h": 7.5, "polled_at": doc["config"]["loaded_at"],
                  "error": None},
        "legacy": {"api": "openrouter", "balance_usd": None, "billed_usd": None,
                   "metered_usd": 0.5, "ratio": None, "runway_h": None, "polled_at": None,
                   "error": "HTTP 401 from the billing API"},
    }  # fmt: skip
    doc["readiness"]["max_billing_ratio"] = 1.1
    doc["same_model"] = {"test": "mmd", "p_value": 0.004, "alpha": 0.05, "verdict": "differs",
                         "prompts": 10, "samples": 20, "calls": 400, "cost_usd": 0.12,
                         "at": doc["config"]["loaded_at"], "config_version": "v"}  # fmt: skip
    doc["shadow"] = {"chat": {"backend": "relay", "compare": {"pairs": 40, "same_model_p": 0.31}}}
    relay: dict[str, list[Any]] = {field: [None] * 5 for field in FIELDS}
    relay |= {"calls": [0] * 5, "circuit": ["closed"] * 5, "sessions_open": [1, 2, 3, 3, 3]}
    now = int(time.time())  # seconds after any the page holds: appended, each once
    points = {"since": now - 900, "keep_s": 900, "t": list(range(now + 1, now + 6)),
              "backends": {"relay": relay}, "routes": {}, "sources": 1}  # fmt: skip
    bodies.update(status=json.dumps(doc), history=json.dumps(points))

    poll(lambda: page.locator("#sessions-panel").is_visible(), 10, "the sessions panel")
    assert page.locator('#sessions tr[data-backend="relay"]').inner_text().split() == [
        "relay", "3", "41", "2",
    ]  # fmt: skip
    poll(lambda: inked(page, "chart-sessions") > 500, 5, "sessions open, drawn from history")
    billing = page.locator('#billing tr[data-backend="relay"]').inner_text()
    assert "$12.50 (7.5 h)" in billing and "$1.32 / $1.00" in billing
    assert "over" in (page.locator("#billing td.num").nth(2).get_attribute("class") or "")
    failed = page.locator("#billing tr.bad")  # a failed poll is shown, under its backend
    assert failed.inner_text() == "poll failed: HTTP 401 from the billing API"
    verdict = page.locator("#same-model-verdict").inner_text()
    assert verdict == "Answers differ from the baseline's (p = 0.0040, alpha 0.05)"
    assert "10 \u00d7 20" in page.locator("#same-model-facts").inner_text()
    assert page.locator("#same-model-shadow tbody").inner_text().split() == [
        "chat", "→", "relay", "0.31",
    ]  # fmt: skip
    assert empty_badges(page) == []
    assert errors == [], f"console errors: {errors}"
