"""End to end over real sockets: ``canary serve`` and two ``canary simulate`` processes,
driven by the official openai client (and raw HTTP for the error cases)."""

from __future__ import annotations

import signal
from typing import Any

import httpx
import openai
import pytest

from canary.tools.simulate.stats import fingerprint
from tests.helpers import (
    ADMIN_TOKEN,
    CLIENT_KEY,
    LEGACY_KEY,
    RELAY_KEY,
    SECRETS,
    Stack,
    free_port,
    stack_routes,
    wait_until,
)

pytestmark = pytest.mark.e2e


def test_openai_sync_client_gets_an_answer_through_canary(stack: Stack) -> None:
    """A plain chat completion answers from the simulator, with canary's headers."""
    raw = stack.client().chat.completions.with_raw_response.create(
        model="gpt-4.1", messages=[{"role": "user", "content": "hello there"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from legacy! This is a simulated reply."
    assert raw.headers["x-canary-backend"] == "legacy"
    assert raw.headers["x-canary-route"] == "chat"
    assert completion.usage is not None and completion.usage.prompt_tokens == 2


async def test_openai_async_client_streams_through_canary(stack: Stack) -> None:
    """An async streamed completion arrives as many chunks, the usage chunk last."""
    async with openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key="x", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="gpt-4.1",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from legacy! This is a simulated reply."
    assert len(chunks) > 5
    assert chunks[-1].usage is not None and chunks[-1].choices == []


def test_embeddings_and_models_are_forwarded(stack: Stack) -> None:
    """Other /v1 endpoints go through the default route."""
    client = stack.client()
    assert len(client.embeddings.create(model="text-embedding-3-small", input="hi").data) == 1
    assert "gpt-4.1" in [m.id for m in client.models.list()]


def test_stream_is_relayed_before_the_upstream_finishes(stack: Stack) -> None:
    """The first chunk reaches the client while the simulator is still sending (no buffering)."""
    stack.sim("legacy", "/_sim/faults", {"chunk_delay_ms": 300})
    stream = stack.client().chat.completions.create(
        model="gpt-4.1", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with stream:
        first = next(iter(stream))
        assert first.choices[0].delta.role == "assistant"
        assert stack.sim("legacy", "/_sim/stats")["in_flight"] == 1


def test_client_disconnect_mid_stream_releases_the_upstream(stack: Stack) -> None:
    """Closing a stream early closes the router's upstream call at once, not at stream end."""
    stack.sim("legacy", "/_sim/faults", {"chunk_delay_ms": 1000})  # ~8 s of stream
    body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with (
        httpx.Client() as http,
        http.stream("POST", f"{stack.url}/v1/chat/completions", json=body) as r,
    ):
        chunks = r.iter_raw()  # keep a reference: a dropped generator closes the response
        assert next(chunks).startswith(b"data: ")
        assert stack.sim("legacy", "/_sim/stats")["in_flight"] == 1
    wait_until(lambda: stack.sim("legacy", "/_sim/stats")["in_flight"] == 0, 3, "upstream released")
    wait_until(lambda: stack.status()["backends"]["legacy"]["in_flight"] == 0, 3, "router idle")
    assert stack.status()["backends"]["legacy"]["errors"] == 0  # the client left: not an error


def test_a_hanging_upstream_is_released_when_the_client_gives_up(stack: Stack) -> None:
    """A client timeout while the upstream hangs frees the upstream connection."""
    stack.sim("legacy", "/_sim/faults", {"hang": True})
    with pytest.raises(openai.APITimeoutError):
        stack.client(timeout=0.5).models.list()
    wait_until(lambda: stack.sim("legacy", "/_sim/stats")["in_flight"] == 0, 3, "upstream released")


def test_stream_cut_mid_way_makes_the_openai_client_raise(stack: Stack) -> None:
    """A cut upstream stream ends with an error event, so the client raises, not truncates."""
    stack.sim("legacy", "/_sim/faults", {"cut_after": 2})
    stream = stack.client().chat.completions.create(
        model="gpt-4.1", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    got = []
    with pytest.raises(openai.APIError, match="failed mid-stream"):
        for chunk in stream:
            got.append(chunk)
    assert len(got) == 2
    wait_until(lambda: stack.status()["backends"]["legacy"]["errors"] == 1, 3, "counted")


def test_upstream_errors_pass_through_and_dead_upstream_is_502(stack_factory: Any) -> None:
    """A provider 503 reaches the client as is; an unreachable backend is canary's 502."""
    dead = free_port()
    s: Stack = stack_factory(
        stack_routes().replace("${LEGACY_BASE_URL}", f"http://127.0.0.1:{dead}/v1")
    )
    s.sim("relay", "/_sim/faults", {"error_rate": 1.0, "status_code": 503})
    with pytest.raises(openai.APIStatusError) as info:
        s.client().chat.completions.create(
            model="claude-3", messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.status_code == 502
    assert info.value.response.headers["x-canary-backend"] == "legacy"
    s.save(stack_routes(0, 100).replace("${LEGACY_BASE_URL}", f"http://127.0.0.1:{dead}/v1"))
    wait_until(lambda: s.status()["routes"][1]["configured"] == {"legacy": 0, "relay": 100}, 5)
    with pytest.raises(openai.InternalServerError) as info2:
        s.client().chat.completions.create(
            model="gpt-4.1", messages=[{"role": "user", "content": "x"}]
        )
    assert info2.value.status_code == 503
    assert "simulated" in str(info2.value.body).lower() or info2.value.body is not None


def test_router_refusals_over_raw_http(stack_factory: Any) -> None:
    """Bad key 401, oversized body 413, broken JSON 400, unknown route 404, all OpenAI-shaped."""
    s: Stack = stack_factory(
        stack_routes().replace("  - name: default\n    weights: {legacy: 100}\n", ""),
        env={"CANARY_API_KEYS": CLIENT_KEY},
    )
    ok = {"authorization": f"Bearer {CLIENT_KEY}"}
    with httpx.Client(base_url=s.url) as http:
        assert http.get("/v1/models").status_code == 401
        r = http.get("/v1/models", headers={"authorization": "Bearer nope"})
        assert (r.status_code, r.json()["error"]["code"]) == (401, "invalid_api_key")
        r = http.post("/v1/chat/completions", headers=ok, content=b"x" * 100_001)
        assert (r.status_code, r.json()["error"]["code"]) == (413, "request_too_large")
        r = http.post("/v1/chat/completions", headers=ok, content=b"{broken")
        assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_json")
        r = http.get("/v1/models", headers=ok)
        assert (r.status_code, r.json()["error"]["code"]) == (404, "no_route")
    with pytest.raises(openai.AuthenticationError):
        s.client().chat.completions.create(
            model="gpt-4.1", messages=[{"role": "user", "content": "x"}]
        )
    good = s.client(api_key=CLIENT_KEY)
    assert good.chat.completions.create(
        model="gpt-4.1", messages=[{"role": "user", "content": "x"}]
    ).choices


def test_weight_edit_applies_live_and_a_bad_edit_keeps_serving(stack: Stack) -> None:
    """Saving new weights moves traffic without a restart; a broken save is shown, not applied."""
    client = stack.client()

    def backend() -> str:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4.1", messages=[{"role": "user", "content": "x"}]
        )
        return str(raw.headers["x-canary-backend"])

    assert backend() == "legacy"
    stack.save(stack_routes(0, 100))
    wait_until(lambda: backend() == "relay", 5, "weights applied")
    version = stack.status()["config"]["version"]

    stack.save(
        stack_routes(0, 100).replace(
            "weights: {legacy: 0, relay: 100}", "weights: {legacy: 0, relay: -1}"
        )
    )
    wait_until(lambda: stack.status()["config"]["error"] is not None, 5, "error shown")
    doc = stack.status()
    assert "routes[1].weights.relay: must be >= 0" in doc["config"]["error"]
    assert doc["config"]["version"] == version
    assert all(backend() == "relay" for _ in range(5))
    assert httpx.get(f"{stack.url}/readyz").status_code == 200

    stack.save(stack_routes(100, 0))
    wait_until(lambda: stack.status()["config"]["error"] is None, 5, "error cleared")
    assert backend() == "legacy"


def test_sighup_and_admin_reload(stack_factory: Any) -> None:
    """Without the file watch, SIGHUP and POST /admin/reload apply a saved file."""
    s: Stack = stack_factory(args=["--no-watch"], env={"CANARY_ADMIN_TOKEN": ADMIN_TOKEN})
    s.save(stack_routes(0, 100))
    assert s.status()["routes"][1]["configured"] == {"legacy": 100, "relay": 0}
    s.router.send_signal(signal.SIGHUP)
    wait_until(lambda: s.status()["routes"][1]["configured"] == {"legacy": 0, "relay": 100}, 5)

    s.save(stack_routes(30, 70))
    assert httpx.post(f"{s.url}/admin/reload").status_code == 401
    r = httpx.post(f"{s.url}/admin/reload", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 200 and r.json()["changed"] is True
    assert s.status()["routes"][1]["configured"] == {"legacy": 30, "relay": 70}


def test_workers_share_the_port_and_all_reload(stack_factory: Any) -> None:
    """With --workers 2 every worker serves and applies an edit (and a forwarded SIGHUP)."""
    s: Stack = stack_factory(args=["--workers", "2", "--no-watch"])
    client = s.client()

    def backends(n: int = 30) -> set[str]:
        seen = set()
        for _ in range(n):
            with httpx.Client() as fresh:  # new connections spread over the workers
                r = fresh.post(
                    f"{s.url}/v1/chat/completions",
                    json={"model": "gpt-4.1", "messages": [{"role": "user", "content": "x"}]},
                )
            seen.add(r.headers["x-canary-backend"])
        return seen

    assert client.models.list().data
    assert backends() == {"legacy"}
    s.save(stack_routes(0, 100))
    s.router.send_signal(signal.SIGHUP)
    wait_until(lambda: backends(10) == {"relay"}, 10, "every worker reloaded")
    assert backends() == {"relay"}


def test_sticky_users_keep_their_backend_end_to_end(stack: Stack) -> None:
    """At 50/50 each user id keeps one backend across calls, and both backends are used."""
    stack.save(stack_routes(50, 50))
    wait_until(lambda: stack.status()["routes"][1]["configured"] == {"legacy": 50, "relay": 50}, 5)
    client = stack.client()
    per_user: dict[str, set[str]] = {}
    for user in [f"user-{i}" for i in range(20)]:
        for _ in range(3):
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4.1",
                messages=[{"role": "user", "content": "x"}],
                extra_headers={"x-user-id": user},
            )
            per_user.setdefault(user, set()).add(raw.headers["x-canary-backend"])
    assert all(len(b) == 1 for b in per_user.values())
    assert {b for bs in per_user.values() for b in bs} == {"legacy", "relay"}
    last = stack.sim("relay", "/_sim/stats")["last_request"]
    assert last["body"]["model"] == "relay-4.1"  # model_map applied on relay only


def test_no_key_appears_in_logs_status_or_errors(stack_factory: Any) -> None:
    """Upstream, client and admin keys reach the provider but no log, status or error body."""
    s: Stack = stack_factory(
        env={
            "LEGACY_API_KEY": LEGACY_KEY,
            "RELAY_API_KEY": RELAY_KEY,
            "CANARY_API_KEYS": CLIENT_KEY,
            "CANARY_ADMIN_TOKEN": ADMIN_TOKEN,
        },
        args=["--log-level", "debug"],
    )
    bodies = []
    good = s.client(api_key=CLIENT_KEY)
    good.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "x"}])
    assert s.sim("legacy", "/_sim/stats")["last_request"]["headers"]["authorization"] == (
        f"Bearer {fingerprint(LEGACY_KEY)}"
    )
    with httpx.Client(base_url=s.url) as http:
        bodies.append(
            http.get("/v1/models", headers={"authorization": f"Bearer {LEGACY_KEY}"}).text
        )
        bodies.append(http.post("/admin/reload", headers={"authorization": "Bearer wrong"}).text)
        s.sim("legacy", "/_sim/faults", {"error_rate": 1.0})
        bodies.append(
            http.get("/v1/models", headers={"authorization": f"Bearer {CLIENT_KEY}"}).text
        )
        s.save(stack_routes() + "bogus: 1\n")
        wait_until(lambda: s.status()["config"]["error"] is not None, 5)
        bodies.append(http.get("/status").text)
        bodies.append(
            http.post("/admin/reload", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}).text
        )
    everything = "\n".join([*bodies, s.output()])
    assert "config.rejected" in everything
    for secret in SECRETS:
        assert secret not in everything


def test_a_429_storm_is_absorbed_within_the_retry_budget(stack_factory: Any) -> None:
    """5% 429s with Retry-After at the provider: clients see none, retries stay in budget.

    Four tries per call: a call fails only if all four draw a 429 (p = 6e-6), so over 200
    calls a client-visible 429 has a chance near 0.1%, not the 10% of three tries at 10%.
    Twenty calls go first without faults: with none before it, the budget allows only its
    floor of 3 retries until 20 calls have been made, and four 429s among the first
    fifteen tries (a 0.5% chance) would spend it.
    """
    s: Stack = stack_factory(
        stack_routes() + "retry: {max_attempts: 4, backoff_s: 0.01, budget: 0.2}\n"
    )
    client = s.client()

    def call() -> None:
        client.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "x"}])

    for _ in range(20):
        call()
    s.sim("legacy", "/_sim/faults", {"rate_limit_rate": 0.05, "retry_after_s": 0.02})
    for _ in range(200):
        call()
    stats = s.sim("legacy", "/_sim/stats")
    print(
        f"\n429 storm: 220 client calls, {stats['requests']} provider calls, "
        f"{stats['rate_limited']} answered 429 by the provider"
    )
    assert stats["rate_limited"] > 0
    assert stats["requests"] <= 20 + 200 * 1.2 + 3  # the budget: at most 20% more, plus its floor
