"""``canary serve`` from the command line: its options, the built-in simulators and the
banner.

``--simulators auto`` (what ``make run`` uses) starts a ``canary simulate`` for every
backend whose ``base_url`` is on this machine and not answering yet, and stops them when
the router stops; the banner then says how to call the router, with curl and with the
openai client.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from canary import __version__

if TYPE_CHECKING:
    from canary.serve.server import ServeOptions

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def run_serve(args: argparse.Namespace) -> int:
    """``canary serve``: the router, after the simulators ``--simulators auto`` asks for."""
    from canary.serve.drain import default_grace_s
    from canary.serve.server import ServeOptions, serve

    log_json = {"auto": None, "json": True, "console": False}[args.log_format]
    options = ServeOptions(
        config_path=args.config,
        host=args.host,
        port=args.port,
        workers=max(1, args.workers),
        access_log=not args.no_access_log,
        watch=not args.no_watch,
        log_json=log_json,
        log_level=args.log_level,
        drain_grace_s=(
            default_grace_s(args.host) if args.drain_grace_s is None else args.drain_grace_s
        ),
        drain_timeout_s=args.drain_timeout_s,
        clock_offset_file=os.environ.get("CANARY_CLOCK_OFFSET_FILE") or None,  # tests only
    )
    with _simulators(args.config if args.simulators == "auto" else None) as started:
        _banner(options, started)
        return serve(options)


@contextlib.contextmanager
def _simulators(config_path: str | None) -> Iterator[dict[str, str]]:
    """Start ``canary simulate`` for local backends that are down; stop them on exit."""
    from canary.config.loader import load_config
    from canary.errors import ConfigError

    procs: list[subprocess.Popen[bytes]] = []
    started: dict[str, str] = {}
    try:
        cfg = load_config(config_path) if config_path else None
    except ConfigError:
        cfg = None  # serve will report the problems and keep /readyz at 503
    try:
        for b in cfg.backends.values() if cfg else ():
            url = urlsplit(b.base_url)
            port = url.port or 80
            if url.hostname not in LOOPBACK or _listening(url.hostname, port):
                continue
            cmd = [
                sys.executable,
                "-m",
                "canary",
                "simulate",
                "--port",
                str(port),
                "--name",
                b.name,
            ]
            if b.billing is not None:  # a relay that bills, so the spend audit shows
                cmd += ["--billing", b.billing.api]
            procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL))
            started[b.name] = b.base_url
        deadline = time.monotonic() + 15
        for name, base in started.items():
            url = urlsplit(base)
            while not _listening(url.hostname or "127.0.0.1", url.port or 80):
                if time.monotonic() > deadline:
                    raise SystemExit(f"canary: the simulator for {name} did not start on {base}")
                time.sleep(0.05)
        yield started
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _banner(options: ServeOptions, simulated: dict[str, str]) -> None:
    host = "127.0.0.1" if options.host in ("0.0.0.0", "::") else options.host
    base = f"http://{host}:{options.port}"
    key = "os.environ['CANARY_CLIENT_KEY']" if os.environ.get("CANARY_API_KEYS") else "'unused'"
    header = (
        " -H 'authorization: Bearer $CANARY_CLIENT_KEY'"
        if os.environ.get("CANARY_API_KEYS")
        else ""
    )
    workers = f"{options.workers} worker(s)"
    lines = [f"canary {__version__} on {base}  (config {options.config_path}, {workers})"]
    for name, url in simulated.items():
        lines.append(f"  {name}: built-in simulated provider at {url}")
    python = (
        f"import os, openai; c = openai.OpenAI(base_url='{base}/v1', api_key={key}); "
        "r = c.chat.completions.with_raw_response.create(model='gpt-4.1', "
        "messages=[{'role': 'user', 'content': 'hello'}]); "
        "print(r.headers['x-canary-backend'], '->', r.parse().choices[0].message.content)"
    )
    body = '{"model": "gpt-4.1", "messages": [{"role": "user", "content": "hello"}]}'
    lines += [
        "",
        "Try it:",
        f"  curl -si {base}/v1/chat/completions{header} \\",
        f"    -H 'content-type: application/json' -d '{body}'",
        "",
        f'  .venv/bin/python -c "{python}"',
        "",
        f"  status: curl -s {base}/status    (for a person: .venv/bin/canary status --url {base})",
        f"  dashboard: {base}/dashboard    metrics: {base}/metrics",
        f"  cost and savings: .venv/bin/canary report --url {base}",
        "",
    ]
    print("\n".join(lines), flush=True)
