"""A relay that bills (SPEC §11): the four billing APIs, a balance, and spent credit.

``--billing new-api|one-api|openrouter|sub2api`` serves that relay's billing endpoints for
the simulator's key, in the shapes the real handlers write (``canary.observe.billing_api``
reads them): new-api/one-api ``/v1/dashboard/billing/subscription`` (``hard_limit_usd`` =
left + used) and ``/usage`` (``total_usage`` in hundredths), OpenRouter ``/api/v1/key``,
sub2api ``/v1/usage``. ``--billing openai`` has no billing endpoint, only OpenAI's way of
saying credit is spent. Each answer sent whole is charged at ``price_input`` /
``price_output`` (USD per million tokens) times ``bill_factor`` (``1.3``: bills 30% over
what its usage says). Once the balance is gone, every call is refused the way that
provider refuses it: new-api/one-api ``403 insufficient_user_quota``, sub2api ``403
INSUFFICIENT_BALANCE``, OpenRouter ``402``, OpenAI ``429 insufficient_quota``.
``POST /_sim/billing`` changes any of it live (a top-up sets ``balance_usd``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

APIS = ("new-api", "one-api", "openrouter", "sub2api", "openai")

_SPENT: dict[str, tuple[int, dict[str, Any]]] = {
    "new-api": (
        403,
        {
            "error": {
                "message": "user quota is not enough (simulated)",
                "type": "new_api_error",
                "param": "",
                "code": "insufficient_user_quota",
            }
        },
    ),
    "one-api": (
        403,
        {
            "error": {
                "message": "user quota is not enough (simulated)",
                "type": "one_api_error",
                "code": "insufficient_user_quota",
            }
        },
    ),
    "sub2api": (403, {"code": "INSUFFICIENT_BALANCE", "message": "Insufficient account balance"}),
    "openrouter": (402, {"error": {"code": 402, "message": "Insufficient credits (simulated)"}}),
    "openai": (
        429,
        {
            "error": {
                "message": "You exceeded your current quota (simulated).",
                "type": "insufficient_quota",
                "param": None,
                "code": "insufficient_quota",
            }
        },
    ),
}


@dataclass
class SimBilling:
    """The simulated key's account; mutable, steered through ``POST /_sim/billing``."""

    api: str = "new-api"
    balance_usd: float = 100.0
    bill_factor: float = 1.0  # bills this many times what its usage says
    price_input: float = 1.10  # USD per million tokens
    price_output: float = 1.10
    spent_usd: float = 0.0  # what it billed so far
    usage_usd: float = 0.0  # what its usage said, at its prices
    calls: int = 0

    def __post_init__(self) -> None:
        self.update(asdict(self))

    def update(self, patch: dict[str, Any]) -> None:
        """Validate every key of ``patch`` first, then apply them all (or none)."""
        clean = {key: _check(key, value) for key, value in patch.items()}
        for key, value in clean.items():
            setattr(self, key, value)

    def charge(self, prompt: int, completion: int) -> None:
        usd = (prompt * self.price_input + completion * self.price_output) / 1e6
        self.usage_usd += usd
        self.spent_usd += usd * self.bill_factor
        self.balance_usd = max(0.0, self.balance_usd - usd * self.bill_factor)
        self.calls += 1

    def spent(self) -> tuple[int, dict[str, Any]] | None:
        """The provider's refusal once the balance is gone, else None."""
        return _SPENT[self.api] if self.balance_usd <= 0 else None

    def answer(self, path: str) -> dict[str, Any] | None:
        """The billing endpoint's answer at ``path`` (GET), or None when it is not one."""
        used, left = self.spent_usd, self.balance_usd
        if self.api in ("new-api", "one-api"):
            if path == "/v1/dashboard/billing/subscription":
                total = used + left
                return {
                    "object": "billing_subscription",
                    "has_payment_method": True,
                    "soft_limit_usd": total,
                    "hard_limit_usd": total,
                    "system_hard_limit_usd": total,
                    "access_until": 0,
                }
            if path == "/v1/dashboard/billing/usage":
                return {"object": "list", "total_usage": used * 100}
        if self.api == "openrouter" and path == "/api/v1/key":
            data = {"label": "sim", "usage": used, "limit": used + left, "limit_remaining": left}
            return {"data": {**data, "is_free_tier": False, "rate_limit": None}}
        if self.api == "sub2api" and path == "/v1/usage":
            totals = {"requests": self.calls, "cost": self.usage_usd, "actual_cost": used}
            return {
                "mode": "unrestricted",
                "isValid": True,
                "planName": "wallet",
                "remaining": left,
                "unit": "USD",
                "balance": left,
                "usage": {"total": totals},
            }
        return None


_LIMITS: dict[str, tuple[float, float]] = {
    "balance_usd": (0, 1e9),
    "bill_factor": (0, 100),
    "price_input": (0, 1e4),
    "price_output": (0, 1e4),
    "spent_usd": (0, 1e12),
    "usage_usd": (0, 1e12),
    "calls": (0, 1e15),
}


def _check(key: str, value: object) -> object:
    if key == "api":
        if value not in APIS:
            raise ValueError(f"api: must be one of {', '.join(APIS)}")
        return value
    if key not in _LIMITS:
        raise ValueError(f"unknown billing key {key!r}; known: api, {', '.join(_LIMITS)}")
    low, high = _LIMITS[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key}: must be a number, got {value!r}")
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{key}: must be in [{low:g}, {high:g}], got {value!r}")
    return int(value) if key == "calls" else float(value)
