"""The spend audit's reading of bills: each billing API's real answer shapes, bad answers
shown as errors (never a crash or a false alarm), and the ledger's spans, ratio and runway."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canary.config.model import Backend, Billing, Config
from canary.errors import BillingError
from canary.observe.billing import Billing as BillingLedgers
from canary.observe.billing import Ledger, Totals
from canary.observe.billing_api import ENDPOINTS, Reading, parse
from canary.serve.billing import fetch

KEY = "sk-relay-billing-key"

# What each handler writes (new-api controller/billing.go, OpenRouter /api/v1/key,
# sub2api's gateway Usage handler), for a key that used $12.34 and has $7.66 left.
ANSWERS: dict[str, dict[str, Any]] = {
    "/v1/dashboard/billing/subscription": {
        "object": "billing_subscription",
        "has_payment_method": True,
        "soft_limit_usd": 20.0,
        "hard_limit_usd": 20.0,
        "system_hard_limit_usd": 20.0,
        "access_until": 0,
    },
    "/v1/dashboard/billing/usage": {"object": "list", "total_usage": 1234.0},
    "/api/v1/key": {
        "data": {"label": "sk-or-v1-abc...", "usage": 12.34, "limit": 20, "limit_remaining": 7.66,
                 "is_free_tier": False, "rate_limit": {"requests": 10, "interval": "10s"}}
    },
    "/v1/usage": {
        "mode": "unrestricted", "isValid": True, "planName": "wallet", "remaining": 7.66,
        "unit": "USD", "balance": 7.66,
        "usage": {"today": {"cost": 1.0, "actual_cost": 1.1},
                  "total": {"requests": 40, "cost": 11.0, "actual_cost": 12.34}},
    },
}  # fmt: skip


@pytest.mark.parametrize("api", ["new-api", "one-api", "openrouter", "sub2api"])
@pytest.mark.parametrize("header", [None, "x-api-key"])
async def test_each_api_is_read_with_the_backends_key(api: str, header: str | None) -> None:
    """Spent $12.34, $7.66 left, whichever API says it; the key goes as the backend sends it."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=orjson.dumps(ANSWERS[request.url.path]))

    backend = Backend("relay", "http://relay.test/v1", KEY, api_key_header=header)
    spec = Billing(api, "http://relay.test")  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        reading = await fetch(client, backend, spec)
    assert reading.spent_usd == pytest.approx(12.34)
    assert reading.balance_usd == pytest.approx(7.66)
    assert [r.url.path for r in seen] == list(ENDPOINTS[api])
    for r in seen:
        if header is None:
            assert r.headers["authorization"] == f"Bearer {KEY}"
        else:
            assert r.headers[header] == KEY and "authorization" not in r.headers


def test_unlimited_keys_and_an_old_sub2api() -> None:
    """new-api's unlimited key (1e8) has no balance; a sub2api giving only ``remaining``
    counts its spend as the balance going down."""
    sub = orjson.dumps({**ANSWERS["/v1/dashboard/billing/subscription"], "hard_limit_usd": 1e8})
    usage = orjson.dumps(ANSWERS["/v1/dashboard/billing/usage"])
    assert parse("new-api", [(200, sub), (200, usage)]) == Reading(12.34, None)
    old = orjson.dumps({"isValid": True, "planName": "x", "remaining": 3.5, "unit": "USD"})
    reading = parse("sub2api", [(200, old)])
    assert reading == Reading(None, 3.5) and reading.counter() == -3.5


@pytest.mark.parametrize(
    ("status", "body", "words"),
    [
        pytest.param(200, b"<html>login</html>", "answered HTML", id="html"),
        pytest.param(404, b"not found", "HTTP 404", id="404"),
        pytest.param(200, b'{"total_usage": -5}', "not an amount", id="negative"),
        pytest.param(200, b'{"total_usage": NaN}', "not JSON", id="nan"),
        pytest.param(200, b'{"total_usage": 1e300}', "not an amount", id="huge"),
        pytest.param(200, b'{"error": {"message": "bad token", "type": "new_api_error"}}',
                     "an error: bad token", id="error-in-200"),
    ],
)  # fmt: skip
def test_bad_answers_are_errors_in_words(status: int, body: bytes, words: str) -> None:
    """What a broken or hostile billing endpoint says becomes ``error``, never a crash."""
    sub = orjson.dumps(ANSWERS["/v1/dashboard/billing/subscription"])
    with pytest.raises(BillingError, match=words):
        parse("new-api", [(200, sub), (status, body)])


