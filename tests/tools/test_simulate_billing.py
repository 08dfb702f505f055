"""The billing simulator speaks each API the way canary reads it: after a charge, the
reading is what it billed and what is left; spent credit in each provider's shape."""

from __future__ import annotations

import orjson
import pytest

from canary.observe.billing_api import ENDPOINTS, parse
from canary.proxy.credit import spent_code
from canary.tools.simulate.billing import SimBilling


@pytest.mark.parametrize("api", sorted(ENDPOINTS))
def test_each_billing_api_reads_back_what_was_billed(api: str) -> None:
    """1000 + 1000 tokens at $1.10 per million, billed 1.3x, from a $5 balance."""
    account = SimBilling(api=api, balance_usd=5.0, bill_factor=1.3)
    account.charge(1000, 1000)
    answers = []
    for path in ENDPOINTS[api]:
        body = account.answer(path)
        assert body is not None
        answers.append((200, orjson.dumps(body)))
    reading = parse(api, answers)
    billed = 2000 * 1.10 / 1e6 * 1.3
    assert reading.spent_usd == pytest.approx(billed)
    assert reading.balance_usd == pytest.approx(5.0 - billed)


@pytest.mark.parametrize(
    ("api", "status", "code"),
    [
        ("new-api", 403, "insufficient_user_quota"),
        ("one-api", 403, "insufficient_user_quota"),
        ("sub2api", 403, "INSUFFICIENT_BALANCE"),
        ("openrouter", 402, None),  # a 402 is spent credit whatever its body says
        ("openai", 429, "insufficient_quota"),
    ],
)
def test_spent_credit_in_each_providers_shape(api: str, status: int, code: str | None) -> None:
    account = SimBilling(api=api, balance_usd=0.0)
    refusal = account.spent()
    assert refusal is not None and refusal[0] == status
    assert spent_code(orjson.dumps(refusal[1])) == code
    assert SimBilling(api=api, balance_usd=1.0).spent() is None
