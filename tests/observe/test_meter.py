"""Unit tests: usage scanning, the meter's counters, cost and ROI figures, and /metrics text."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from canary.config.loader import parse_config
from canary.observe.cost import backend_costs, canary_of, cost_section, projection_basis
from canary.observe.meter import MAX_MODELS, Meter, status_class
from canary.observe.metrics import render
from canary.proxy.usage import UsageScanner, readable_encodings
from tests.helpers import prometheus_samples, sample


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def scan(*chunks: bytes) -> tuple[int, int] | None:
    scanner = UsageScanner()
    for chunk in chunks:
        scanner.feed(chunk)
    return scanner.result()


CHAT = orjson.dumps(
    {
        "id": "x",
        "choices": [{"message": {"content": 'He said "usage": {"prompt_tokens": 999}'}}],
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": 7,
            "total_tokens": 19,
            "prompt_tokens_details": {"cached_tokens": 3},
        },
    }
)


def test_usage_of_a_json_body() -> None:
    """The usage object of a non-streamed answer gives (input, output); quoted text cannot."""
    assert scan(CHAT) == (12, 7)


def test_usage_split_across_chunks() -> None:
    """A usage object split by a chunk boundary anywhere is still read whole."""
    for cut in range(1, len(CHAT)):
        assert scan(CHAT[:cut], CHAT[cut:]) == (12, 7), cut


def test_usage_of_a_stream_is_the_last_usage_chunk() -> None:
    """Streams carry "usage": null on every chunk and the figures in the last data event."""
    chunks = [
        b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}\n\n',
        b'data: {"choices":[{"delta":{"content":"b"}}],"usage": null}\n\n',
        b'data: {"choices":[],"usage": {"prompt_tokens": 5, "completion_tokens": 2}}\n\n',
        b"data: [DONE]\n\n",
    ]
    assert scan(*chunks) == (5, 2)
    assert scan(*chunks[:2], chunks[3]) is None  # no include_usage: nothing to read


def test_usage_of_embeddings_and_the_responses_api() -> None:
    """Embeddings have input only; the Responses API names its fields input/output_tokens."""
    assert scan(b'{"data": [], "usage": {"prompt_tokens": 8, "total_tokens": 8}}') == (8, 0)
    event = b'event: response.completed\ndata: {"response": {"usage": {"input_tokens": 4, '
    assert scan(event, b'"output_tokens": 9, "total_tokens": 13}}}\n\n') == (4, 9)


def test_no_usage_in_an_unrelated_body() -> None:
    """A body without a usage object, or with a null one, reports nothing."""
    assert scan(b'{"object": "list", "data": []}') is None
    assert scan(b'{"usage": null, "x": {"prompt_tokens": 3}}') is None


def test_status_class() -> None:
    """Calls are grouped by status class; a transport failure (no status) is a 5xx."""
    assert [status_class(s) for s in (200, 204, 301, 404, 429, 503, 0)] == [
        "2xx",
        "2xx",
        "3xx",
        "4xx",
        "4xx",
        "5xx",
        "5xx",
    ]


def test_model_labels_are_bounded() -> None:
    """A client cannot grow the label set: past MAX_MODELS names, models count as other."""
    meter = Meter(FakeClock())
    for i in range(MAX_MODELS + 20):
        meter.usage("chat", "legacy", f"m{i}", (1, 1), None)
    meter.usage("chat", "legacy", None, (1, 1), None)
    models = {m for (_, _, m) in meter.tokens}
    assert len(models) == MAX_MODELS + 2
    assert {"other", "unknown"} <= models
    assert meter.tokens[("chat", "legacy", "other")][0] == 20


ROUTES = """
backends:
  legacy: {base_url: "http://127.0.0.1:1/v1"}
  relay: {base_url: "http://127.0.0.1:2/v1"}
routes:
  - name: chat
    match: {paths: [/v1/chat/completions]}
    weights: {legacy: 90, relay: 10}
  - name: default
    weights: {legacy: 100}
pricing:
  legacy: {gpt-4.1: {input: 8.0, output: 16.0}, text-embedding-3-small: {input: 0.02, output: 0}}
  relay: {gpt-4.1: {input: 1.0, output: 2.0}}
