"""``canary demo --scenario forgery``: a relay that names the asked model, bills honest
counts, never fails, and answers from another model half the time.

The router sends a fifth of the calls to the relay and copies the rest to it (``shadow``),
with ``readiness.min_same_model_p`` set. After
``CALLS`` calls at temperature 1, ``/status`` shows what each check saw: no error, no
model mismatch in the audit, equal prompt tokens, and the shadow pairs' same-model
p-value. Then ``canary verify --distribution`` samples both simulators and prints its
verdict. Exit 0 when the forgery stayed invisible to the audit and the same-model test
caught it.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from canary.tools.demo.run import _child, _free_port, _wait_ready

ASKED, SUBSTITUTE, SHARE = "gpt-4.1", "gpt-4o-mini", 0.5
CALLS = 120
ROUTES = """\
# written by `canary demo --scenario forgery`
backends:
  legacy: {{base_url: "http://127.0.0.1:{legacy}/v1", timeout_s: 10}}
  relay: {{base_url: "http://127.0.0.1:{relay}/v1", timeout_s: 10}}
routes:
  - name: chat
    weights: {{legacy: 80, relay: 20}}
    baseline: legacy
    shadow: {{backend: relay, sample: 1.0, max_concurrency: 8}}
readiness: {{min_requests: 10, min_same_model_p: 0.01}}
pricing:
  legacy: {{gpt-4.1: {{input: 8.00, output: 8.00}}}}
  relay: {{gpt-4.1: {{input: 1.10, output: 1.10}}}}
"""
PROMPTS = ("Tell me about the sea.", "Name a colour.", "Write a line of a song.", "Say hi.")


def _traffic(router: str) -> tuple[int, int]:
    """CALLS chat calls at temperature 1: (failed, answered by legacy and so copied)."""
    failed = copied = 0
    with httpx.Client(base_url=router, timeout=10) as client:
        for i in range(CALLS):
            body = {
                "model": ASKED,
                "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                "temperature": 1,
            }
            r = client.post("/v1/chat/completions", json=body)
            failed += r.status_code != 200
            copied += r.headers.get("x-canary-backend") == "legacy"
    return failed, copied


def _shadow(router: str, copied: int) -> dict[str, Any]:
    """``/status`` once the shadow copies have all been compared (bounded wait)."""
    deadline = time.monotonic() + 20
    with httpx.Client(timeout=2) as client:
        while True:
            doc: dict[str, Any] = client.get(f"{router}/status").json()
            chat = (doc.get("shadow") or {}).get("chat") or {}
            copies = chat.get("pairs", 0) + chat.get("errors", 0)
            if copies + sum(chat.get("skipped", {}).values()) >= copied:
                return doc
            if time.monotonic() > deadline:
                return doc
            time.sleep(0.1)


def _report(doc: dict[str, Any], failed: int) -> bool:
    chat = doc["shadow"]["chat"]
    compare = chat["compare"]
    audit = (doc.get("audit") or {}).get("relay", {}).get(ASKED, {})
    p = compare.get("same_model_p")
    lines = [
        f"  client calls: {CALLS}, failed: {failed}; shadow pairs: {chat['pairs']}",
        f"  model audit of relay: {audit.get('match', 0)} answers named {ASKED}, "
        f"{audit.get('mismatch', 0)} another model",
        f"  prompt tokens equal on {compare['prompt_tokens_match']:.0%} of pairs",
        f"  shadow same-model p (answer lengths, signed rank): {'-' if p is None else f'{p:.2g}'}",
        f"  verdict: {doc['migration']['reason']}",
    ]
    print("\n".join(lines), flush=True)
    return failed == 0 and not audit.get("mismatch")


def run_forgery_demo() -> int:
    """The story above; 0 when only the same-model test caught the forgery."""
    ports = {name: _free_port() for name in ("legacy", "relay", "router")}
    forged = ["--substitute-model", SUBSTITUTE, "--substitute-rate", str(SHARE)]
    with tempfile.TemporaryDirectory(prefix="canary-demo-") as tmp:
        config = Path(tmp) / "routes.yaml"
        config.write_text(ROUTES.format(**ports))
        urls = {name: f"http://127.0.0.1:{p}" for name, p in ports.items()}
        commands = {
            "legacy": ["simulate", "--port", str(ports["legacy"]), "--name", "legacy"],
            "relay": ["simulate", "--port", str(ports["relay"]), "--name", "relay", *forged],
            "router": ["serve", "-c", str(config), "--port", str(ports["router"])],
        }
        commands["router"] += ["--no-watch", "--no-access-log"]
        ready = {"legacy": "/_sim/stats", "relay": "/_sim/stats", "router": "/readyz"}
        with open(Path(tmp) / "processes.log", "w+b") as log, contextlib.ExitStack() as stack:
            procs = {n: stack.enter_context(_child(c, log)) for n, c in commands.items()}
            with httpx.Client(timeout=1.0) as client:
                deadline = time.monotonic() + 20
                for name, proc in procs.items():
                    _wait_ready(client, name, proc, urls[name] + ready[name], deadline)
            print(
                f"canary demo: the relay names {ASKED} and bills honest counts, but answers "
                f"from {SUBSTITUTE} in {SHARE:.0%} of calls; {CALLS} calls at temperature 1",
                flush=True,
            )
            failed, copied = _traffic(urls["router"])
            unseen = _report(_shadow(urls["router"], copied), failed)
            print("canary verify --distribution:", flush=True)
            verify = [sys.executable, "-m", "canary", "verify", "-c", str(config)]
            code = subprocess.run([*verify, "--distribution"], check=False, timeout=300)
    caught = code.returncode == 1
    print(
        "demo: OK (the audit saw nothing; the same-model test caught it)"
        if unseen and caught
        else "demo: the story did not end as told",
        flush=True,
    )
    return 0 if unseen and caught else 1