def _reading(spent: float, balance: float | None = 10.0) -> Reading:
    return Reading(spent, balance)


def test_ledger_ratio_runway_and_a_counter_that_goes_back() -> None:
    """Billed and metered rise over one span; a top-up or reset starts a fresh one."""
    ledger = Ledger("new-api")
    ledger.record(0.0, _reading(5.0), 1.0)
    assert ledger.ratio() is None  # nothing metered yet
    ledger.record(60.0, _reading(5.005), 1.004)
    assert ledger.ratio() is None  # $0.004 metered: below $0.01, noise
    ledger.record(1800.0, _reading(6.3, 9.0), 2.0)
    assert ledger.ratio() == pytest.approx(1.3)
    assert ledger.runway_h() == pytest.approx(9.0 / (1.3 / 0.5))  # $1.30 over half an hour
    doc = ledger.doc()
    assert doc["billed_usd"] == pytest.approx(1.3) and doc["metered_usd"] == pytest.approx(1.0)
    ledger.record(1860.0, _reading(0.1), 2.1)  # the counter was reset
    doc = ledger.doc()
    assert doc["billed_usd"] == 0 and doc["ratio"] is None and doc["restarts"] == 1
    ledger.record(9000.0, _reading(1.1), 3.1)
    ledger.record(9060.0, _reading(2.1), 4.1)
    ledger.record(12700.0, _reading(3.1), 5.1)  # from the last sample at the hour mark on
    assert ledger.hour() == pytest.approx((1.0, 1.0, 3640.0))


_SCALAR = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats()
_JSON = st.recursive(
    _SCALAR | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=25,
)
_KEYS = st.sampled_from(
    ["hard_limit_usd", "total_usage", "data", "usage", "limit_remaining", "balance", "remaining",
     "quota", "used", "total", "actual_cost", "error", "isValid"]
)  # fmt: skip
_SHAPED = st.dictionaries(_KEYS, _JSON | st.dictionaries(_KEYS, _JSON, max_size=4), max_size=6)
_BODY = st.one_of(
    st.binary(max_size=200),
    (_JSON | _SHAPED).map(lambda v: orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS)),
)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted(ENDPOINTS)),
    st.lists(st.tuples(st.sampled_from([200, 200, 200, 403, 500]), _BODY), min_size=2, max_size=2),
)
def test_any_answer_gives_a_reading_or_a_billing_error(
    api: str, answers: list[tuple[int, bytes]]
) -> None:
    """Any JSON, any bytes, any status: a reading with sane figures, or ``BillingError``."""
    try:
        reading = parse(api, answers[: len(ENDPOINTS[api])])
    except BillingError:
        return
    for figure in (reading.spent_usd, reading.balance_usd):
        assert figure is None or 0 <= figure <= 1e9
    ledger = Ledger(api)
    ledger.record(0.0, reading, 0.0)
    ledger.doc()


