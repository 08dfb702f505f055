"""``/status`` ``rollout``: where a progressive rollout stands, in figures and in words.

Built from ``canary.safety.rollouts.Rollouts`` when asked, never on the request path. Once
promoted, ``weights_line`` is what to write into routes.yaml to make the share permanent
(routes.yaml is never rewritten by canary). Webhook URLs are never shown: they may carry a
token.
"""

from __future__ import annotations

from collections.abc import Mapping

from canary.observe.document import CheckDoc, EventDoc, RolloutDoc, SideDoc
from canary.safety.analysis import Check, Figures
from canary.safety.rollout import PROMOTED, Transition
from canary.safety.rollouts import Rollouts


def _units(x: float) -> float | int:
    return int(x) if x == int(x) else x


def _side(f: Figures | None) -> SideDoc:
    f = f or Figures()
    rate = f.error_rate
    return {
        "requests": f.requests,
        "errors": f.errors,
        "error_rate": None if rate is None else round(rate, 4),
        "p95_ms": f.p95_ms,
    }


def _check(c: Check) -> CheckDoc:
    value = None if c.value is None else round(c.value, 4)
    return {"check": c.name, "value": value, "threshold": c.threshold, "verdict": c.verdict}


def _line(weights: Mapping[str, float]) -> str:
    inner = ", ".join(f"{k}: {_units(v)}" for k, v in weights.items())
    return f"weights: {{{inner}}}"


def rollout_section(rollouts: Rollouts) -> RolloutDoc | None:
    """The rollout's state for ``/status``; None without a rollout block."""
    m = rollouts.machine
    if m is None:
        return None
    spec, obs = m.spec, m.last
    doc: RolloutDoc = {
        "backend": spec.backend,
        "routes": list(spec.routes),
        "state": m.state,
        "step": m.step,
        "percent": _units(m.percent),
        "steps": [_units(s) for s in spec.steps],
        "gates": [_units(g) for g in spec.gates],
        "since": m.since.isoformat(),
        "needs": m.needs(),
        "analysis": {
            "elapsed_s": round(m.elapsed(), 1),
            "step_s": spec.step_s,
            "step_min_requests": spec.step_min_requests,
            "canary": _side(obs.canary if obs else None),
            "baseline": _side(obs.baseline if obs else None),
            "checks": [_check(c) for c in m.checks],
        },
        "history": [t.as_dict() for t in reversed(m.history)],
        "decides": rollouts.leading,
        "weights_line": None,
        "saved": rollouts.persisted,
    }
    if m.state == PROMOTED:
        doc["weights_line"] = {r: _line(w) for r, w in rollouts.overrides.items()}
    return doc


def rollout_events(rollouts: Rollouts) -> list[EventDoc]:
    """Rollout transitions in ``/status`` ``events`` form (oldest first)."""
    return [_event(t) for t in rollouts.events]


def _event(t: Transition) -> EventDoc:
    return {
        "at": t.at.isoformat(),
        "backend": t.backend,
        "from": t.from_state,
        "to": t.to_state,
        "reason": f"rollout step {t.step} ({t.percent:g}%): {t.reason}",
        "requests": t.requests,
        "errors": t.errors,
        "origin": "rollout",
    }
