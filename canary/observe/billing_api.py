"""What each relay's billing API answers, read into one ``Reading`` (SPEC §11).

Read from the handlers themselves, not from their docs:

- new-api / one-api: ``GET /v1/dashboard/billing/subscription`` gives ``hard_limit_usd``,
  the key's (or user's) remaining quota *plus* what it used, in USD (``100000000`` for an
  unlimited key); ``GET /v1/dashboard/billing/usage`` gives ``total_usage``, what it used,
  in hundredths of a USD. Spent = total_usage / 100; balance = hard_limit_usd - spent. Both
  answer a failure as HTTP 200 with an OpenAI ``error`` object.
- OpenRouter: ``GET /api/v1/key`` gives ``data.usage`` (USD spent by the key, all time)
  and ``data.limit_remaining`` (USD left under the key's limit; null without a limit).
- sub2api: ``GET /v1/usage`` gives ``usage.total.actual_cost`` (USD billed to the key),
  ``quota.used`` (a key with a quota), and ``balance`` (wallet) or ``remaining``
  (``-1``: unlimited). An older sub2api gives only ``remaining``: then the spend counter
  is the balance going down (a top-up restarts the span, as any counter going back does).

Every parser takes raw bodies and either returns a ``Reading`` or raises ``BillingError``
in words; it never raises anything else, whatever the bodies are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from canary.errors import BillingError

ENDPOINTS: Mapping[str, tuple[str, ...]] = {
    "new-api": ("/v1/dashboard/billing/subscription", "/v1/dashboard/billing/usage"),
    "one-api": ("/v1/dashboard/billing/subscription", "/v1/dashboard/billing/usage"),
    "openrouter": ("/api/v1/key",),
    "sub2api": ("/v1/usage",),
}
UNLIMITED_USD = 1e8  # new-api's and one-api's hard_limit_usd for an unlimited key
MAX_USD = 1e9  # above this a figure is garbage, not money


@dataclass(frozen=True, slots=True)
class Reading:
    """One poll's answer: the key's lifetime spend counter and what is left, in USD."""

    spent_usd: float | None  # None: the API gives no counter (the balance stands for it)
    balance_usd: float | None  # None: unlimited, or not told

    def counter(self) -> float:
        """What rises as the key spends: the spend counter, else the balance going down."""
        if self.spent_usd is not None:
            return self.spent_usd
        assert self.balance_usd is not None
        return -self.balance_usd


def parse(api: str, answers: Sequence[tuple[int, bytes]]) -> Reading:
    """The reading of ``api``'s answers (status, body), in ``ENDPOINTS`` order."""
    paths = ENDPOINTS.get(api)
    if paths is None or len(answers) != len(paths):
        raise BillingError(f"unknown billing api {api!r}")
    bodies = [_body(path, status, raw) for path, (status, raw) in zip(paths, answers, strict=True)]
    if api in ("new-api", "one-api"):
        return _new_api(bodies[0], bodies[1])
    if api == "openrouter":
        return _openrouter(bodies[0])
    return _sub2api(bodies[0])


def _body(path: str, status: int, raw: bytes) -> dict[str, Any]:
    if status != 200:
        raise BillingError(f"{path} answered HTTP {status}")
    try:
        data = orjson.loads(raw)
    except ValueError:
        head = raw[:1].decode("latin-1")
        what = "HTML" if head == "<" else "not JSON"
        raise BillingError(f"{path} answered {what}") from None
    if not isinstance(data, dict):
        raise BillingError(f"{path} answered {type(data).__name__}, not an object")
    error = data.get("error")
    if error:
        message = error.get("message") if isinstance(error, dict) else error
        raise BillingError(f"{path} answered an error: {str(message)[:160]}")
    return data


def _usd(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BillingError(f"{what} is {_shown(value)}, not a number")
    if not math.isfinite(value) or value < 0 or value > MAX_USD:
        raise BillingError(f"{what} is {_shown(value)}, not an amount in USD")
    return float(value)


def _shown(value: Any) -> str:
    text = "missing" if value is None else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _new_api(subscription: dict[str, Any], usage: dict[str, Any]) -> Reading:
    limit = _usd(subscription.get("hard_limit_usd"), "hard_limit_usd")
    spent = _usd(usage.get("total_usage"), "total_usage") / 100  # hundredths of a USD
    balance = None if limit >= UNLIMITED_USD else max(0.0, limit - spent)
    return Reading(spent_usd=spent, balance_usd=balance)


def _openrouter(body: dict[str, Any]) -> Reading:
    data = body.get("data")
    if not isinstance(data, dict):
        raise BillingError("/api/v1/key answered without its data object")
    spent = _usd(data.get("usage"), "data.usage")
    remaining = data.get("limit_remaining")
    balance = None if remaining is None else _usd(remaining, "data.limit_remaining")
    return Reading(spent_usd=spent, balance_usd=balance)


def _sub2api(body: dict[str, Any]) -> Reading:
    if body.get("isValid") is False:
        raise BillingError("/v1/usage says the key is not valid")
    spent = None
    total = _get(body, "usage", "total")
    quota = body.get("quota")
    quota = quota if isinstance(quota, dict) else {}
    if isinstance(total, dict) and "actual_cost" in total:
        spent = _usd(total["actual_cost"], "usage.total.actual_cost")
    elif "used" in quota:
        spent = _usd(quota["used"], "quota.used")
    balance = None
    if "balance" in body:
        balance = _usd(body["balance"], "balance")
    elif body.get("remaining") not in (None, -1):  # -1: no limit
        balance = _usd(body["remaining"], "remaining")
    if spent is None and balance is None:
        raise BillingError("/v1/usage gave neither a spend counter nor a balance")
    return Reading(spent_usd=spent, balance_usd=balance)


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data
