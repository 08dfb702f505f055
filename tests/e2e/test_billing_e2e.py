"""End to end, the spend audit (SPEC §11): ``canary serve`` in front of a relay simulator
that bills 1.3x what its usage says through new-api's billing endpoints, the official
openai client as the caller, and a small local HTTP server receiving the alert webhooks."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.helpers import (
    Stack,
    canary,
    free_port,
    prometheus_samples,
    sample,
    simulator,
    wait_until,
)

pytestmark = pytest.mark.e2e

# $1000 per million tokens on both sides: a few calls are worth cents, enough for a ratio.
ROUTES = """
backends:
  legacy: {base_url: "LEGACY/v1", timeout_s: 10}
  relay:
    base_url: "RELAY/v1"
    api_key: sk-relay-billing-SECRET-55
    timeout_s: 10
    billing: {api: new-api, poll_s: 1}
routes:
  - name: chat
    weights: {legacy: 0, relay: 100}
    baseline: legacy
    fallback: true
readiness: {min_requests: 5}
retry: {max_attempts: 3, backoff_s: 0}
pricing:
  relay: {gpt-4.1: {input: 1000, output: 1000}}
  legacy: {gpt-4.1: {input: 1000, output: 1000}}
alerts: {webhooks: ["HOOK"], min_runway_h: 24}
auth: {admin_token: "TOKEN"}
"""
TOKEN = "adm-billing-SECRET-66"


@pytest.fixture(scope="module")
def sims() -> Iterator[tuple[str, str]]:
    """A plain legacy, and a relay that bills 1.3x from a $5 balance (new-api's API)."""
    ports = free_port(), free_port()
    relay = ("--billing", "new-api", "--bill-factor", "1.3", "--balance-usd", "5")
    with (
        simulator(ports[0], "legacy"),
        simulator(
            ports[1], "relay", *relay, "--price", "1000", "--api-key", "sk-relay-billing-SECRET-55"
        ),
    ):
        yield f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}"


class Hooks(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def hooks() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Hooks)
    Hooks.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook?token=x", Hooks.received
    finally:
        server.shutdown()
        server.server_close()


def _status(stack: Stack) -> dict[str, Any]:
    return httpx.get(f"{stack.url}/status").json()  # type: ignore[no-any-return]


def _polled(stack: Stack) -> dict[str, Any]:
    """``/status`` once the relay's bill was polled after the last call served."""
    served = _status(stack)["backends"]["relay"]["cost_usd"]
    wait_until(
        lambda: (_status(stack)["billing"]["relay"]["metered_usd"] or 0) >= served - 1e-9,
        10,
        "a poll after the last call",
    )
    return _status(stack)


