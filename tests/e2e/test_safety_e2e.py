"""End to end over real sockets, the safety loop (SPEC §4 and §6): a bad canary costs the
caller nothing. Two ``canary simulate`` processes are the providers, ``canary serve`` is
the router, and the official openai client is the caller."""

from __future__ import annotations

import re
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.helpers import Stack, free_port, run_process, wait_until

pytestmark = pytest.mark.e2e

OPEN_S = 2  # short enough to wait out, long enough to send traffic while open
ROUTES = """
backends:
  legacy:
    base_url: ${{LEGACY_BASE_URL}}
    timeout_s: 10
  relay:
    base_url: ${{RELAY_BASE_URL}}
    timeout_s: 10
routes:
  - name: chat
    match:
      paths: [/v1/chat/completions]
    weights: {{legacy: {legacy}, relay: {relay}}}
    baseline: legacy
    sticky: header:x-user-id
    fallback: true
rollback:
  window_s: 30
  min_requests: 40
  max_error_rate: 0.1
  open_s: {open_s}
  probe_requests: 5
  auto_resume: {auto_resume}
readiness:
  min_requests: 60
  max_error_rate: 0.05
retry:
  max_attempts: 1
"""
# Every fault the simulator knows, at its default: no test inherits another's faults.
NO_FAULTS = {
    "latency_ms": 0,
    "chunk_delay_ms": 0,
    "error_rate": 0,
    "status_code": 500,
    "rate_limit_rate": 0,
    "retry_after_s": 1,
    "cut_after": None,
    "hang": False,
}
MESSAGES = [{"role": "user", "content": "hi"}]


@dataclass
class SafetyStack(Stack):
    """A ``Stack`` that reads ``/status`` and the simulators over one kept-alive client
    (a fresh ``httpx`` client per read costs ~20 ms, which would stretch every loop)."""

    http: httpx.Client = field(default_factory=httpx.Client)

    def sim(self, which: str, path: str, body: dict[str, Any] | None = None) -> Any:
        base = self.legacy if which == "legacy" else self.relay
        url = base + path
        r = self.http.get(url) if body is None else self.http.post(url, json=body)
        r.raise_for_status()
        return r.json()

    def status(self) -> Any:
        return self.http.get(f"{self.url}/status").json()


def routes(
    legacy: int = 50, relay: int = 50, *, open_s: float = OPEN_S, auto_resume: bool = True
) -> str:
    resume = "true" if auto_resume else "false"
    return ROUTES.format(legacy=legacy, relay=relay, open_s=open_s, auto_resume=resume)


@pytest.fixture
def stack_factory(sims: tuple[str, str], tmp_path: Path) -> Iterator[Any]:
    """Start a router with the given routes.yaml on the shared, freshly reset simulators."""
    legacy, relay = sims
    started: list[tuple[Any, SafetyStack]] = []

    def start(text: str) -> SafetyStack:
        for base in sims:
            httpx.post(base + "/_sim/reset").raise_for_status()
            httpx.post(base + "/_sim/faults", json=NO_FAULTS).raise_for_status()
        config = tmp_path / f"routes{len(started)}.yaml"
        config.write_text(text)
        port = free_port()
        log = tempfile.TemporaryFile()
        cm = run_process(
            [sys.executable, "-m", "canary", "serve", "-c", str(config), "--port", str(port)],
            f"http://127.0.0.1:{port}/readyz",
            output=log,
            env={"LEGACY_BASE_URL": f"{legacy}/v1", "RELAY_BASE_URL": f"{relay}/v1"},
        )
        router = cm.__enter__()
        stack = SafetyStack(f"http://127.0.0.1:{port}", legacy, relay, config, router, log)
        started.append((cm, stack))
        return stack

    yield start
    for cm, stack in reversed(started):
        for c in stack.clients:
            c.close()
        stack.http.close()
        cm.__exit__(None, None, None)
        stack.log.close()


