"""The spend audit's keys (SPEC §11): the SPEC's own lines parse with their defaults, and
every mistake is located by line and key path."""

from __future__ import annotations

import pytest

from canary.config.loader import parse_config
from canary.errors import ConfigError

BASE = """\
backends:
  legacy:
    base_url: http://127.0.0.1:9101/v1
  relay:
    base_url: https://user:pw@relay.example.com:8443/v1
routes:
  - name: chat
    weights: {legacy: 90, relay: 10}
"""


def parse(extra: str, billing: str = "") -> object:
    text = BASE.replace("/v1\nroutes", f"/v1\n{billing}routes") + extra
    return parse_config(text.encode(), "routes.yaml", environ={})


def test_the_spec_lines_and_their_defaults() -> None:
    """billing's url defaults to base_url's origin (no userinfo); the bars and alerts too."""
    cfg = parse("", "    billing: {api: new-api}\n")
    billing = cfg.backends["relay"].billing  # type: ignore[attr-defined]
    assert (billing.api, billing.url, billing.poll_s) == (
        "new-api", "https://relay.example.com:8443", 60.0
    )  # fmt: skip
    assert cfg.readiness.max_billing_ratio == 1.10  # type: ignore[attr-defined]
    assert cfg.readiness.min_runway_h is None  # type: ignore[attr-defined]
    assert (cfg.alerts.webhooks, cfg.alerts.min_runway_h) == ((), 24.0)  # type: ignore[attr-defined]
    off = parse("readiness: {max_billing_ratio: null, min_runway_h: 12}\n")
    assert off.readiness.max_billing_ratio is None  # type: ignore[attr-defined]
    assert off.readiness.min_runway_h == 12.0  # type: ignore[attr-defined]


_B = "    billing: "


@pytest.mark.parametrize(
    ("billing", "extra", "where"),
    [
        (_B + "{api: newapi}\n", "", "routes.yaml:6: backends.relay.billing.api: must be one"),
        (_B + "{api: sub2api, poll_s: 0}\n", "", "backends.relay.billing.poll_s: must be >= 1"),
        (_B + "{api: openrouter, url: ftp://x}\n", "", "backends.relay.billing.url: must be"),
        (_B + "{api: one-api, every: 5}\n", "", "backends.relay.billing.every: unknown key"),
        ("", "alerts: {webhooks: [not-a-url]}\n", "routes.yaml:9: alerts.webhooks[0]: must be an"),
        ("", "alerts: {min_runway_h: -1}\n", "alerts.min_runway_h: must be >= 0"),
        ("", "readiness: {max_billing_ratio: 0}\n", "readiness.max_billing_ratio: must be > 0"),
    ],
)  # fmt: skip
def test_mistakes_are_located(billing: str, extra: str, where: str) -> None:
    """File, line and key path, as every other config problem."""
    with pytest.raises(ConfigError) as info:
        parse(extra, billing)
    assert where in str(info.value)
