"""``canary rollout status|promote|pause|resume|abort``: watch and steer a rollout (SPEC §10).

``status`` reads ``/status`` ``rollout`` and renders it for a person (``--json``: as served).
The steering verbs POST ``/admin/rollout/<verb>`` with the admin token (``--token``, else
``$CANARY_ADMIN_TOKEN``); the token is never printed. Exit codes: 0 done, 1 the router
could not be reached or refused, 2 (``status``) the rollout failed or was aborted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from typing import Any

import httpx

from canary.errors import Unavailable
from canary.tools.ops import DEFAULT_URL, FETCH_TIMEOUT_S, fetch_status

ACTIONS = ("status", "promote", "pause", "resume", "abort")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=ACTIONS, help="watch (status) or steer the rollout")
    p.add_argument("--url", default=DEFAULT_URL, help=f"the router (default: {DEFAULT_URL})")
    p.add_argument("--token", default=None, help="admin token (default: $CANARY_ADMIN_TOKEN)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


def run(args: argparse.Namespace) -> int:
    if args.action == "status":
        return _status(args)
    return _steer(args)


def _status(args: argparse.Namespace) -> int:
    try:
        doc = fetch_status(args.url)
    except Unavailable as exc:
        print(f"canary rollout: {exc}", file=sys.stderr)
        return 1
    rollout = doc.get("rollout")
    if args.json:
        print(json.dumps(rollout, indent=2))
    elif rollout is None:
        print("no rollout: routes.yaml has no rollout block (weights apply as written)")
    else:
        print(render(rollout))
    if rollout is None:
        return 1
    return 2 if rollout["state"] in ("failed", "aborted") else 0


def _steer(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("CANARY_ADMIN_TOKEN", "")
    if not token:
        print(
            f"canary rollout {args.action}: needs the admin token (--token or $CANARY_ADMIN_TOKEN)",
            file=sys.stderr,
        )
        return 1
    where = _base(args.url) + f"/admin/rollout/{args.action}"
    try:
        with httpx.Client(timeout=FETCH_TIMEOUT_S) as http:
            r = http.post(where, headers={"authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        print(f"canary rollout: cannot reach {where}: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    body = _body(r)
    if r.status_code != 200:
        message = body.get("error", {}).get("message") if isinstance(body, dict) else None
        print(
            f"canary rollout {args.action}: {r.status_code}: {message or r.text[:200]}",
            file=sys.stderr,
        )
        return 1
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        t = body["transition"]
        print(f"{t['backend']}: {t['from']} -> {t['to']} at {t['percent']:g}% ({t['reason']})")
    return 0


def _body(r: httpx.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return None


def _base(url: str) -> str:
    base = url.rstrip("/")
    for suffix in ("/status", "/v1"):
        base = base.removesuffix(suffix)
    return base


def _clock(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone().strftime("%H:%M:%S")


def render(r: dict[str, Any]) -> str:
    """The rollout for a person: where it is, what it needs, its analysis and history."""
    steps = " -> ".join(
        ("|" if s in r["gates"] else "") + (f"[{s:g}]" if i + 1 == r["step"] else f"{s:g}")
        for i, s in enumerate(r["steps"])
    )
    a = r["analysis"]
    lines = [
        f"rollout of {r['backend']} on {', '.join(r['routes'])}: {r['state']}, "
        f"step {r['step']} of {len(r['steps'])} at {r['percent']:g}% since {_clock(r['since'])}",
        f"steps     {steps}   (| = gate: waits for promote)",
        f"needs     {r['needs']}",
        f"analysis  over {a['elapsed_s']:g} s of {a['step_s']:g}: "
        f"{_side(r['backend'], a['canary'])}; baseline {_side('', a['baseline'])}",
    ]
    for c in a["checks"]:
        value = "no data" if c["value"] is None else f"{c['value']:.3f}"
        lines.append(f"  {c['check']:<22}{value:>9}  bar {c['threshold']:<6g} {c['verdict']}")
    if r.get("weights_line"):
        lines.append("make it permanent in routes.yaml:")
        lines += [f"  {route}: {line}" for route, line in r["weights_line"].items()]
    if r["history"]:
        lines.append("history")
        lines += [
            f"  {_clock(h['at'])}  {h['from']} -> {h['to']} ({h['percent']:g}%): {h['reason']}"
            for h in r["history"][:10]
        ]
    return "\n".join(lines)


def _side(name: str, s: dict[str, Any]) -> str:
    p95 = "-" if s["p95_ms"] is None else f"{s['p95_ms']:g} ms"
    return f"{name + ' ' if name else ''}{s['requests']} calls, {s['errors']} errors, p95 {p95}"