def call(client: openai.OpenAI, user: str | None = None) -> tuple[str, str | None]:
    """One chat completion (it must succeed); the backend that answered and the fallback."""
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4.1",
        messages=MESSAGES,  # type: ignore[arg-type]
        extra_headers={"x-user-id": user} if user else None,
    )
    assert raw.parse().choices[0].message.content
    return raw.headers["x-canary-backend"], raw.headers.get("x-canary-fallback")


def relay_stats(stack: SafetyStack) -> dict[str, Any]:
    return stack.sim("relay", "/_sim/stats")  # type: ignore[no-any-return]


def circuit(stack: SafetyStack) -> str:
    return str(stack.status()["backends"]["relay"]["circuit"])


def transitions(stack: SafetyStack) -> list[str]:
    """The relay circuit's states so far, oldest first, starting from the first one left."""
    events = [e for e in reversed(stack.status()["events"]) if e["backend"] == "relay"]
    return [events[0]["from"], *(e["to"] for e in events)] if events else []


def trip(stack: SafetyStack, client: openai.OpenAI, users: list[str] | None = None) -> set[str]:
    """Fail every relay call until its circuit opens; every caller still gets an answer.

    Returns the users whose calls fell back from the relay (sticky users of the relay).
    """
    stack.sim("relay", "/_sim/faults", {"error_rate": 1.0, "status_code": 503})
    relay_users = set()
    for i in range(400):
        user = users[i % len(users)] if users else None
        backend, fallback = call(client, user)
        assert backend == "legacy"
        if fallback == "relay" and user:
            relay_users.add(user)
        if circuit(stack) == "open":
            return relay_users
    raise AssertionError("the relay circuit did not open")


def test_healthy_traffic_turns_the_verdict_ready(stack_factory: Any) -> None:
    """The readiness verdict counts the relay's calls and turns true after enough good ones."""
    stack: SafetyStack = stack_factory(routes())
    client = stack.client()
    migration = stack.status()["migration"]
    assert migration["ready_for_full_migration"] is False
    assert migration["reason"] == "relay: 0 of 60 requests"

    while (seen := relay_stats(stack)["requests"]) < 5:
        call(client)
    wait_until(
        lambda: stack.status()["migration"]["reason"] == f"relay: {seen} of 60 requests",
        3,
        "the verdict counts the relay's calls",
    )
    assert stack.status()["migration"]["ready_for_full_migration"] is False

    for _ in range(400):
        if relay_stats(stack)["requests"] >= 60:
            break
        call(client)
    wait_until(lambda: stack.status()["migration"]["ready_for_full_migration"] is True, 3, "ready")
    doc = stack.status()
    assert doc["migration"]["reason"] == "relay: ready"
    assert doc["backends"]["relay"]["since_change"]["requests"] >= 60
    assert doc["backends"]["relay"]["errors"] == 0
    assert doc["events"] == []


