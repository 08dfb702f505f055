"""The spend audit (SPEC §11): what a relay bills, held against what canary metered.

Design. The feature spans five modules, one per layer:

    config/spend.py          ``backends.<b>.billing``, ``alerts``, the two readiness bars
    proxy/credit.py          spent credit read from a 402/403/429 body: ``credit_spent``
    observe/billing_api.py   the four billing APIs' answers -> one ``Reading``
    observe/billing.py       (here) ledgers, the ``/status`` section, readiness, alerts
    observe/alerts.py        crossings told once, and once when they clear
    fleet/billing_shared.py  one poller per fleet (a lease), every replica's meter summed
    serve/billing.py         the poller: a task beside the proxy, never on the request path

A ``Ledger`` per backend keeps samples ``(wall time, spend counter, metered USD)`` taken at
each poll, the metered figure being the fleet's total at that moment (``Totals``), so both
sides cover the same span. ``billed_usd`` / ``metered_usd`` are the rises since polling
began (or since a counter went back: a top-up, a reset, a restarted fleet, which starts a
fresh span); ``ratio`` and ``runway_h`` use the last hour of samples. A failed poll only
sets ``error``: the figures stay what the last good poll said.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from canary.config.model import Config
from canary.observe.alerts import AlertBook
from canary.observe.billing_api import Reading
from canary.observe.document import BillingDoc, StatusDocument
from canary.observe.meter import Meter

HOUR_S = 3600.0
MIN_METERED_USD = 0.01  # below this a ratio is noise: null
_EPS = 1e-9
_MAX_SAMPLES = 4096  # an hour at the shortest poll_s (1 s), and some


@dataclass(frozen=True, slots=True)
class Totals:
    """A backend's fleet-wide figures: metered USD, calls refused for spent credit, and
    calls answered 2xx (lifetime counters: they only grow)."""

    metered_usd: float = 0.0
    credit_spent: int = 0
    served: int = 0


def totals_of(meter: Meter) -> dict[str, Totals]:
    """This meter's ``Totals`` per backend."""
    metered = meter.metered_usd()
    served: dict[str, int] = {}
    for (_, backend, cls), n in meter.requests.items():
        if cls == "2xx" and backend:
            served[backend] = served.get(backend, 0) + n
    names = set(metered) | set(served) | {b for b, _ in meter.failures}
    return {
        b: Totals(metered.get(b, 0.0), meter.failures.get((b, "credit_spent"), 0), served.get(b, 0))
        for b in names
    }


class Ledger:
    """One backend's bill against its meter (see the module docstring)."""

    def __init__(self, api: str) -> None:
        self.api = api
        self.samples: deque[tuple[float, float, float]] = deque(maxlen=_MAX_SAMPLES)
        self.start: tuple[float, float, float] | None = None
        self.balance: float | None = None
        self.polled_at: float | None = None
        self.error: str | None = None
        self.restarts = 0  # spans begun again because a counter went back

    def record(self, at: float, reading: Reading, metered: float) -> None:
        counter = reading.counter()
        last = self.samples[-1] if self.samples else None
        if last is None or counter < last[1] - _EPS or metered < last[2] - _EPS:
            self.restarts += last is not None
            self.samples.clear()
            self.start = (at, counter, metered)
        self.samples.append((at, counter, metered))
        while len(self.samples) > 2 and self.samples[1][0] <= at - HOUR_S:
            self.samples.popleft()  # keep one sample at or before the hour mark
        self.balance = reading.balance_usd
        self.polled_at = at
        self.error = None

    def hour(self) -> tuple[float, float, float]:
        """(billed USD, metered USD, seconds) over the last hour of samples."""
        if len(self.samples) < 2:
            return 0.0, 0.0, 0.0
        (t0, c0, m0), (t1, c1, m1) = self.samples[0], self.samples[-1]
        return c1 - c0, m1 - m0, t1 - t0

    def ratio(self) -> float | None:
        billed, metered, _ = self.hour()
        return billed / metered if metered >= MIN_METERED_USD else None

    def runway_h(self) -> float | None:
        """Hours the balance lasts at the last hour's burn; None: unknown or no burn."""
        billed, _, span = self.hour()
        if self.balance is None or billed <= _EPS or span <= 0:
            return None
        return self.balance / (billed / (span / HOUR_S))

    def doc(self) -> BillingDoc:
        billed = metered = None
        if self.start is not None and self.samples:
            billed = self.samples[-1][1] - self.start[1]
            metered = self.samples[-1][2] - self.start[2]
        ratio, runway = self.ratio(), self.runway_h()
        hour = self.hour()
        return {
            "api": self.api,
            "balance_usd": _round(self.balance),
            "billed_usd": _round(billed),
            "metered_usd": _round(metered),
            "ratio": None if ratio is None else round(ratio, 4),
            "runway_h": None if runway is None else round(runway, 2),
            "polled_at": _iso(self.polled_at),
            "error": self.error,
            "since": _iso(self.start[0] if self.start else None),
            "last_hour": {
                "billed_usd": round(hour[0], 6),
                "metered_usd": round(hour[1], 6),
                "span_s": round(hour[2], 1),
            },
            "restarts": self.restarts,
        }

    def export(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _LEDGER} | {"samples": list(self.samples)}

    @classmethod
    def adopt(cls, data: dict[str, Any]) -> Ledger:
        ledger = cls(str(data["api"]))
        for key in _LEDGER[1:]:
            value = data.get(key)
            setattr(ledger, key, tuple(value) if isinstance(value, list) else value)
        ledger.samples.extend(tuple(s) for s in data.get("samples", ()))
        return ledger


