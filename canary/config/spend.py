"""Validation of the spend audit's keys (SPEC §11): ``backends.<b>.billing``, ``alerts``, and
the two readiness bars that may be ``null`` (off).

Kept apart from ``canary.config.validate`` (which calls these) so that module stays about
routing. Problems are located like every other (``backends.relay.billing.api: ...``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from canary.config.checks import Num, Reader, Rule
from canary.config.model import BILLING_APIS, Alerts, Billing, Readiness

_BILLING_KEYS = {"api", "url", "poll_s"}
_POLL = Num(minimum=1, maximum=86400)
_NULLABLE = {
    "max_billing_ratio": Num(strict_min=True, maximum=1000),
    "min_runway_h": Num(maximum=1e6),
}
_ALERTS = {"webhooks", "min_runway_h"}
_ALERT_RULES = {"min_runway_h": Num(maximum=1e6)}
# The bounds and choices of this module's blocks, for the schema (canary.config.schema).
SPEND_RULES: dict[type, Mapping[str, Rule]] = {Billing: {"poll_s": _POLL}, Alerts: _ALERT_RULES}
SPEND_CHOICES: dict[type, Mapping[str, Sequence[str]]] = {Billing: {"api": BILLING_APIS}}
READINESS_NULLABLE: Mapping[str, Rule] = _NULLABLE  # readiness bars that take null (off)
ApiName = Literal["new-api", "one-api", "openrouter", "sub2api"]


def billing_block(r: Reader, value: Any, path: str, base_url: str) -> Billing | None:
    """A backend's ``billing`` block, or None when it has none."""
    if value is None:
        return None
    path = f"{path}.billing"
    b = r.mapping(value, path, _BILLING_KEYS)
    api = r.string(b.get("api"), f"{path}.api")
    if api not in BILLING_APIS:
        r.p.add(f"{path}.api", f"must be one of {', '.join(BILLING_APIS)}")
        return None
    url = r.string(b.get("url"), f"{path}.url").rstrip("/") or origin(base_url)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        r.p.add(f"{path}.url", "must be an http:// or https:// URL with a host")
        return None
    given = r.values(b, path, {"poll_s": _POLL})
    return Billing(api=cast(ApiName, api), url=url, **given)


def origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: where the relays serve their billing APIs."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}" if parts.netloc else ""


def readiness_nulls(r: Reader, value: Any, readiness: Readiness) -> Readiness:
    """``readiness`` with the bars written as ``null`` turned off (None)."""
    if not isinstance(value, dict):
        return readiness
    off: dict[str, Any] = {key: None for key in _NULLABLE if key in value and value[key] is None}
    return dataclasses.replace(readiness, **off) if off else readiness


def alerts_block(r: Reader, value: Any) -> Alerts:
    """The ``alerts`` block; omitted: no webhook, runway alerts at the default."""
    a = r.mapping(value, "alerts", _ALERTS)
    urls: list[str] = []
    if a.get("webhooks") not in (None, []):
        urls = r.strings(a.get("webhooks"), "alerts.webhooks") or []
    for i, url in enumerate(urls):
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            r.p.add(f"alerts.webhooks[{i}]", "must be an http:// or https:// URL")
    given = r.values(a, "alerts", _ALERT_RULES)
    return Alerts(webhooks=tuple(urls), **given)