def test_a_failing_relay_costs_the_callers_nothing(stack_factory: Any) -> None:
    """At 30% errors and 50% weight: 0 client failures, the circuit opens, no call reaches it."""
    stack: SafetyStack = stack_factory(routes(open_s=30))
    client = stack.client()
    stack.sim("relay", "/_sim/faults", {"error_rate": 0.3, "status_code": 503})
    client_failures = fallbacks = calls = 0
    first_failure = opened = 0.0
    at_open: dict[str, Any] = {}
    while not at_open:
        assert calls < 600, "the relay circuit did not open"
        calls += 1
        try:
            backend, fallback = call(client)
        except openai.APIError:
            client_failures += 1
            continue
        if fallback == "relay":
            assert backend == "legacy"
            fallbacks += 1
            first_failure = first_failure or time.monotonic()
        if circuit(stack) == "open":
            opened = time.monotonic()
            at_open = relay_stats(stack)

    # While open: every call goes to the baseline, none reaches the relay.
    routed = set()
    for _ in range(100):
        try:
            routed.add(call(client))
        except openai.APIError:
            client_failures += 1
    after = relay_stats(stack)
    doc = stack.status()
    opened_event = next(e for e in doc["events"] if e["to"] == "open")
    print(
        f"\nblast radius (min_requests 40, max_error_rate 0.1, relay at 30% errors, 50% weight):"
        f"\n  relay calls before the rollback: {at_open['requests']},"
        f" failed: {at_open['errors_injected']} (all answered by legacy via fallback)"
        f"\n  client requests: {calls + 100}, client-visible failures: {client_failures}"
        f"\n  responses with x-canary-fallback: relay: {fallbacks}"
        f"\n  first injected failure -> open: {(opened - first_failure) * 1000:.0f} ms"
        f"\n  open event: {opened_event['reason']!r}"
    )
    assert client_failures == 0
    assert fallbacks > 0 and fallbacks == at_open["errors_injected"]
    assert after["requests"] == at_open["requests"]  # 0 calls to the relay while open
    assert routed == {("legacy", None)}
    assert doc["backends"]["relay"]["circuit"] == "open"
    assert doc["routes"][0]["configured"] == {"legacy": 50, "relay": 50}
    assert doc["routes"][0]["effective"] == {"legacy": 100, "relay": 0}  # SPEC §6
    assert doc["routes"][0]["canary_percentage"] == 0
    assert opened_event["backend"] == "relay" and opened_event["from"] == "closed"
    assert re.fullmatch(r"error rate 0\.\d+ > 0\.1 over \d+ requests", opened_event["reason"])
    assert opened_event["requests"] >= 40
    assert opened_event["errors"] > 0.1 * opened_event["requests"]
    assert doc["migration"]["ready_for_full_migration"] is False
    assert doc["migration"]["reason"].startswith("relay: circuit open since ")


def test_half_open_probes_close_the_circuit_once_the_relay_heals(stack_factory: Any) -> None:
    """After open_s exactly probe_requests calls reach the healed relay, then it closes."""
    stack: SafetyStack = stack_factory(routes())
    client = stack.client()
    relay_users = sorted(trip(stack, client, [f"user-{i}" for i in range(40)]))
    assert relay_users
    user = relay_users[0]
    # Healed but slow: probes stay in flight while the concurrent batch below arrives.
    stack.sim("relay", "/_sim/faults", {"error_rate": 0, "latency_ms": 1500})
    healed = relay_stats(stack)["requests"]

    # Traffic while open goes to legacy; once open_s has passed, a call probes the relay.
    wait_until(lambda: call(client, user)[0] == "relay", OPEN_S + 5, "a first probe")
    assert circuit(stack) == "half_open"
    with ThreadPoolExecutor(20) as pool:
        batch = list(pool.map(lambda i: call(client, relay_users[i % len(relay_users)]), range(20)))
    assert all(fallback is None for _, fallback in batch)
    assert sum(backend == "relay" for backend, _ in batch) == 4  # 5 probes in all, no more
    assert relay_stats(stack)["requests"] - healed == 5

    wait_until(lambda: circuit(stack) == "closed", 3, "closed after 5 good probes")
    assert transitions(stack) == ["closed", "open", "half_open", "closed"]
    doc = stack.status()
    assert doc["events"][0]["reason"] == "5 probes succeeded"
    assert doc["routes"][0]["effective"] == {"legacy": 50, "relay": 50}
    assert doc["routes"][0]["canary_percentage"] == 50
    assert doc["backends"]["relay"]["errors"] == 0  # a fresh window once closed
    stack.sim("relay", "/_sim/faults", {"latency_ms": 0})
    assert all(call(client, u) == ("relay", None) for u in relay_users)