"""


def config(text: str = ROUTES) -> Any:
    return parse_config(text.encode(), "routes.yaml", environ={})


def use(
    meter: Meter, cfg: Any, route: str, backend: str, model: str, tokens: tuple[int, int]
) -> None:
    """Meter a call as the proxy does: priced from routes.yaml's pricing, when it has one."""
    price = cfg.pricing.get(backend, {}).get(model)
    meter.usage(route, backend, model, tokens, (price.input, price.output) if price else None)


def test_cost_per_backend_and_what_if() -> None:
    """Spent, all-baseline and all-canary costs are tokens x prices, per route."""
    cfg = config()
    meter = Meter(FakeClock())
    use(meter, cfg, "chat", "legacy", "gpt-4.1", (1_000_000, 500_000))  # 8 + 8 = $16
    use(meter, cfg, "chat", "relay", "gpt-4.1", (1_000_000, 1_000_000))  # 1 + 2 = $3
    use(meter, cfg, "default", "legacy", "text-embedding-3-small", (1_000_000, 0))  # $0.02
    costs = backend_costs(meter, cfg)
    assert costs["legacy"]["cost_usd"] == pytest.approx(16.02)
    assert costs["legacy"]["tokens"] == {"input": 2_000_000, "output": 500_000}
    assert costs["relay"]["cost_usd"] == pytest.approx(3.0)
    section = cost_section(meter, cfg)
    assert section["total_usd"] == pytest.approx(19.02)
    assert section["complete"] is True
    # all chat on legacy: 2M in x 8 + 1.5M out x 16 = 40; embeddings stay on legacy
    assert section["at_100_baseline_usd"] == pytest.approx(40.02)
    # all chat on relay: 2M x 1 + 1.5M x 2 = 5; the default route has no canary
    assert section["at_100_canary_usd"] == pytest.approx(5.02)
    assert section["savings_so_far_usd"] == pytest.approx(40.02 - 19.02)
    assert section["unpriced"] == []
    assert canary_of(cfg.routes[1]) == "legacy"


def test_no_traffic_costs_nothing() -> None:
    """Before any call, what was spent is $0 (known), and so are the what-ifs; there is
    nothing to project from yet, and the basis says so."""
    section = cost_section(Meter(FakeClock()), config())
    assert section["total_usd"] == 0.0 and section["complete"] is True
    assert section["at_100_baseline_usd"] == section["at_100_canary_usd"] == 0.0
    assert section["projected_monthly_savings_usd"] is None
    assert section["projection_basis"] == (
        "no metered calls yet; a projection needs 10 min of traffic"
    )
    assert (section["projection_calls"], section["projection_span_s"]) == (0, 0.0)


def test_unknown_prices_are_reported_not_zero() -> None:
    """Tokens of a model without a price are listed as such; nothing priced gives None."""
    cfg = config()
    clock = FakeClock()
    meter = Meter(clock)
    use(meter, cfg, "chat", "relay", "gpt-4o", (1000, 1000))
    clock.now += 600  # a base for the projection: what is missing now is only the price
    use(meter, cfg, "chat", "relay", "gpt-4o", (0, 0))
    costs = backend_costs(meter, cfg)
    assert costs["relay"]["cost_usd"] is None
    assert costs["relay"]["unpriced_tokens"] == {"input": 1000, "output": 1000}
    section = cost_section(meter, cfg)
    assert section["by_model"][0]["cost_usd"] is None
    assert section["by_model"][0]["price"] is None
    assert section["by_model"][0]["unpriced_tokens"] == {"input": 1000, "output": 1000}
    assert section["total_usd"] is None  # nothing priced: unknown, not $0
    assert section["complete"] is False
    assert section["at_100_baseline_usd"] is None
    assert section["savings_so_far_usd"] is None
    assert section["projected_monthly_savings_usd"] is None
    assert section["projection_basis"] == "2 calls over 10 min"
    assert "relay/gpt-4o" in section["unpriced"]
    assert "legacy/gpt-4o" in section["unpriced"]


