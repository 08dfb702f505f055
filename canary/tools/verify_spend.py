"""What ``canary verify`` spent, told to the router so the spend audit counts it (SPEC §11).

``verify`` calls the backends from this process, not through the router, yet the relay
bills those calls to the same key the router's ``billing`` reads. So after the battery its
cost at ``pricing`` (from the tokens each backend reported) is POSTed to the router's
``/admin/billing/metered`` (``--url``, default ``$CANARY_URL`` or the local router; the
admin token from ``--token`` or ``$CANARY_ADMIN_TOKEN``), which adds it to that backend's
metered cost. When that cannot be done, one line says so and why: verify's own verdict
does not depend on it. The token and the backends' keys are never printed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import httpx

from canary.config.model import Config, redact_url

DEFAULT_URL = "http://127.0.0.1:8080"
TIMEOUT_S = 5.0


def spent_usd(cfg: Config, model: str, tokens: Mapping[str, tuple[int, int]]) -> dict[str, float]:
    """Each backend's probes at its ``pricing`` for ``model``; unpriced ones left out."""
    out = {}
    for backend, (tin, tout) in tokens.items():
        price = cfg.pricing.get(backend, {}).get(model)
        if price is not None and (tin or tout):
            out[backend] = (tin * price.input + tout * price.output) / 1e6
    return out


def report_spend(cfg: Config, args: Any, tokens: Mapping[str, tuple[int, int]]) -> str:
    """POST the battery's cost to the router; one line on what happened."""
    usd = spent_usd(cfg, args.model, tokens)
    shown = ", ".join(f"{b} ${v:.4f}" for b, v in sorted(usd.items())) or "nothing priced"
    url = (getattr(args, "url", None) or os.environ.get("CANARY_URL") or DEFAULT_URL).rstrip("/")
    where = redact_url(url)
    token = getattr(args, "token", None) or os.environ.get("CANARY_ADMIN_TOKEN", "")
    if not usd:
        return f"canary verify: spent {shown}; nothing to tell the router's spend audit"
    if not token:
        return (
            f"canary verify: spent {shown}; not told to the router's spend audit "
            "(needs the admin token: --token or $CANARY_ADMIN_TOKEN)"
        )
    try:
        r = httpx.post(
            f"{url}/admin/billing/metered",
            json={"source": "verify", "usd": usd},
            headers={"authorization": f"Bearer {token}"},
            timeout=TIMEOUT_S,
        )
    except httpx.HTTPError as exc:
        why = type(exc).__name__
        return f"canary verify: spent {shown}; the router at {where} did not answer ({why})"
    if r.status_code != 200:  # (the router says why in its error; the status is enough here)
        return (
            f"canary verify: spent {shown}; the router at {where} refused it (HTTP {r.status_code})"
        )
    return f"canary verify: spent {shown}; metered by the router at {where}"