def test_a_failed_probe_reopens_the_circuit(stack_factory: Any) -> None:
    """A relay still failing at half-open fails its one probe and the circuit opens again."""
    stack: SafetyStack = stack_factory(routes())
    client = stack.client()
    trip(stack, client)
    opened = relay_stats(stack)["requests"]
    wait_until(lambda: bool(call(client)) and len(transitions(stack)) == 4, OPEN_S + 5, "reopen")
    assert transitions(stack) == ["closed", "open", "half_open", "open"]
    doc = stack.status()
    assert doc["events"][0]["reason"] == "probe failed (0 of 5 ok)"
    assert doc["backends"]["relay"]["circuit"] == "open"
    assert doc["routes"][0]["effective"] == {"legacy": 100, "relay": 0}  # SPEC §6
    assert relay_stats(stack)["requests"] - opened == 1  # the one failed probe


def test_without_auto_resume_the_circuit_holds_until_routes_yaml_changes(
    stack_factory: Any,
) -> None:
    """auto_resume: false keeps the relay out past open_s; editing its weight re-arms it."""
    stack: SafetyStack = stack_factory(routes(open_s=1, auto_resume=False))
    client = stack.client()
    trip(stack, client)
    stack.sim("relay", "/_sim/faults", {"error_rate": 0})  # healed, but nobody resumes it
    opened = relay_stats(stack)["requests"]
    until = time.monotonic() + 3  # three times open_s
    calls = 0
    while time.monotonic() < until or calls < 20:
        assert call(client) == ("legacy", None)
        calls += 1
    assert circuit(stack) == "open"
    assert relay_stats(stack)["requests"] == opened
    assert transitions(stack) == ["closed", "open"]

    stack.save(routes(40, 60, open_s=1, auto_resume=False))
    wait_until(lambda: circuit(stack) == "closed", 5, "re-armed by the edit")
    doc = stack.status()
    assert transitions(stack) == ["closed", "open", "closed"]
    assert doc["events"][0]["reason"] == "routes.yaml changed relay"
    assert doc["routes"][0]["effective"] == {"legacy": 40, "relay": 60}
    assert doc["backends"]["relay"]["errors"] == 0
    wait_until(lambda: call(client)[0] == "relay", 3, "traffic back on the relay")


def test_a_stream_cut_mid_way_raises_and_counts_against_the_relay(stack_factory: Any) -> None:
    """A relay stream cut after two chunks makes the openai client raise; no silent retry."""
    stack: SafetyStack = stack_factory(routes(0, 100))
    stack.sim("relay", "/_sim/faults", {"cut_after": 2})
    raw = stack.client().chat.completions.with_raw_response.create(
        model="gpt-4.1",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
    )
    assert raw.headers["x-canary-backend"] == "relay"
    stream = raw.parse()
    assert isinstance(stream, openai.Stream)
    got = []
    with pytest.raises(openai.APIError, match="failed mid-stream"):
        for chunk in stream:
            got.append(chunk)
    assert len(got) == 2
    wait_until(lambda: stack.status()["backends"]["relay"]["errors"] == 1, 3, "counted")
    assert relay_stats(stack)["cut"] == 1
    assert stack.sim("legacy", "/_sim/stats")["requests"] == 0  # bytes were sent: no fallback
    assert circuit(stack) == "closed"  # one error of one call is under min_requests


def test_a_stream_failing_before_its_first_chunk_falls_back_whole(stack_factory: Any) -> None:
    """A relay stream refused before any byte is answered in full by legacy, marked fallback."""
    stack: SafetyStack = stack_factory(routes(0, 100))
    stack.sim("relay", "/_sim/faults", {"error_rate": 1.0, "status_code": 503})
    raw = stack.client().chat.completions.with_raw_response.create(
        model="gpt-4.1",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
    )
    assert raw.headers["x-canary-backend"] == "legacy"
    assert raw.headers["x-canary-fallback"] == "relay"
    stream = raw.parse()
    assert isinstance(stream, openai.Stream)
    with stream:
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from legacy! This is a simulated reply."
    assert chunks[-1].choices[0].finish_reason == "stop"
    wait_until(lambda: stack.status()["backends"]["relay"]["errors"] == 1, 3, "counted")
    assert relay_stats(stack)["errors_injected"] == 1


