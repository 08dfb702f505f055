"""End to end, a progressive rollout (SPEC §10) over real sockets: ``canary serve`` in front
of two ``canary simulate`` processes, the official openai client as the caller. Steps are
short (``step_s: 1``) and need few calls, so a whole rollout takes seconds."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest
import redis

from tests.helpers import Stack, canary

pytestmark = pytest.mark.e2e

TOKEN = "e2e-admin-token"
ROUTES = """
backends:
  legacy: {{base_url: "${{LEGACY_BASE_URL}}", timeout_s: 10}}
  relay: {{base_url: "${{RELAY_BASE_URL}}", timeout_s: 10}}
routes:
  - name: chat
    weights: {{legacy: 100, relay: 0}}
    fallback: true
rollback: {{window_s: 30, min_requests: 40, max_error_rate: 0.2}}
retry: {{max_attempts: 1}}
auth: {{admin_token: "${{CANARY_ADMIN_TOKEN:-}}"}}
rollout:
  backend: relay
  steps: [10, 50, 100]
  step_s: 1
  step_min_requests: 20  # p95 of 20 leaves out one cold-connection call
  gates: {gates}
  # The simulators answer in a few ms: on a loaded 2-core host jitter alone can reach 1.7x
  # over a step of a few calls. A slow relay (150 ms) is still far over 3x.
  analysis: {{max_latency_ratio_p95: 3}}
"""


@dataclass
class Load:
    """Calls from four threads until stopped; every failure the client saw is kept."""

    clients: list[openai.OpenAI]
    calls: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, n: int) -> None:
        client = self.clients[n % len(self.clients)]
        while not self.stop.is_set():
            try:
                client.chat.completions.create(
                    model="gpt-4.1", messages=[{"role": "user", "content": "hi"}]
                )
            except openai.APIError as exc:
                self.failures.append(repr(exc))
            self.calls += 1
            time.sleep(0.01)


@contextmanager
def load(*stacks: Stack) -> Iterator[Load]:
    run = Load([s.client() for s in stacks])
    threads = [threading.Thread(target=run.run, args=(n,), daemon=True) for n in range(4)]
    for t in threads:
        t.start()
    try:
        yield run
    finally:
        run.stop.set()
        for t in threads:
            t.join(timeout=15)


def wait_state(stack: Stack, states: set[str], timeout: float = 45.0) -> dict[str, Any]:
    """Poll /status until the rollout is in one of ``states`` (bounded)."""
    deadline = time.monotonic() + timeout
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        doc = stack.status()
        if doc.get("rollout") and doc["rollout"]["state"] in states:
            return doc
        time.sleep(0.1)
    raise AssertionError(f"rollout never reached {states}: {doc.get('rollout')}")


def start(stack_factory: Any, gates: str = "[]", redis_url: str = "") -> Stack:
    text = ROUTES.format(gates=gates)
    if redis_url:
        text += f"state: {{redis_url: {redis_url}}}\n"
    stack: Stack = stack_factory(text, env={"CANARY_ADMIN_TOKEN": TOKEN})
    return stack


def test_a_healthy_relay_climbs_to_promoted_with_no_client_failure(stack_factory: Any) -> None:
    """10% -> 50% -> 100% -> promoted, every step applied, no call failed."""
    stack = start(stack_factory)
    began = time.monotonic()
    with load(stack) as run:
        doc = wait_state(stack, {"promoted", "failed"})
    took = time.monotonic() - began
    print(f"healthy rollout promoted in {took:.1f} s over {run.calls} calls")
    assert doc["rollout"]["state"] == "promoted", doc["rollout"]
    assert run.failures == []
    assert doc["routes"][0]["effective"] == {"legacy": 0, "relay": 100}
    assert doc["routes"][0]["configured"] == {"legacy": 100, "relay": 0}
    out = canary("rollout", "status", "--url", stack.url)
    assert out.returncode == 0 and "promoted" in out.stdout
    assert "chat: weights: {legacy: 0, relay: 100}" in out.stdout


def test_a_failing_relay_fails_the_rollout_and_goes_to_zero(stack_factory: Any) -> None:
    """Half the relay's calls fail: the rollout fails; fallback keeps every client whole."""
    stack = start(stack_factory)
    stack.sim("relay", "/_sim/faults", {"error_rate": 0.5})
    with load(stack) as run:
        doc = wait_state(stack, {"failed", "promoted"})
        relay_calls = stack.sim("relay", "/_sim/stats")["requests"]
        time.sleep(1.0)
        after = stack.sim("relay", "/_sim/stats")["requests"]
    reason = doc["rollout"]["history"][0]["reason"]
    print(f"failing relay: {relay_calls} relay calls before rollback ({reason})")
    rollout = doc["rollout"]
    assert rollout["state"] == "failed" and rollout["percent"] == 0
    assert "error rate" in rollout["history"][0]["reason"]
    assert doc["routes"][0]["effective"]["relay"] == 0
    assert after == relay_calls  # nothing more reaches it
    assert run.failures == []
    assert canary("rollout", "status", "--url", stack.url).returncode == 2