def test_projected_monthly_savings_from_the_live_rate() -> None:
    """The last minutes' token rate x (baseline - canary price) x 30 days, once 10 minutes
    of traffic have been seen; before that, no projection, and the basis says why."""
    clock = FakeClock(1000.0)
    cfg = config()
    meter = Meter(clock)
    for _ in range(12):  # 12 slots of 10 s: 2 minutes at 100 input + 50 output tokens/s
        use(meter, cfg, "chat", "legacy", "gpt-4.1", (1000, 500))
        clock.now += 10
    section = cost_section(meter, cfg)
    assert section["token_rate_per_s"] == {"input": pytest.approx(100), "output": pytest.approx(50)}
    assert section["projected_monthly_savings_usd"] is None
    assert (
        section["projection_basis"] == "12 calls over 2 min; a projection needs 10 min of traffic"
    )
    for _ in range(48):  # 8 more minutes at the same rate: 10 in all
        use(meter, cfg, "chat", "legacy", "gpt-4.1", (1000, 500))
        clock.now += 10
    section = cost_section(meter, cfg)
    assert section["token_rate_per_s"] == {"input": pytest.approx(100), "output": pytest.approx(50)}
    per_s = (100 * (8 - 1) + 50 * (16 - 2)) / 1e6
    expected = per_s * 30 * 24 * 3600
    assert section["projected_monthly_savings_usd"] == pytest.approx(expected, rel=1e-6)
    assert section["projection_basis"] == "60 calls over 10 min"
    assert (section["projection_calls"], section["projection_span_s"]) == (60, 600.0)
    clock.now += 3600  # an hour of silence: the live rate, and the projection, fall to 0
    section = cost_section(meter, cfg)
    assert section["projected_monthly_savings_usd"] == 0.0
    assert section["projection_basis"] == "60 calls over 70 min"


def test_projection_waits_for_ten_minutes_of_traffic_not_of_uptime() -> None:
    """A router up for an hour before its first call still needs 10 minutes of traffic;
    the moment it has them, the projection appears."""
    clock = FakeClock(1000.0)
    cfg = config()
    meter = Meter(clock)
    clock.now += 3600
    use(meter, cfg, "chat", "legacy", "gpt-4.1", (1000, 500))
    clock.now += 599.9
    use(meter, cfg, "chat", "legacy", "gpt-4.1", (1000, 500))
    assert cost_section(meter, cfg)["projected_monthly_savings_usd"] is None
    clock.now += 0.1
    section = cost_section(meter, cfg)
    assert section["projected_monthly_savings_usd"] is not None
    assert section["projected_monthly_savings_usd"] > 0
    assert section["projection_basis"] == "2 calls over 10 min"


@pytest.mark.parametrize(
    ("seconds", "calls", "words"),
    [
        (0.0, 1, "1 call over 0 s; a projection needs 10 min of traffic"),
        (42.7, 3, "3 calls over 42 s; a projection needs 10 min of traffic"),
        (179.0, 120, "120 calls over 2 min; a projection needs 10 min of traffic"),
        (47 * 60 + 59, 4210, "4,210 calls over 47 min"),
        (3 * 3600 + 5 * 60, 99_000, "99,000 calls over 3 h 5 min"),
    ],
)
def test_projection_basis_in_words(seconds: float, calls: int, words: str) -> None:
    """The basis reads as SPEC shows it: calls and the time since the first, rounded down."""
    clock = FakeClock(1000.0)
    meter = Meter(clock)
    for _ in range(calls):
        meter.usage("chat", "legacy", "gpt-4.1", (1, 1), None)
    clock.now += seconds
    assert projection_basis(meter)["projection_basis"] == words


def test_spent_is_priced_when_the_call_ends() -> None:
    """A price edit changes what-ifs, not what was spent: the cost counter never goes back."""
    cfg = config()
    meter = Meter(FakeClock())
    use(meter, cfg, "chat", "relay", "gpt-4.1", (1_000_000, 0))  # $1 at 1.0/M
    cheaper = config(
        ROUTES.replace("relay: {gpt-4.1: {input: 1.0,", "relay: {gpt-4.1: {input: 0.5,")
    )
    assert backend_costs(meter, cheaper)["relay"]["cost_usd"] == pytest.approx(1.0)
    assert cost_section(meter, cheaper)["at_100_canary_usd"] == pytest.approx(0.5)


def test_partly_priced_what_ifs_are_unknown() -> None:
    """A what-if that needs a missing price is None, whatever else was priced."""
    cfg = config()
    meter = Meter(FakeClock())
    use(meter, cfg, "chat", "legacy", "gpt-4.1", (1000, 1000))
    use(meter, cfg, "default", "legacy", "mystery", (1000, 1000))
    section = cost_section(meter, cfg)
    assert section["total_usd"] == pytest.approx((1000 * 8 + 1000 * 16) / 1e6)
    assert section["complete"] is False
    assert section["at_100_baseline_usd"] is None and section["at_100_canary_usd"] is None
    assert section["savings_so_far_usd"] is None
    assert section["unpriced"] == ["legacy/mystery"]


