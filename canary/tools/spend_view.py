"""``canary report``'s billed-against-metered section (SPEC §11), from ``/status.billing``.

``billing_data`` is the stable object ``report --json`` prints under ``billing``;
``billing_lines`` says the same for a person, one line per backend whose bill is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_KEYS = (
    "api",
    "billed_usd",
    "metered_usd",
    "ratio",
    "balance_usd",
    "runway_h",
    "since",
    "polled_at",
    "error",
)


def billing_data(doc: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per backend with ``billing``: its bill against its meter (null where unknown)."""
    billing = doc.get("billing")
    if not isinstance(billing, Mapping):
        return {}
    return {
        name: {key: figures.get(key) for key in _KEYS}
        for name, figures in sorted(billing.items())
        if isinstance(figures, Mapping)
    }


def _usd(value: Any) -> str:
    return "unknown" if value is None else f"${value:,.4f}"


def billing_lines(data: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``bill relay (new-api): billed $0.2600 for calls metered at $0.2000 (last hour
    1.30x); balance $4.7400, runway 3.2 h``; a failing poll says why."""
    lines = []
    for name, b in data.items():
        if b.get("polled_at") is None:
            lines.append(
                f"bill {name} ({b.get('api')}): not read yet: {b.get('error') or 'polling'}"
            )
            continue
        ratio = b.get("ratio")
        hour = "under $0.01 metered" if ratio is None else f"{ratio:.2f}x"
        runway = b.get("runway_h")
        lasts = "no burn" if runway is None else f"{runway:,.1f} h"
        line = (
            f"bill {name} ({b.get('api')}): billed {_usd(b.get('billed_usd'))} for calls "
            f"metered at {_usd(b.get('metered_usd'))} (last hour {hour}); "
            f"balance {_usd(b.get('balance_usd'))}, runway {lasts}"
        )
        if b.get("error"):
            line += f"; last poll failed: {b['error']}"
        lines.append(line)
    return lines
