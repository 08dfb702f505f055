"""The operator's verbs that talk to a running router: ``status``, ``report`` and ``load``.

Every wait is bounded, and every failure to reach the router is one clear line on stderr
and exit 1 (``load`` reports connection errors in its figures instead: it ran). What they
print is rendered by ``canary.tools.console`` and ``canary.tools.tally``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as Bar

from canary.errors import NoCost, Unavailable
from canary.tools.console import output_console, render_report, render_status, report_data
from canary.tools.load import LoadOptions, Progress, run_load
from canary.tools.tally import LoadResult, format_result

DEFAULT_URL = "http://127.0.0.1:8080"
FETCH_TIMEOUT_S = 5.0


def status_url(url: str) -> str:
    """``/status`` of a router given by its base, with or without ``/v1`` or ``/status``."""
    base = url.rstrip("/")
    for suffix in ("/status", "/v1"):
        base = base.removesuffix(suffix)
    return base + "/status"


def fetch_status(url: str, timeout: float = FETCH_TIMEOUT_S, **client: Any) -> dict[str, Any]:
    """The router's ``/status`` document; ``Unavailable`` with a reason otherwise."""
    where = status_url(url)
    try:
        with httpx.Client(timeout=timeout, **client) as http:
            response = http.get(where)
    except httpx.TimeoutException:
        raise Unavailable(f"no answer from {where} within {timeout:g} s") from None
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        raise Unavailable(f"cannot reach {where}: {reason} (is `canary serve` running?)") from None
    if response.status_code != 200:
        raise Unavailable(f"{where} answered {response.status_code}, not a /status document")
    try:
        doc = response.json()
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise Unavailable(f"{where} did not answer with a JSON object")
    return doc


def add_url_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the router (default: {DEFAULT_URL})")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


Fetch = Callable[[str], dict[str, Any]]


def run_status(
    args: argparse.Namespace, console: Console | None = None, *, fetch: Fetch = fetch_status
) -> int:
    """``canary status``: 0 when the document was read, 1 when the router cannot be reached."""
    return _show("status", args, console, fetch, lambda doc: doc, render_status)


def run_report(
    args: argparse.Namespace, console: Console | None = None, *, fetch: Fetch = fetch_status
) -> int:
    """``canary report``: 1 when the router cannot be reached or reports no cost."""
    return _show("report", args, console, fetch, report_data, render_report)


def _show(
    verb: str,
    args: argparse.Namespace,
    console: Console | None,
    fetch: Fetch,
    prepare: Callable[[dict[str, Any]], Any],
    render: Callable[[Any], Any],
) -> int:
    """Read /status, shape it, then print it as JSON (``--json``) or for a person."""
    try:
        data = prepare(fetch(args.url))
    except (Unavailable, NoCost) as exc:
        print(f"canary {verb}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        (console or output_console()).print(render(data))
    return 0


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("url", help="the router's base URL, e.g. http://127.0.0.1:8080 (with or without /v1)")
    add("--qps", type=float, required=True, help="requests started per second")
    add("--duration", type=float, required=True, help="seconds of sending")
    add("--concurrency", type=int, default=256, help="most requests in flight (default: 256)")
    add("--stream", action="store_true", help="streamed completions (usage chunk included)")
    add("--model", default="gpt-4.1", help="the body's model (default: gpt-4.1)")
    add("--path", default="/v1/chat/completions", help="default: /v1/chat/completions")
    add("--api-key", help="client key sent as Bearer (default: $CANARY_CLIENT_KEY)")
    add("--timeout", type=float, default=30.0, help="per request, in seconds (default: 30)")
    add(
        "--drain",
        type=float,
        default=30.0,
        help="seconds to wait for the last answers (default: 30); the rest count as cancelled",
    )
    parser.epilog = (
        "Latency counts from each request's scheduled send time. Ctrl-C stops sending and "
        "prints the figures once the answers drain; a second Ctrl-C quits at once."
    )
    add("--json", action="store_true", help="print one JSON object, no progress bar")


def run_load_command(args: argparse.Namespace) -> int:
    """``canary load``: 0 when the run happened (errors included), 2 for bad arguments."""
    opts = LoadOptions(
        url=args.url,
        qps=args.qps,
        duration=args.duration,
        concurrency=args.concurrency,
        stream=args.stream,
        model=args.model,
        api_key=args.api_key or os.environ.get("CANARY_CLIENT_KEY") or None,
        path=args.path,
        timeout_s=args.timeout,
        drain_s=args.drain,
    )
    if problem := opts.problem():
        print(f"canary load: {problem}", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(_run(opts, bar=not args.json and sys.stderr.isatty()))
    except KeyboardInterrupt:
        print("canary load: interrupted", file=sys.stderr)
        return 130
    print(json.dumps(result) if args.json else format_result(result), flush=True)
    return 0


async def _run(opts: LoadOptions, *, bar: bool) -> LoadResult:
    """The first SIGINT/SIGTERM ends the schedule (answers still drain); a second SIGINT aborts."""
    loop, stop = asyncio.get_running_loop(), asyncio.Event()

    def first_signal() -> None:
        stop.set()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, first_signal)
    try:
        with _progress(opts, bar) as on_progress:
            return await run_load(opts, on_progress=on_progress, stop=stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


@contextlib.contextmanager
def _progress(opts: LoadOptions, shown: bool) -> Iterator[Callable[[Progress], None] | None]:
    """A rich progress bar on stderr (answers of all scheduled), or nothing."""
    if not shown:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Bar(*columns, TimeElapsedColumn(), console=Console(stderr=True)) as bar:
        task = bar.add_task("sent 0", total=opts.total)

        def update(p: Progress) -> None:
            bar.update(task, completed=p.done, description=f"sent {p.sent:,}")

        yield update