def test_a_4xx_from_both_backends_passes_through_and_counts_nothing(
    stack_factory: Any,
) -> None:
    """A 400 from the relay is made once more on legacy; legacy refuses too, so the caller
    gets legacy's 400, no backend's error count moves and no circuit trips (SPEC §4)."""
    stack: SafetyStack = stack_factory(routes(0, 100))
    for which in ("relay", "legacy"):
        stack.sim(which, "/_sim/faults", {"error_rate": 1.0, "status_code": 400})
    client = stack.client()
    for _ in range(50):  # more than min_requests, all "failed"
        with pytest.raises(openai.BadRequestError) as info:
            call(client)
        assert info.value.response.headers["x-canary-backend"] == "legacy"
        assert info.value.response.headers["x-canary-fallback"] == "relay"
        assert "Simulated error 400" in info.value.message
    wait_until(lambda: stack.status()["backends"]["relay"]["requests"] == 50, 3, "counted")
    doc = stack.status()
    assert doc["backends"]["relay"]["errors"] == doc["backends"]["legacy"]["errors"] == 0
    assert doc["backends"]["relay"]["circuit"] == "closed"
    assert doc["events"] == []
    assert stack.sim("legacy", "/_sim/stats")["requests"] == 50  # each made once more there


@pytest.mark.parametrize(
    ("status", "words"),
    [
        pytest.param(401, "key refused (401)", id="401-key-refused"),
        pytest.param(402, "credit spent (402)", id="402-credit-spent"),
        pytest.param(403, "account barred (403)", id="403-account-barred"),
        pytest.param(404, "refused what the baseline served (4xx)", id="404-model-unknown"),
    ],
)
def test_a_relay_that_refuses_its_key_or_credit_is_rolled_back(
    stack_factory: Any, status: int, words: str
) -> None:
    """At 50% weight with fallback, a relay answering 401/402/403 (or 404 to what legacy
    serves) costs the callers nothing: its circuit opens, it gets no call while open, and
    the verdict says why in words."""
    stack: SafetyStack = stack_factory(routes(open_s=30))
    stack.sim("relay", "/_sim/faults", {"error_rate": 1.0, "status_code": status})
    client = stack.client()
    calls = fallbacks = 0
    while circuit(stack) != "open":
        assert calls < 400, "the relay circuit did not open"
        backend, fallback = call(client)  # raises on any client-visible failure
        calls += 1
        assert backend == "legacy"
        fallbacks += fallback == "relay"
    at_open = relay_stats(stack)["requests"]
    for _ in range(40):
        assert call(client) == ("legacy", None)
    doc = stack.status()
    print(
        f"\n{status}: {calls} calls, {fallbacks} fell back, 0 client failures; "
        f"relay calls while open: {relay_stats(stack)['requests'] - at_open}; "
        f"reason: {doc['migration']['reason']!r}"
    )
    assert relay_stats(stack)["requests"] == at_open  # no relay call while open
    assert at_open == fallbacks >= 40  # each refused once, never retried there
    assert doc["backends"]["relay"]["circuit"] == "open"
    assert doc["migration"]["ready_for_full_migration"] is False
    reason = doc["migration"]["reason"]
    assert reason.startswith("relay: circuit open since ")
    assert reason.endswith(f": {words} on {at_open} of {at_open} calls")
    metrics = httpx.get(f"{stack.url}/metrics").text
    kind = {402: "credit_spent", 404: "rejected"}.get(status, str(status))  # SPEC §11: any 402
    assert f'canary_upstream_failures_total{{backend="relay",kind="{kind}"}} {at_open}.0' in metrics
