"""End to end: shadow copies, the model audit and the verdict, over real sockets with the
simulators and the official openai client (SPEC §9)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import httpx

from tests.helpers import wait_until

ROUTES = """
backends:
  legacy: {{base_url: "${{LEGACY_BASE_URL}}", timeout_s: 10}}
  relay: {{base_url: "${{RELAY_BASE_URL}}", timeout_s: 10, model_map: {{gpt-4.1: relay-4.1}}}}
routes:
  - name: chat
    match: {{paths: [/v1/chat/completions]}}
    weights: {{legacy: {legacy}, relay: {relay}}}
    baseline: legacy
    sticky: header:x-user-id
{shadow}
readiness: {{min_requests: 10}}
pricing:
  relay: {{gpt-4.1: {{input: 1.0, output: 1.0}}}}
"""
SHADOW = "    shadow: {backend: relay, sample: 1.0, max_concurrency: 4, max_usd_per_day: 5}"


def routes(legacy: int = 100, relay: int = 0, shadow: bool = False) -> str:
    return ROUTES.format(legacy=legacy, relay=relay, shadow=SHADOW if shadow else "")


def client_ms(stack: Any, n: int) -> list[float]:
    """Client-side latency of ``n`` plain chat calls, in ms."""
    client = stack.client()
    out = []
    for i in range(n):
        began = time.perf_counter()
        client.chat.completions.create(
            model="gpt-4.1", messages=[{"role": "user", "content": f"hi {i}"}]
        )
        out.append((time.perf_counter() - began) * 1000)
    return out


def test_a_slow_shadow_never_delays_the_client_and_streams_reach_it(stack_factory: Any) -> None:
    """With every call copied to a shadow backend that takes 800 ms, the client's latency
    stays as without a shadow; plain and streamed copies reach it; the cap holds."""
    plain = stack_factory(routes())
    without = client_ms(plain, 20)
    stack = stack_factory(routes(shadow=True))
    stack.sim("relay", "/_sim/faults", {"latency_ms": 800})
    with_shadow = client_ms(stack, 20)
    stream = stack.client().chat.completions.create(
        model="gpt-4.1",
        messages=[{"role": "user", "content": "stream me"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    p50_without, p50_with = statistics.median(without), statistics.median(with_shadow)
    print(f"client p50 without shadow {p50_without:.1f} ms, with 800 ms shadow {p50_with:.1f} ms")
    assert p50_with < p50_without + 100  # nowhere near the shadow's 800 ms
    wait_until(lambda: stack.status()["shadow"]["chat"]["calls"] >= 4, 10, "shadow calls")
    shadow = stack.status()["shadow"]["chat"]
    assert shadow["skipped"]["concurrency"] > 0  # 21 copies of 800 ms, 4 at a time
    relay = stack.sim("relay", "/_sim/stats")
    assert relay["peak_in_flight"] <= 4
    wait_until(lambda: stack.sim("relay", "/_sim/stats")["in_flight"] == 0, 10, "copies done")
    last = stack.sim("relay", "/_sim/stats")["last_request"]
    assert last["body"]["model"] == "relay-4.1"  # the shadow backend's model_map


def verdict(stack: Any, calls: int = 40) -> dict[str, Any]:
    client = stack.client()
    for i in range(calls):
        client.chat.completions.create(
            model="gpt-4.1",
            messages=[{"role": "user", "content": "one two three"}],
            extra_headers={"x-user-id": f"user-{i}"},
        )
    return stack.status()  # type: ignore[no-any-return]


def test_substitution_blocks_the_verdict_and_an_honest_relay_becomes_ready(
    stack_factory: Any,
) -> None:
    """A relay that never fails but names gpt-4o-mini is not ready, in words; honest, it is."""
    stack = stack_factory(routes(50, 50))
    stack.sim("relay", "/_sim/faults", {"echo_model": "gpt-4o-mini"})
    doc = verdict(stack)
    assert doc["backends"]["relay"]["errors"] == 0
    assert doc["migration"]["ready_for_full_migration"] is False
    assert doc["migration"]["reason"].startswith(
        "relay: answers as gpt-4o-mini when asked for relay-4.1 ("
    )
    honest = stack_factory(routes(50, 50))
    doc = verdict(honest)
    assert doc["migration"]["ready_for_full_migration"] is True, doc["migration"]


def test_token_inflation_blocks_the_verdict(stack_factory: Any) -> None:
    """A relay that bills twice the prompt tokens on the same prompts is caught by the pairs."""
    stack = stack_factory(routes(50, 50, shadow=True))
    stack.sim("relay", "/_sim/faults", {"prompt_token_factor": 2.0})
    verdict(stack, 60)
    wait_until(lambda: stack.status()["shadow"]["chat"]["pairs"] >= 20, 10, "20 pairs")
    doc = stack.status()
    assert doc["migration"]["ready_for_full_migration"] is False
    assert doc["migration"]["reason"].startswith("relay: prompt tokens differ from legacy's")
    assert doc["shadow"]["chat"]["compare"]["prompt_tokens_ratio_p50"] == 2.0
    assert httpx.get(f"{stack.url}/metrics").status_code == 200