def test_workers_export_and_absorb() -> None:
    """A merged meter holds the sum of every worker's counters."""
    clock = FakeClock()
    a, b = Meter(clock), Meter(clock)
    for m in (a, b):
        m.call("chat", "relay", 200, 0.02)
        m.call("chat", "relay", 503, 7.0)
        m.failure("relay", "5xx")
        m.usage("chat", "relay", "gpt-4.1", (10, 5), (1.0, 2.0))
        m.usage("chat", "relay", "gpt-9", (1, 1), None)
        m.retry("relay")
        m.fallback("chat", "relay")
        m.waited("relay", 0.5)
        m.rejected("relay")
        m.no_usage("relay")
    merged = Meter(clock)
    for m in (a, b):
        merged.absorb(orjson.loads(orjson.dumps(m.export())))
    assert merged.requests == {("chat", "relay", "2xx"): 2, ("chat", "relay", "5xx"): 2}
    assert merged.tokens[("chat", "relay", "gpt-4.1")] == [2, 20, 10]
    assert merged.spent == {("relay", "gpt-4.1"): pytest.approx(2 * 20 / 1e6)}
    assert merged.unpriced == {("relay", "gpt-9"): [2, 2]}
    assert merged.latency["relay"][-1] == pytest.approx(14.04)
    assert merged.failures == {("relay", "5xx"): 2}
    assert (merged.retries, merged.limiter_rejections) == ({"relay": 2}, {"relay": 2})
    assert merged.fallbacks == {("chat", "relay"): 2}
    assert merged.unmetered == {"relay": 2}
    assert merged.token_rate() == a.token_rate() | {
        k: (2 * x, 2 * y) for k, (x, y) in a.token_rate().items()
    }


def test_workers_merge_the_projection_basis() -> None:
    """The merged meter's traffic began with the earliest worker's first metered call, and
    counts every worker's calls."""
    clock = FakeClock(1000.0)
    early, late, idle = Meter(clock), Meter(clock), Meter(clock)
    early.usage("chat", "relay", "gpt-4.1", (10, 5), None)
    clock.now += 300
    late.usage("chat", "relay", "gpt-4.1", (10, 5), None)
    late.usage("chat", "relay", "gpt-4.1", (10, 5), None)
    clock.now += 300
    merged = Meter(clock)
    for m in (late, idle, early):
        merged.absorb(orjson.loads(orjson.dumps(m.export())))
    assert merged.first_usage_at == 1000.0
    assert merged.metered() == (3, 600.0)
    assert projection_basis(merged)["projection_basis"] == "3 calls over 10 min"


def _doc(cfg: Any) -> dict[str, Any]:
    """A minimal /status document for the metrics renderer."""
    backends = {
        name: {
            **costs,
            "circuit": "open" if name == "relay" else "closed",
            "in_flight": 1,
            "error_rate": 0.25,
        }
        for name, costs in backend_costs(METER, cfg).items()
    }
    return {
        "config": {"error": None},
        "state": "memory",
        "routes": [
            {
                "name": "chat",
                "configured": {"legacy": 90, "relay": 10},
                "effective": {"legacy": 100, "relay": 0},
                "canary_percentage": 0.0,
            }
        ],
        "backends": backends,
        "rollback": {"max_error_rate": 0.05},
        "migration": {"ready_for_full_migration": False, "projected_monthly_savings_usd": 12.5},
        "at": datetime.now(UTC).isoformat(),
    }


METER = Meter(FakeClock())


