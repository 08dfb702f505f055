"""End to end: token accounting, cost and /metrics over real processes, one view over workers.

``canary serve --workers 2`` in front of two ``canary simulate`` providers, called with the
official openai client; the router's figures are compared with the usage the simulators
say they sent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import (
    SECRETS,
    Stack,
    free_port,
    let_time_pass,
    stack_routes,
    wait_until,
)

pytestmark = pytest.mark.e2e

PRICING = """
pricing:
  legacy: {gpt-4.1: {input: 8.0, output: 8.0}}
  relay: {gpt-4.1: {input: 1.1, output: 1.1}}
"""


def sim_tokens(stack: Stack) -> tuple[int, int]:
    prompt = completion = 0
    for which in ("legacy", "relay"):
        tokens = stack.sim(which, "/_sim/stats")["tokens"]
        prompt += tokens["prompt"]
        completion += tokens["completion"]
    return prompt, completion


def fresh_status(stack: Stack) -> Any:
    """/status over a new connection, so successive calls land on different workers."""
    with httpx.Client() as c:
        return c.get(f"{stack.url}/status").json()


def router_tokens(doc: Any) -> tuple[int, int]:
    backends = doc["backends"].values()
    return sum(b["tokens"]["input"] for b in backends), sum(b["tokens"]["output"] for b in backends)


def spread(stack: Stack) -> bool:
    """Both workers have served calls (their figures arrive within 0.5 s)."""
    calls = fresh_status(stack)["workers"]["calls"]
    return len(calls) == 2 and min(calls.values()) > 0


def talk(client: openai.OpenAI, n: int, user: str) -> None:
    """n plain calls and n streams that ask for their usage."""
    for i in range(n):
        words = " ".join(["word"] * (i + 1))
        client.chat.completions.create(
            model="gpt-4.1",
            messages=[{"role": "user", "content": words}],
            extra_headers={"x-user-id": f"{user}-{i}"},
        )
        chunks = client.chat.completions.create(
            model="gpt-4.1",
            messages=[{"role": "user", "content": words}],
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-user-id": f"{user}-{i}"},
        )
        assert [c for c in chunks if c.usage is not None]


def test_workers_report_one_view_of_tokens_cost_and_metrics(
    stack_factory: Any, tmp_path: Path
) -> None:
    """Two workers: /status on either sums both, tokens match what the simulators sent,
    costs follow pricing, and /metrics (parsed by prometheus-client) agrees. The savings
    projection waits for 10 minutes of traffic (the router's clock is moved, not waited
    for), then equals the reported token rate x the price difference x 30 days."""
    clock_file = tmp_path / "clock"
    let_time_pass(clock_file, 0)
    stack: Stack = stack_factory(
        stack_routes(50, 50) + PRICING,
        args=["--workers", "2"],
        env={"CANARY_CLOCK_OFFSET_FILE": str(clock_file)},
    )
    with openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0) as c:
        c.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "hi"}])
    early = fresh_status(stack)["migration"]  # whichever worker answers: too soon to project
    assert early["projected_monthly_savings_usd"] is None
    assert early["projection_basis"].endswith("; a projection needs 10 min of traffic")
    let_time_pass(clock_file, 600)  # ten quiet minutes after that first call

    n = 0  # each new connection goes to whichever worker accepts it first
    while n < 20 or (not spread(stack) and n < 200):
        with openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0) as c:
            talk(c, 5, f"u{n}")
        n += 10
    sent = sim_tokens(stack)
    assert sent[0] > 0 and sent[1] > 0

    def settled() -> bool:  # workers exchange figures every 0.5 s
        docs = [fresh_status(stack) for _ in range(4)]
        return all(
            router_tokens(d) == sent and sum(d["workers"]["calls"].values()) == n + 1 for d in docs
        )

    wait_until(settled, 10, f"router tokens == simulators' {sent}, {n + 1} calls")
    # The history, from either worker, adds both workers' rings second by second (the first
    # call may have been made before the clock was moved on, and not be in any second).
    wait_until(lambda: min(history_calls(stack) for _ in range(4)) >= n, 5, "both workers")
    assert history_calls(stack) <= n + 1
    doc = fresh_status(stack)
    assert doc["workers"]["alive"] == 2
    calls = doc["workers"]["calls"]
    assert len(calls) == 2 and sum(calls.values()) == n + 1  # the first call too
    assert min(calls.values()) > 0, calls  # both workers served: the sums are real sums
    legacy, relay = doc["backends"]["legacy"], doc["backends"]["relay"]
    assert legacy["total_requests"] + relay["total_requests"] == n + 1
    # the window, over both workers: the first call is ten minutes old, out of it
    assert legacy["requests"] + relay["requests"] == n
    assert legacy["unmetered_requests"] == relay["unmetered_requests"] == 0
    for b, price in ((legacy, 8.0), (relay, 1.1)):
        tokens = b["tokens"]["input"] + b["tokens"]["output"]
        assert b["cost_usd"] == pytest.approx(tokens * price / 1e6, abs=1e-6)
    cost = doc["cost"]
    total = sum(sent)
    assert cost["at_100_baseline_usd"] == pytest.approx(total * 8.0 / 1e6, abs=1e-6)
    assert cost["at_100_canary_usd"] == pytest.approx(total * 1.1 / 1e6, abs=1e-6)
    rate = cost["token_rate_per_s"]  # all of it on the chat route: legacy 8.0 -> relay 1.1
    expected = (rate["input"] + rate["output"]) * (8.0 - 1.1) * 30 * 24 * 3600 / 1e6
    assert expected > 0
    assert doc["migration"]["projected_monthly_savings_usd"] == pytest.approx(expected, rel=0.01)
    span = cost["projection_span_s"]  # from the first call, on any worker, to now
    assert cost["projection_calls"] == n + 1 and 600 <= span < 900
    assert doc["migration"]["projection_basis"] == f"{n + 1:,} calls over {int(span // 60)} min"

    scraped: list[Any] = []

    def total_of(name: str, **labels: str) -> float:
        return sum(
            s.value
            for s in scraped
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def scrape() -> bool:  # like settled(): either worker may answer, each 0.5 s behind
        text = httpx.get(f"{stack.url}/metrics").text
        scraped[:] = [s for f in text_string_to_metric_families(text) for s in f.samples]
        return total_of("canary_requests_total", route="chat", status_class="2xx") == n + 1

    wait_until(scrape, 10, f"/metrics counts {n + 1} chat calls")
    text = httpx.get(f"{stack.url}/metrics").text
    assert total_of("canary_tokens_total", direction="input") == sent[0]
    assert total_of("canary_tokens_total", direction="output") == sent[1]
    assert total_of("canary_request_duration_seconds_count") == n + 1
    assert total_of("canary_projected_monthly_savings_usd") > 0  # the live rate moves on
    assert total_of("canary_projection_basis_seconds") >= 600
    assert total_of("canary_cost_usd_total") == pytest.approx(cost["total_usd"], abs=1e-6)
    for secret in SECRETS:
        assert secret not in text


def history_calls(stack: Stack) -> int:
    """Calls in the router's /status/history, every backend and second added up."""
    doc = httpx.get(f"{stack.url}/status/history").json()
    return sum(sum(n or 0 for n in b["calls"]) for b in doc["backends"].values())