def test_alerts_are_told_once_per_crossing_and_once_when_they_clear() -> None:
    """Runway, ratio and spent credit: one alert when each begins, one when it ends, none
    while it holds, whatever the number of polls."""
    cfg = _config()
    billing = BillingLedgers(lambda: 1_000.0)
    told: list[tuple[str, str, bool]] = []
    billing.alerts.listeners.append(lambda a: told.append((a.backend, a.kind, a.firing)))
    ledger = billing.ledger("relay", "new-api")
    ledger.record(0.0, Reading(0.0, 10.0), 0.0)
    for minute in range(1, 4):  # $1.30 billed for $1.00 metered a minute: 1.3x, 7 min left
        ledger.record(60.0 * minute, Reading(1.3 * minute, 10.0 - 1.3 * minute), 1.0 * minute)
        billing.judge(cfg, "relay")
    assert told == [("relay", "runway", True), ("relay", "billing_ratio", True)]
    ledger.record(240.0, Reading(1.3 * 3, 1000.0), 4.0 * 3)  # a top-up; the bill back in line
    billing.judge(cfg, "relay")
    assert told[2:] == [("relay", "runway", False), ("relay", "billing_ratio", False)]
    assert {e.event()["to"] for e in billing.alerts.events} == {"runway", "billing_ratio", "ok"}

    del told[:]
    billing.judge_credit({"relay": Totals(0.0, 0, 5)}, {})
    billing.judge_credit({"relay": Totals(0.0, 2, 5)}, {"relay": "insufficient_quota"})
    billing.judge_credit({"relay": Totals(0.0, 3, 5)}, {"relay": "insufficient_quota"})
    billing.judge_credit({"relay": Totals(0.0, 3, 6)}, {})  # answering again
    assert told == [("relay", "credit_spent", True), ("relay", "credit_spent", False)]
    assert billing.alerts.events[-2].reason == "relay: credit spent (insufficient_quota)"


def _config() -> Config:
    from canary.config.validate import Tree, validate

    data = {
        "backends": {
            "legacy": {"base_url": "http://legacy.test/v1"},
            "relay": {"base_url": "http://relay.test/v1", "billing": {"api": "new-api"}},
        },
        "routes": [{"name": "chat", "weights": {"legacy": 50, "relay": 50}}],
        "alerts": {"min_runway_h": 1},
    }
    return validate(Tree("routes.yaml", "v", data, {}, {}, ()))


def test_metered_cost_covers_shadow_and_verify_and_survives_the_workers_merge() -> None:
    """Live calls, shadow copies and verify probes, per backend; a worker's export adds up."""
    from canary.observe.meter import Meter

    one = Meter(lambda: 0.0)
    one.usage("chat", "relay", "gpt-4.1", (1000, 1000), (1.0, 1.0))  # $0.002
    one.shadow_call("chat", "relay", True, (500, 500), 0.001)
    one.verified("relay", 0.5)
    one.credit("relay", "insufficient_quota")
    assert one.metered_usd() == {"relay": pytest.approx(0.503)}
    merged = Meter(lambda: 0.0)
    merged.absorb(orjson.loads(orjson.dumps(one.export())))
    merged.absorb(orjson.loads(orjson.dumps(one.export())))
    assert merged.metered_usd() == {"relay": pytest.approx(1.006)}
    assert merged.credit_codes == {"relay": "insufficient_quota"}


async def test_a_slow_or_failing_poll_only_sets_error(tmp_path: Path) -> None:
    """A poll past its bound is dropped; an HTML answer is an error in words; neither
    raises, neither shows the key, and the figures stay the last good ones."""
    from canary.config.store import ConfigStore
    from canary.fleet.billing_shared import Alone
    from canary.observe.meter import Meter
    from canary.serve.billing import Poller

    hang = asyncio.Event()

    async def answer(request: httpx.Request) -> httpx.Response:
        if hang.is_set():
            await asyncio.Event().wait()  # never answers
        return httpx.Response(200, content=b"<html>" + KEY.encode())

    path = tmp_path / "routes.yaml"
    path.write_text(
        "backends:\n  legacy: {base_url: 'http://legacy.test/v1'}\n"
        f"  relay: {{base_url: 'http://relay.test/v1', api_key: {KEY},"
        " billing: {api: openrouter, poll_s: 1}}\n"
        "routes: [{name: chat, weights: {legacy: 1, relay: 1}}]\n"
    )
    store = ConfigStore(str(path))
    store.load_initial()
    ledgers = BillingLedgers(lambda: 0.0)
    meter = Meter(lambda: 0.0)
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        poller = Poller(store, ledgers, Alone(), lambda: meter, client)
        await poller.tick()
        await asyncio.gather(*poller.polls.values())
        assert ledgers.ledgers["relay"].error == "/api/v1/key answered HTML"
        hang.set()
        poller.due.clear()
        await poller.tick()
        await asyncio.gather(*poller.polls.values())
        await poller.aclose()
    ledger = ledgers.ledgers["relay"]
    assert ledger.error == "no answer within 1 s" and ledger.polled_at is None