def test_metrics_parse_with_prometheus_parser() -> None:
    """/metrics text parses with prometheus-client's parser and holds the figures given."""
    cfg = config()
    METER.call("chat", "relay", 200, 0.02)
    METER.call("chat", "relay", 200, 99.0)
    METER.call("", "", 401, 0.0)
    METER.usage("chat", "relay", "gpt-4.1", (1_000_000, 0), (1.0, 2.0))
    METER.failure("relay", "timeout")
    samples = prometheus_samples(render(_doc(cfg), METER).decode())

    def value(name: str, **labels: str) -> float:
        return sample(samples, name, **labels)

    assert value("canary_requests_total", route="chat", backend="relay", status_class="2xx") == 2
    assert value("canary_requests_total", route="none", backend="none", status_class="4xx") == 1
    assert value("canary_request_duration_seconds_bucket", backend="relay", le="0.025") == 1
    assert value("canary_request_duration_seconds_bucket", backend="relay", le="60") == 1
    assert value("canary_request_duration_seconds_bucket", backend="relay", le="+Inf") == 2
    assert value("canary_request_duration_seconds_count", backend="relay") == 2
    assert value("canary_upstream_failures_total", backend="relay", kind="timeout") == 1
    assert value("canary_tokens_total", backend="relay", model="gpt-4.1", direction="input") == 1e6
    assert value("canary_cost_usd_total", backend="relay") == pytest.approx(1.0)
    assert value("canary_circuit_state", backend="relay") == 2
    assert value("canary_weight", route="chat", backend="relay", kind="effective") == 0
    assert value("canary_weight", route="chat", backend="relay", kind="configured") == 10
    assert value("canary_max_error_rate") == 0.05
    assert value("canary_projected_monthly_savings_usd") == 12.5
    assert value("canary_ready_for_full_migration") == 0
    assert value("canary_state", state="memory") == 1


def test_metrics_omit_a_projection_without_a_base() -> None:
    """A null projection exports no sample (not NaN: an absent series is what absent() and
    empty panels expect); the seconds of traffic it rests on are a gauge of their own."""
    cfg = config()
    clock = FakeClock()
    meter = Meter(clock)
    meter.usage("chat", "relay", "gpt-4.1", (1000, 0), (1.0, 2.0))
    clock.now += 120
    doc = _doc(cfg)
    doc["cost"] = cost_section(meter, cfg)
    doc["migration"]["projected_monthly_savings_usd"] = None
    text = render(doc, meter).decode()
    samples = prometheus_samples(text)
    assert not [name for name, _ in samples if name == "canary_projected_monthly_savings_usd"]
    assert "NaN" not in text
    assert sample(samples, "canary_projection_basis_seconds") == 120.0


def test_usage_of_gzip_and_deflate_answers() -> None:
    """A compressed answer is inflated for the scanner only, however it is chunked."""
    for wbits, name in ((16 + zlib.MAX_WBITS, b"gzip"), (zlib.MAX_WBITS, b"deflate")):
        packer = zlib.compressobj(wbits=wbits)
        packed = packer.compress(CHAT) + packer.flush()
        for cut in (1, 7, len(packed) // 2, len(packed) - 1):
            scanner = UsageScanner()
            assert scanner.encoded(name)
            scanner.feed(packed[:cut])
            scanner.feed(packed[cut:])
            assert scanner.result() == (12, 7), (name, cut)
    assert not UsageScanner().encoded(b"br")  # unreadable: the call counts as unmetered
    garbage = UsageScanner()
    garbage.encoded(b"gzip")
    garbage.feed(b"not gzip at all")
    assert garbage.result() is None


def test_usage_is_read_within_its_own_object() -> None:
    """Counters after the usage object's closing brace are not its own; a later bare
    "usage" string does not throw away an object already read."""
    assert scan(b'{"usage": {"completion_tokens": 2}, "x": {"prompt_tokens": 777}}') == (0, 2)
    assert scan(CHAT, b', "role": "usage"') == (12, 7)
    assert scan(b'{"a": 1, "usage"', b': {"prompt_tokens": 3, "completion_tokens": 4}}') == (3, 4)


def test_readable_encodings_drop_only_what_canary_cannot_read() -> None:
    """br and zstd are not asked of providers; gzip and deflate stay, with their weights."""
    assert readable_encodings(b"gzip, deflate, br, zstd") == b"gzip, deflate"
    assert readable_encodings(b"br;q=1.0, gzip;q=0.8") == b"gzip;q=0.8"
    assert readable_encodings(b"br") == b"identity"


def test_sessions_are_counted_and_summed_across_workers() -> None:
    """WebSocket sessions: open while open, cut when cut, frames and bytes each way; a
    worker's export adds into another's view as every other counter does."""
    one, two = Meter(lambda: 0.0), Meter(lambda: 0.0)
    one.session_opened("relay")
    one.session_opened("relay")
    one.session_closed("relay", True, (1, 5, 10, 50))
    two.session_opened("relay")
    merged = Meter(lambda: 0.0)
    for meter in (one, two):
        merged.absorb(orjson.loads(orjson.dumps(meter.export())))
    assert merged.sessions["relay"] == [2, 3, 1, 1, 5, 10, 50]