def test_a_relay_billing_more_than_it_serves_is_caught(
    stack_factory: Any, sims: tuple[str, str], hooks: tuple[str, list[dict[str, Any]]]
) -> None:
    """Ratio ~1.3, not ready in words, balance and runway read, alerts told once; then spent
    credit is credit_spent: one try, the client served by the baseline; then verify's probes
    are metered too."""
    url, received = hooks
    relay_sim = sims[1]
    text = ROUTES.replace("HOOK", url).replace("LEGACY", sims[0]).replace("RELAY", relay_sim)
    stack: Stack = stack_factory(text.replace("TOKEN", TOKEN))
    client = stack.client()
    for _ in range(8):
        r = client.chat.completions.with_raw_response.create(
            model="gpt-4.1", messages=[{"role": "user", "content": "how much is this?"}]
        )
        assert r.headers["x-canary-backend"] == "relay"
    status = _polled(stack)
    bill = status["billing"]["relay"]
    assert bill["api"] == "new-api" and bill["error"] is None
    assert 1.2 <= bill["ratio"] <= 1.4
    assert bill["billed_usd"] == pytest.approx(1.3 * bill["metered_usd"], rel=0.05)
    account = httpx.get(f"{relay_sim}/_sim/billing").json()
    assert bill["balance_usd"] == pytest.approx(account["balance_usd"], abs=1e-6)
    assert bill["runway_h"] is not None and 0 < bill["runway_h"] < 24
    migration = status["migration"]
    assert migration["ready_for_full_migration"] is False
    words = (
        r"relay: billed \$0\.\d{4} for calls metered at \$0\.\d{4} \(1\.\d\dx\) over the last hour"
    )
    assert re.search(words, migration["reason"]), migration["reason"]
    metrics = prometheus_samples(httpx.get(f"{stack.url}/metrics").text)
    assert sample(metrics, "canary_billing_ratio", backend="relay") == bill["ratio"]
    assert sample(metrics, "canary_balance_usd", backend="relay") == bill["balance_usd"]
    wait_until(lambda: len(received) >= 2, 10, "the ratio and runway alerts")
    assert {(h["alert"], h["state"]) for h in received} == {
        ("billing_ratio", "firing"),
        ("runway", "firing"),
    }

    # The relay's credit runs out: new-api's 403 insufficient_user_quota.
    httpx.post(f"{relay_sim}/_sim/billing", json={"balance_usd": 0}).raise_for_status()
    before = httpx.get(f"{relay_sim}/_sim/stats").json()["requests"]
    r = client.chat.completions.with_raw_response.create(
        model="gpt-4.1", messages=[{"role": "user", "content": "and now?"}]
    )
    assert r.headers["x-canary-backend"] == "legacy"
    assert r.headers["x-canary-fallback"] == "relay"
    assert httpx.get(f"{relay_sim}/_sim/stats").json()["requests"] == before + 1  # no retry
    metrics = prometheus_samples(httpx.get(f"{stack.url}/metrics").text)
    assert (
        sample(metrics, "canary_upstream_failures_total", backend="relay", kind="credit_spent") == 1
    )
    assert "credit spent (insufficient_user_quota)" in _status(stack)["migration"]["reason"]
    wait_until(lambda: len(received) >= 3, 10, "the spent-credit alert")
    assert received[2]["alert"] == "credit_spent" and received[2]["state"] == "firing"
    assert "insufficient_user_quota" in received[2]["reason"]
    assert len(received) == 3  # each told once, not once per poll

    # A top-up, then ``canary verify``: its probes to the relay are metered too.
    httpx.post(f"{relay_sim}/_sim/billing", json={"balance_usd": 5}).raise_for_status()
    args = ("-c", str(stack.config), "--url", stack.url, "--token", TOKEN, "--max-usd", "50")
    done = canary("verify", *args)
    said = re.search(r"relay \$([0-9.]+); metered by the router", done.stderr)
    assert said is not None, done.stderr
    live = _status(stack)["backends"]["relay"]["cost_usd"]
    wait_until(
        lambda: (
            _status(stack)["billing"]["relay"]["metered_usd"]
            == pytest.approx(live + float(said[1]), abs=1e-4)
        ),
        10,
        "verify's probes in the relay's metered cost",
    )
    assert 1.2 <= _status(stack)["billing"]["relay"]["ratio"] <= 1.4  # they were billed too
    text = json.dumps(_status(stack)) + httpx.get(f"{stack.url}/metrics").text
    text += done.stdout + done.stderr
    assert "SECRET" not in text and "token=x" not in text


def test_an_honest_openrouter_relay_is_ready_and_openais_spent_quota_falls_back(
    stack_factory: Any,
) -> None:
    """Through OpenRouter's key endpoint, a relay billing what it serves shows a ratio of
    about 1 and is ready; when it then answers OpenAI's ``429 insufficient_quota``, that is
    spent credit: never retried, the client served by the baseline, the reason in words."""
    ports = free_port(), free_port()
    key = "sk-relay-or-SECRET-77"
    relay_args = ("--billing", "openrouter", "--bill-factor", "1.0", "--balance-usd", "5")
    with (
        simulator(ports[0], "legacy"),
        simulator(ports[1], "relay", *relay_args, "--price", "1000", "--api-key", key),
    ):
        legacy, relay = (f"http://127.0.0.1:{p}" for p in ports)
        text = ROUTES.replace("LEGACY", legacy).replace("RELAY", relay)
        text = text.replace("sk-relay-billing-SECRET-55", key).replace("new-api", "openrouter")
        text = text.replace('alerts: {webhooks: ["HOOK"], min_runway_h: 24}\n', "")
        stack: Stack = stack_factory(text.replace("TOKEN", TOKEN))
        client = stack.client()
        for _ in range(8):
            client.chat.completions.create(
                model="gpt-4.1", messages=[{"role": "user", "content": "an honest bill?"}]
            )
        status = _polled(stack)
        bill = status["billing"]["relay"]
        assert bill["api"] == "openrouter" and bill["error"] is None
        assert 0.95 <= bill["ratio"] <= 1.05
        account = httpx.get(f"{relay}/_sim/billing").json()
        assert bill["balance_usd"] == pytest.approx(account["balance_usd"], abs=1e-6)
        assert status["migration"]["ready_for_full_migration"] is True, status["migration"]

        # The same relay now refuses the OpenAI way: 429 insufficient_quota.
        patch = {"api": "openai", "balance_usd": 0}
        httpx.post(f"{relay}/_sim/billing", json=patch).raise_for_status()
        before = httpx.get(f"{relay}/_sim/stats").json()["requests"]
        r = client.chat.completions.with_raw_response.create(
            model="gpt-4.1", messages=[{"role": "user", "content": "and now?"}]
        )
        assert (r.headers["x-canary-backend"], r.headers["x-canary-fallback"]) == (
            "legacy",
            "relay",
        )
        assert httpx.get(f"{relay}/_sim/stats").json()["requests"] == before + 1  # no retry
        assert "credit spent (insufficient_quota)" in _status(stack)["migration"]["reason"]
