"""The simulator's control plane (``/_sim``): read and set its faults and its billing,
read and reset its stats. A pure step: the answer to one action, from the state given;
``canary.tools.simulate.app`` sends it."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Protocol

from canary.tools.simulate.asgi import Refused, json_object
from canary.tools.simulate.billing import SimBilling
from canary.tools.simulate.faults import Faults
from canary.tools.simulate.stats import Stats


class Steered(Protocol):
    """What the control plane reads and sets of a simulator."""

    faults: Faults
    billing: SimBilling | None
    stats: Stats


def answer(sim: Steered, method: str, path: str, body: bytes) -> dict[str, Any]:
    """The JSON answer to ``method path`` (200), or ``Refused`` (400, 404)."""
    action = f"{method} {path}"
    if action == "GET /_sim/faults":
        return asdict(sim.faults)
    if action == "POST /_sim/faults":
        try:
            sim.faults.update(json_object(body))
        except ValueError as exc:
            raise Refused(400, str(exc), "invalid_fault") from None
        return asdict(sim.faults)
    if action in ("GET /_sim/billing", "POST /_sim/billing"):
        if sim.billing is None:
            raise Refused(404, "This simulator does not bill (--billing)", "not_found")
        try:
            sim.billing.update(json_object(body) if method == "POST" else {})
        except ValueError as exc:
            raise Refused(400, str(exc), "invalid_billing") from None
        return asdict(sim.billing)
    if action == "GET /_sim/stats":
        return sim.stats.snapshot()
    if action == "POST /_sim/reset":
        in_flight = sim.stats.in_flight  # those still running decrement when they end
        sim.stats.reset()
        sim.stats.in_flight = in_flight
        return sim.stats.snapshot()
    raise Refused(404, f"Unknown control endpoint {action}", "not_found")