_LEDGER = ("api", "start", "balance", "polled_at", "error", "restarts")


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def _iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat()


class Billing:
    """Every backend's ledger and the spend alerts: what ``/status`` and readiness read."""

    def __init__(self, wall: Callable[[], float]) -> None:
        self.ledgers: dict[str, Ledger] = {}
        self.alerts = AlertBook(wall)
        self._credit: dict[str, tuple[int, int]] = {}  # backend -> (spent, served) last seen

    def ledger(self, backend: str, api: str) -> Ledger:
        ledger = self.ledgers.get(backend)
        if ledger is None or ledger.api != api:  # a new api is a new counter
            ledger = self.ledgers[backend] = Ledger(api)
        return ledger

    def judge(self, cfg: Config, backend: str) -> None:
        """Runway and ratio alerts for ``backend`` after a poll."""
        ledger = self.ledgers.get(backend)
        if ledger is None:
            return
        runway, bar = ledger.runway_h(), cfg.alerts.min_runway_h
        low = runway is not None and runway < bar
        words = runway_words(backend, ledger)
        self.alerts.judge(
            backend, "runway", low, words if low else f"{words} (back over {bar:g} h)"
        )
        bar_ratio = cfg.readiness.max_billing_ratio
        over = ratio_words(backend, ledger, bar_ratio)
        back = f"{backend}: " + (
            "the billing ratio is not checked (max_billing_ratio: null)"
            if bar_ratio is None
            else f"billed within {bar_ratio:g}x of its meter"
        )
        self.alerts.judge(backend, "billing_ratio", over is not None, over or back)

    def judge_credit(self, totals: Mapping[str, Totals], codes: Mapping[str, str]) -> None:
        """Spent credit begins with a new refusal, clears with a new 2xx and no refusal."""
        for backend, t in totals.items():
            seen = self._credit.get(backend)
            self._credit[backend] = (t.credit_spent, t.served)
            if seen is None:
                if t.credit_spent == 0:
                    continue
                seen = (0, t.served)
            if t.credit_spent > seen[0]:
                code = codes.get(backend, "402")
                self.alerts.judge(
                    backend, "credit_spent", True, f"{backend}: credit spent ({code})"
                )
            elif t.served > seen[1]:
                words = f"{backend}: answering again after spent credit"
                self.alerts.judge(backend, "credit_spent", False, words)

    def section(self, cfg: Config) -> dict[str, BillingDoc]:
        return {
            name: self.ledger(name, b.billing.api).doc()
            for name, b in cfg.backends.items()
            if b.billing is not None
        }

    def reasons(self, cfg: Config) -> list[str]:
        """Why a weighted canary is not ready on its bill, in words (SPEC §11)."""
        out = []
        bar = cfg.readiness
        canaries = sorted(
            {n for r in cfg.routes for n, w in r.weights.items() if w > 0 and n != r.baseline}
        )
        for name in canaries:
            ledger = self.ledgers.get(name)
            if ledger is None or cfg.backends[name].billing is None:
                continue
            over = ratio_words(name, ledger, bar.max_billing_ratio)
            if over is not None:
                out.append(f"{over} over the last hour")
            runway = ledger.runway_h()
            if bar.min_runway_h is not None and runway is not None and runway < bar.min_runway_h:
                out.append(f"{runway_words(name, ledger)} (under {bar.min_runway_h:g} h)")
        return out

    def export(self) -> dict[str, Any]:
        return {
            "ledgers": {b: ledger.export() for b, ledger in self.ledgers.items()},
            "alerts": self.alerts.export(),
        }

    def adopt(self, data: dict[str, Any]) -> None:
        self.ledgers = {b: Ledger.adopt(d) for b, d in data.get("ledgers", {}).items()}
        self.alerts.adopt(data.get("alerts", {}))


def ratio_words(name: str, ledger: Ledger, bar: float | None) -> str | None:
    """``relay: billed $1.32 for calls metered at $1.00 (1.32x)`` when over ``bar``."""
    ratio = ledger.ratio()
    if bar is None or ratio is None or ratio <= bar:
        return None
    billed, metered, _ = ledger.hour()
    return f"{name}: billed {money(billed)} for calls metered at {money(metered)} ({ratio:.2f}x)"


def money(usd: float) -> str:
    """``$1.32``; under a dollar, to the hundredth of a cent (``$0.0338``), so it reads."""
    return f"${usd:,.2f}" if abs(usd) >= 1 else f"${usd:.4f}"


def runway_words(name: str, ledger: Ledger) -> str:
    runway = ledger.runway_h()
    balance = money(ledger.balance or 0.0)
    if runway is None:
        return f"{name}: balance {balance}, no burn over the last hour"
    return f"{name}: balance {balance} lasts {runway:,.1f} h at the last hour's burn"


def apply_billing(doc: StatusDocument, billing: Billing, cfg: Config | None) -> None:
    """``billing`` into ``/status``: its section, its events, and its readiness reasons."""
    if cfg is None:
        return
    doc["billing"] = billing.section(cfg)
    doc["events"] = sorted(
        doc["events"] + [a.event() for a in billing.alerts.events],
        key=lambda e: datetime.fromisoformat(e["at"]),
        reverse=True,
    )
    reasons = billing.reasons(cfg)
    if not reasons:
        return
    migration = doc["migration"]
    if migration["ready_for_full_migration"]:
        migration["ready_for_full_migration"] = False
        migration["reason"] = "; ".join(reasons)
    else:
        migration["reason"] = "; ".join([migration["reason"], *reasons])
