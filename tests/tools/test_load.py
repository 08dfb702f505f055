"""``canary load``: the open-loop scheduler on a fake clock, the figures it reports, and the
verb end to end against a real router in front of two real simulators."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from canary.tools.cli import main
from canary.tools.load import LoadOptions, Outcome, run_load
from canary.tools.tally import format_result, peak_per_second, percentile
from tests.helpers import canary, free_port, run_process

KEY = "ck-load-SECRET-555555"


class FakeTime:
    """A clock that moves only when the scheduler sleeps or a fake server works.

    ``sleep`` first lets every ready task run (they may move the clock), then lands on the
    time the sleeper asked for, so it never oversleeps.
    """

    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        target = self.now + seconds
        for _ in range(5):
            await asyncio.sleep(0)
        self.now = max(self.now, target)


def sse(*events: dict[str, Any], done: bool = True) -> bytes:
    lines = [f"data: {json.dumps(e)}\n\n" for e in events]
    return ("".join(lines) + ("data: [DONE]\n\n" if done else "")).encode()


Handler = Callable[[httpx.Request], Any]


async def load(
    handler: Handler, fake: FakeTime | None = None, outcomes: list[Outcome] | None = None, **kw: Any
) -> dict[str, Any]:
    fake = fake or FakeTime()
    opts = LoadOptions(**{"url": "http://router.test", "qps": 10, "duration": 1, **kw})
    return await run_load(
        opts,
        transport=httpx.MockTransport(handler),
        clock=fake.clock,
        sleep=fake.sleep,
        on_result=None if outcomes is None else outcomes.append,
    )


def answer(backend: str = "legacy", status: int = 200, **headers: str) -> httpx.Response:
    body = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}}
    return httpx.Response(status, json=body, headers={"x-canary-backend": backend, **headers})


# --- the scheduler ----------------------------------------------------------------------


async def test_requests_leave_on_a_schedule_computed_from_t0() -> None:
    """Request i starts at t0 + i/qps even though each answer moves the clock."""
    fake, outcomes = FakeTime(), []

    def handler(request: httpx.Request) -> httpx.Response:
        fake.now += 0.03  # the server works 30 ms on each call
        return answer()

    result = await load(handler, fake, outcomes, qps=20, duration=1)
    starts = sorted(o.started - 1000.0 for o in outcomes)
    assert starts == pytest.approx([i / 20 for i in range(20)])
    assert all(o.started == o.scheduled for o in outcomes)
    assert result["sent"] == result["completed"] == result["ok"] == 20
    assert result["latency_ms"]["max"] == pytest.approx(30.0)
    assert result["achieved_qps"] == pytest.approx(20.0)


async def test_latency_counts_from_the_scheduled_time_when_the_server_queues() -> None:
    """A server that takes 1 s per call, one at a time, shows its queue in the latency."""
    fake, outcomes = FakeTime(), []

    def handler(request: httpx.Request) -> httpx.Response:
        fake.now += 1.0
        return answer()

    result = await load(handler, fake, outcomes, qps=10, duration=1, concurrency=1)
    assert result["completed"] == 10
    # the 10th call was due at 0.9 s and answered at 10 s: 9.1 s, not the 1 s it took
    assert result["latency_ms"]["max"] == pytest.approx(9100.0)
    assert result["latency_ms"]["p50"] == pytest.approx(4600.0)
    assert result["send_lag_ms"]["max"] == pytest.approx(8100.0)
    assert max(o.finished - o.started for o in outcomes) == pytest.approx(1.0)


async def test_what_is_left_after_the_drain_is_cancelled_and_counted() -> None:
    """Answers that never come are cancelled after the drain and reported, not lost."""
    never = asyncio.Event()
    outcomes: list[Outcome] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        await never.wait()
        raise AssertionError("unreachable")

    result = await load(handler, None, outcomes, qps=5, duration=1, drain_s=0)
    assert result["sent"] == 5 and result["completed"] == 0
    assert result["errors"] == {"cancelled": 5}
    assert result["error_rate"] == 1.0
    assert [o.error for o in outcomes] == ["cancelled"] * 5


async def test_concurrency_caps_requests_in_flight() -> None:
    """Past the cap, a due request waits for a slot; the server never sees more at once."""
    never, calls = asyncio.Event(), []

    async def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        await never.wait()
        raise AssertionError("unreachable")

    result = await load(handler, qps=20, duration=1, concurrency=3, drain_s=0)
    assert len(calls) == 3
    assert result["sent"] == 20 and result["errors"] == {"cancelled": 20}


async def test_a_stalled_server_cannot_grow_the_backlog_without_bound() -> None:
    """Past max_backlog requests waiting for a slot, a request due is not sent: "backlog"."""
    never = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        await never.wait()
        raise AssertionError("unreachable")

    result = await load(handler, qps=50, duration=1, concurrency=2, max_backlog=10, drain_s=0)
    assert result["sent"] == 50
    assert result["errors"] == {"cancelled": 12, "backlog": 38}


async def test_stop_ends_the_schedule_early() -> None:
    """Setting ``stop`` sends nothing more; what was sent still answers; rates use the time run."""
    stop, fake, answers = asyncio.Event(), FakeTime(), []

    def handler(request: httpx.Request) -> httpx.Response:
        fake.now += 0.01
        return answer()

    def on_result(o: Outcome) -> None:
        answers.append(o)
        if len(answers) == 5:
            stop.set()

    opts = LoadOptions("http://router.test", qps=10, duration=10)
    result = await run_load(
        opts,
        transport=httpx.MockTransport(handler),
        clock=fake.clock,
        sleep=fake.sleep,
        on_result=on_result,
        stop=stop,
    )
    assert result["sent"] == result["completed"] == 5
    assert result["stopped_early"] is True
    assert result["elapsed_s"] == pytest.approx(0.5)  # seen when the wait for the sixth ended
    assert result["achieved_qps"] == pytest.approx(10)


async def test_status_errors_and_headers_are_counted() -> None:
    """429s, timeouts, connect errors, backend shares and fallbacks each land in their count."""
    calls = iter(range(100))

    def handler(request: httpx.Request) -> httpx.Response:
        i = next(calls)
        if i == 0:
            raise httpx.ConnectError("refused", request=request)
        if i == 1:
            raise httpx.ReadTimeout("slow", request=request)
        if i in (2, 3):
            error = {"error": {"message": "slow down", "type": "rate_limit", "code": None}}
            return httpx.Response(429, json=error, headers={"x-canary-backend": "legacy"})
        if i == 4:
            return answer("legacy", **{"x-canary-fallback": "relay"})
        return answer("relay" if i % 2 else "legacy")

    result = await load(handler, qps=10, duration=2)
    assert result["sent"] == 20
    assert result["status"] == {"200": 16, "429": 2}
    assert result["errors"] == {"connect": 1, "timeout": 1}
    assert result["completed"] == 18 and result["ok"] == 16
    assert result["error_rate"] == pytest.approx(4 / 20)
    assert result["backends"] == {
        "legacy": {"responses": 10, "percent": pytest.approx(100 * 10 / 18, abs=0.01)},
        "relay": {"responses": 8, "percent": pytest.approx(100 * 8 / 18, abs=0.01)},
    }
    assert result["fallbacks"] == {"relay": 1}
    assert result["tokens"] == {"input": 3 * 16, "output": 5 * 16}
    assert result["unmetered"] == 0  # a 429 carries no usage, and is not an answer to meter


async def test_streams_are_read_whole_with_usage_and_first_byte() -> None:
    """--stream asks for the usage chunk, reads to [DONE], and records time to first byte."""
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        chunks = sse(
            {"choices": [{"delta": {"content": "hi"}}], "usage": None},
            {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 7}},
            done=len(bodies) != 3,  # the third stream is cut before [DONE]
        )
        return httpx.Response(200, stream=httpx.ByteStream(chunks))

    result = await load(handler, qps=5, duration=1, stream=True, model="m-1")
    assert bodies[0]["stream"] is True and bodies[0]["model"] == "m-1"
    assert bodies[0]["stream_options"] == {"include_usage": True}
    assert result["completed"] == 4 and result["errors"] == {"cut": 1}
    assert result["tokens"] == {"input": 2 * 5, "output": 7 * 5}
    assert result["ttfb_ms"] is not None and result["ttfb_ms"]["p50"] is not None


async def test_answers_without_usage_are_unmetered_not_zero() -> None:
    """An answer that says nothing about tokens is counted as unmetered."""
    result = await load(lambda r: httpx.Response(200, json={"choices": []}), qps=3, duration=1)
    assert result["unmetered"] == 3 and result["tokens"] == {"input": 0, "output": 0}


async def test_the_client_key_is_sent_and_never_reported() -> None:
    """--api-key goes out as Bearer; it appears in no figure and no repr."""
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        assert request.url == "http://router.test/v1/chat/completions"
        return answer()

    result = await load(handler, qps=2, duration=1, api_key=KEY, url="http://router.test/v1/")
    assert seen == [f"Bearer {KEY}"] * 2
    assert KEY not in json.dumps(result) + format_result(result)
    assert KEY not in repr(LoadOptions("http://x", 1, 1, api_key=KEY))


def test_json_output_has_a_stable_shape() -> None:
    """Scripts rely on these keys."""
    result = asyncio.run(load(lambda r: answer(), qps=4, duration=1))
    assert set(result) == {
        "target", "model", "stream", "qps", "duration_s", "concurrency", "stopped_early",
        "sent", "completed",
        "ok", "elapsed_s", "achieved_qps", "peak_qps", "peak_sent_qps", "latency_ms",
        "ttfb_ms", "send_lag_ms", "status", "errors", "error_rate", "backends", "fallbacks",
        "tokens", "unmetered",
    }  # fmt: skip
    assert set(result["latency_ms"]) == {"p50", "p95", "p99", "max"}
    assert result["ttfb_ms"] is None  # only for --stream
    json.dumps(result)


def test_summary_text_names_every_figure() -> None:
    """The human summary carries QPS, percentiles, status, errors, shares, tokens."""
    result = asyncio.run(load(lambda r: answer("relay", **{"x-canary-fallback": "legacy"})))
    text = format_result(result)
    for expected in (
        "10 req/s for 1 s",
        "sent 10  completed 10  ok 10",
        "peak 10 completed",
        "latency ms from the scheduled send: p50",
        "status: 200: 10",
        "errors: none",
        "error rate: 0.00%",
        "relay 100.0% (10)",
        "legacy: 10",
        "tokens (usage): 30 input, 50 output",
    ):
        assert expected in text, expected


# --- figures ------------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    """The smallest value with at least p% of the values at or below it."""
    values = [float(v) for v in range(100, 0, -1)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([1.0, 2.0, 3.0], 95) == 3
    assert percentile([1.0, 2.0], 50) == 1
    assert percentile([7.0], 1) == 7
    assert percentile([], 50) is None


def test_peak_is_the_busiest_sliding_second() -> None:
    """Windows slide: three events 0.9 s apart across a second boundary are one peak."""
    assert peak_per_second([0.0, 0.6, 1.2, 1.5, 5.0]) == 3
    assert peak_per_second([0.0, 1.0, 2.0, 3.0]) == 1
    assert peak_per_second([]) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["http://127.0.0.1:9", "--qps", "0", "--duration", "1"], "--qps must be > 0"),
        (["http://127.0.0.1:9", "--qps", "5", "--duration", "-1"], "--duration must be > 0"),
        (["ftp://x", "--qps", "5", "--duration", "1"], "URL must be http(s)://host"),
        (["http://x", "--qps", "5", "--duration", "1", "--concurrency", "0"], "--concurrency"),
        (["http://x", "--qps", "1e7", "--duration", "10"], "at most 10,000,000 requests"),
        (["http://x", "--qps", "nan", "--duration", "1"], "--qps must be > 0"),
        (["http://x", "--qps", "1", "--duration", "1", "--timeout", "inf"], "--timeout must"),
        (["http://x", "--qps", "1", "--duration", "1", "--drain", "-1"], "--drain must"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing is sent when the arguments cannot make a run."""
    assert main(["load", *argv]) == 2
    assert message in capsys.readouterr().err