def test_streams_without_usage_are_counted_as_unmetered(stack_factory: Any) -> None:
    """A stream whose client did not ask for usage is answered, and reported as unmetered."""
    stack: Stack = stack_factory(stack_routes(100, 0) + PRICING)
    client = stack.client()
    for _ in range(3):
        list(
            client.chat.completions.create(
                model="gpt-4.1", messages=[{"role": "user", "content": "x"}], stream=True
            )
        )
    doc = stack.status()
    assert doc["backends"]["legacy"]["unmetered_requests"] == 3
    assert doc["cost"]["unmetered_requests"] == 3
    assert doc["backends"]["legacy"]["tokens"] == {"input": 0, "output": 0}


def test_workers_share_windows_while_redis_is_unreachable(stack_factory: Any) -> None:
    """Two workers, Redis configured but down: state is degraded, and each worker's window
    still holds the host's calls (the workers' own exchange takes over)."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    text = stack_routes(0, 100) + f"state: {{redis_url: '{dead}'}}\n"
    stack: Stack = stack_factory(text, args=["--workers", "2"])
    n = 0
    while n < 20 or (not spread(stack) and n < 200):
        with openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0) as c:
            talk(c, 5, f"d{n}")
        n += 10

    def window_is_the_hosts() -> bool:
        return all(fresh_status(stack)["backends"]["relay"]["requests"] == n for _ in range(4))

    wait_until(window_is_the_hosts, 10, f"relay's window on every worker == {n} calls")
    assert fresh_status(stack)["state"] == "degraded"