def test_a_slow_relay_fails_on_latency(stack_factory: Any) -> None:
    stack = start(stack_factory)
    stack.sim("relay", "/_sim/faults", {"latency_ms": 150})
    with load(stack) as run:
        doc = wait_state(stack, {"failed", "promoted"})
    rollout = doc["rollout"]
    assert rollout["state"] == "failed", rollout
    assert "latency ratio p95" in rollout["history"][0]["reason"]
    assert run.failures == []


def test_a_gate_waits_for_promote_which_needs_the_admin_token(
    stack_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CANARY_ADMIN_TOKEN", raising=False)
    stack = start(stack_factory, gates="[50]")
    with load(stack):
        doc = wait_state(stack, {"awaiting_promotion", "failed"})
        assert doc["rollout"]["state"] == "awaiting_promotion"
        assert doc["rollout"]["percent"] == 10
        time.sleep(1.5)  # it waits, however long
        assert stack.status()["rollout"]["state"] == "awaiting_promotion"
        refused = canary("rollout", "promote", "--url", stack.url)
        assert refused.returncode == 1 and "admin token" in refused.stderr
        wrong = canary("rollout", "promote", "--url", stack.url, "--token", "nope")
        assert wrong.returncode == 1 and "401" in wrong.stderr
        ok = canary("rollout", "promote", "--url", stack.url, "--token", TOKEN)
        assert ok.returncode == 0 and "-> progressing at 50%" in ok.stdout, ok.stderr
        assert TOKEN not in ok.stdout + ok.stderr
        doc = wait_state(stack, {"promoted", "failed"})
    assert doc["rollout"]["state"] == "promoted", doc["rollout"]["history"]


def same_step(stacks: list[Stack], state: str, percent: float, timeout: float = 10.0) -> None:
    """Every replica shows ``state`` at ``percent`` (bounded)."""
    deadline = time.monotonic() + timeout
    seen: list[Any] = []
    while time.monotonic() < deadline:
        seen = [
            (r["state"], r["step"], r["percent"]) for r in (s.status()["rollout"] for s in stacks)
        ]
        if all(x[0] == state and x[2] == percent for x in seen) and len(set(seen)) == 1:
            return
        time.sleep(0.05)
    why = [s.status()["rollout"]["history"][:1] for s in stacks]
    raise AssertionError(f"replicas never agreed on {state} at {percent}%: {seen} {why}")


def test_two_replicas_on_one_redis_share_one_rollout(stack_factory: Any, redis_server: Any) -> None:
    """One decides, both follow; a promote on the follower applies; the lease outlives a kill."""
    redis_url = redis_server.url.rsplit("/", 1)[0] + "/13"  # a database of its own
    with redis.Redis.from_url(redis_url) as r:
        r.flushdb()  # no state left by an earlier run: it would be resumed
    a = start(stack_factory, gates="[50]", redis_url=redis_url)
    b = start(stack_factory, gates="[50]", redis_url=redis_url)
    with load(a, b):
        same_step([a, b], "awaiting_promotion", 10, timeout=45)
        deciders = [s for s in (a, b) if s.status()["rollout"]["decides"]]
        assert len(deciders) == 1, [s.status()["rollout"]["saved"] for s in (a, b)]
        follower = b if deciders[0] is a else a
        ok = canary("rollout", "promote", "--url", follower.url, "--token", TOKEN)
        assert ok.returncode == 0, (ok.stderr, follower.status()["rollout"]["history"])
        began = time.monotonic()
        same_step([a, b], "progressing", 50, timeout=5)
        followed_in = time.monotonic() - began
        deciders[0].router.kill()  # dies holding the lease
        deciders[0].router.wait()
        wait_decides = time.monotonic() + 10
        while not follower.status()["rollout"]["decides"]:
            assert time.monotonic() < wait_decides, "the lease never passed on"
            time.sleep(0.1)
        doc = wait_state(follower, {"promoted", "failed"})
    print(f"replicas: promote seen by both in {followed_in:.2f} s")
    assert followed_in < 1.5
    assert doc["rollout"]["state"] == "promoted", doc["rollout"]["history"]


def test_the_rollout_demo_tells_its_story() -> None:
    """``canary demo --scenario rollout``: promoted, then a broken relay rolled back."""
    out = canary("demo", "--scenario", "rollout", timeout=150)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "rollout promoted" in out.stdout and "-- rolled back:" in out.stdout
    assert "client failures 0" in out.stdout.splitlines()[-2]


def test_the_workers_of_one_host_share_one_rollout_through_its_file(stack_factory: Any) -> None:
    """``serve --workers 2`` without Redis: a promote that lands on either worker moves both."""
    stack: Stack = stack_factory(
        ROUTES.format(gates="[10]"), env={"CANARY_ADMIN_TOKEN": TOKEN}, args=["--workers", "2"]
    )
    wait_state(stack, {"awaiting_promotion"})
    ok = canary("rollout", "promote", "--url", stack.url, "--token", TOKEN)
    assert ok.returncode == 0, ok.stderr
    deadline = time.monotonic() + 10
    while True:  # until 40 answers in a row, from both workers, show the promote
        docs = [stack.status() for _ in range(40)]
        seen = {(d["rollout"]["state"], d["rollout"]["percent"]) for d in docs}
        if seen == {("progressing", 10)} or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len({d["workers"]["this"] for d in docs}) == 2  # both workers answered
    assert seen == {("progressing", 10)}
    assert (stack.config.parent / f".{stack.config.name}.rollout.json").exists()