def test_target_joins_base_and_path_once() -> None:
    """The router's base is accepted with or without /v1."""
    for url in ("http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/chat/completions"):
        assert LoadOptions(url, 1, 1).target == "http://h:1/v1/chat/completions"
    assert LoadOptions("http://h:1/v1", 1, 1, path="/status").target == "http://h:1/v1/status"


# --- end to end -----------------------------------------------------------------------------

ROUTES = """
backends:
  legacy: {{base_url: "{legacy}/v1", timeout_s: 10}}
  relay: {{base_url: "{relay}/v1", timeout_s: 10}}
routes:
  - name: chat
    weights: {{legacy: 70, relay: 30}}
pricing:
  legacy: {{gpt-4.1: {{input: 8.0, output: 8.0}}}}
  relay: {{gpt-4.1: {{input: 1.1, output: 1.1}}}}
"""


@pytest.fixture(scope="module")
def router(sims: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``canary serve`` on the module's two simulators, split 70/30."""
    legacy, relay = sims
    config = tmp_path_factory.mktemp("load") / "routes.yaml"
    config.write_text(ROUTES.format(legacy=legacy, relay=relay))
    port = free_port()
    args = [sys.executable, "-m", "canary", "serve", "-c", str(config), "--port", str(port)]
    with run_process([*args, "--no-access-log"], f"http://127.0.0.1:{port}/readyz"):
        yield f"http://127.0.0.1:{port}"


BODY = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hello"}]}


def totals(router: str) -> dict[str, Any]:
    """Per backend: lifetime requests and, when the router meters them, tokens; and cost."""
    doc = httpx.get(f"{router}/status").json()
    out: dict[str, Any] = {}
    for name, b in doc["backends"].items():
        tokens = b.get("tokens")
        out[name] = (b["total_requests"], tokens and (tokens["input"], tokens["output"]))
    out["cost"] = doc["cost"]["total_usd"] if "cost" in doc else None  # main adds it
    return out


@pytest.mark.e2e
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_load_through_a_real_router(router: str, sims: tuple[str, str], stream: bool) -> None:
    """50 req/s for 2 s: all answered, split near 70/30, and the simulators saw exactly that."""
    for sim in sims:
        httpx.post(f"{sim}/_sim/reset").raise_for_status()
    before = totals(router)
    extra = ["--stream"] if stream else []
    done = canary("load", router, "--qps", "50", "--duration", "2", "--json", *extra)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no progress bar with --json
    result = json.loads(done.stdout)
    after = totals(router)
    assert 90 <= result["sent"] <= 110
    assert result["status"] == {"200": result["sent"]} and result["errors"] == {}
    assert result["completed"] == result["ok"] == result["sent"]
    assert 50 <= result["backends"]["legacy"]["percent"] <= 90  # 70% of 100 calls: ±4.4 sigma
    if stream:
        assert result["ttfb_ms"]["p50"] <= result["latency_ms"]["p50"]
    spent, answered, used = 0.0, 0, [0, 0]
    for name, sim, price in (("legacy", sims[0], 8.0), ("relay", sims[1], 1.1)):
        seen = httpx.get(f"{sim}/_sim/stats").json()
        tokens = [seen["tokens"]["prompt"], seen["tokens"]["completion"]]
        assert seen["requests"] == result["backends"][name]["responses"]
        assert after[name][0] - before[name][0] == seen["requests"]
        if after[name][1] is not None:  # main's token accounting, once merged
            (a_in, a_out), (b_in, b_out) = after[name][1], before[name][1]
            assert [a_in - b_in, a_out - b_out] == tokens
        answered += seen["requests"]
        used = [used[0] + tokens[0], used[1] + tokens[1]]
        spent += sum(tokens) * price / 1e6
    assert answered == result["completed"]
    assert [result["tokens"]["input"], result["tokens"]["output"]] == used
    assert result["unmetered"] == 0
    if after["cost"] is not None:
        # /status may round; a wrong price (8 vs 1.1 per 1M) is far outside 2%
        assert after["cost"] - before["cost"] == pytest.approx(spent, rel=0.02)


@pytest.mark.e2e
def test_status_and_report_read_the_live_router(router: str) -> None:
    """After traffic, status and report name the backends; report needs the cost section."""
    for _ in range(30):  # both backends answer some: all 30 on legacy is 0.7**30, 2e-5
        httpx.post(f"{router}/v1/chat/completions", json=BODY).raise_for_status()
    shown = canary("status", "--url", router)
    assert shown.returncode == 0, shown.stderr
    for word in ("legacy", "relay", "chat", "closed", "migration: not ready"):
        assert word in shown.stdout, word
    report = canary("report", "--url", router)
    if "cost" in httpx.get(f"{router}/status").json():
        assert report.returncode == 0, report.stderr
        for word in ("legacy", "relay", "gpt-4.1", "100% canary"):
            assert word in report.stdout, word
        rows = json.loads(canary("report", "--url", router, "--json").stdout)["rows"]
        assert {r["backend"] for r in rows} == {"legacy", "relay"}
    else:  # a router from before cost accounting
        assert report.returncode == 1 and "no cost section" in report.stderr
