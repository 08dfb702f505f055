"""Open-loop load at a fixed arrival rate: the engine behind ``canary load``.

Request ``i`` is due at ``t0 + i / qps``, computed from ``t0`` (one scheduler loop, no
drifting per-request sleeps), and is sent then whether or not earlier ones came back.
Latency counts from the *scheduled* time, so a server that stalls cannot hide the
queueing it causes (no coordinated omission); a request held back by ``concurrency``
keeps counting too. After ``duration`` the requests still out get ``drain_s`` to finish,
then are cancelled and counted as ``cancelled``. Clock, sleep and transport are seams.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as Bar

from canary.tally import LoadResult, Tally, format_result

MAX_REQUESTS = 10_000_000  # per run: the tallies keep a few floats per request


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """One run. ``url`` is the router's base, with or without ``/v1``."""

    url: str
    qps: float
    duration: float
    concurrency: int = 256
    stream: bool = False
    model: str = "gpt-4.1"
    api_key: str | None = field(default=None, repr=False)
    path: str = "/v1/chat/completions"
    timeout_s: float = 30.0
    drain_s: float = 30.0
    prompt: str = "hello canary"

    def problem(self) -> str | None:
        """What is wrong with these options, in words for the command line, if anything."""
        url = urlsplit(self.url)
        checks = [
            (url.scheme in ("http", "https") and bool(url.hostname), "URL must be http(s)://host"),
            (self.qps > 0, "--qps must be > 0"),
            (self.duration > 0, "--duration must be > 0"),
            (self.qps * self.duration <= MAX_REQUESTS, f"at most {MAX_REQUESTS:,} requests a run"),
            (self.concurrency >= 1, "--concurrency must be >= 1"),
            (self.timeout_s > 0, "--timeout must be > 0"),
            (self.drain_s >= 0, "--drain must be >= 0"),
            (self.path.startswith("/"), "--path must start with /"),
        ]
        return next((message for ok, message in checks if not ok), None)

    @property
    def target(self) -> str:
        """``url`` + ``path``, without a doubled ``/v1`` when both carry it."""
        base = self.url.rstrip("/")
        if base.endswith("/v1") and (self.path == "/v1" or self.path.startswith("/v1/")):
            base = base[: -len("/v1")]
        return base + self.path

    @property
    def total(self) -> int:
        """How many requests the schedule holds."""
        return max(1, round(self.qps * self.duration))

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": self.prompt}],
        }
        if self.stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        return body


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request. Times are on the run's clock; ``status`` 0 means no HTTP answer."""

    scheduled: float
    started: float
    finished: float
    status: int = 0
    error: str | None = None  # timeout | connect | cut | transport | cancelled
    first_byte: float | None = None
    backend: str | None = None
    fallback: str | None = None
    usage: tuple[int, int] | None = None  # (input, output) tokens, when the answer said

    @property
    def ok(self) -> bool:
        return self.error is None and 200 <= self.status < 300

    @property
    def answered(self) -> bool:
        """A whole HTTP response came back (whatever its status)."""
        return self.status != 0 and self.error is None


@dataclass(frozen=True, slots=True)
class Progress:
    sent: int
    done: int
    total: int
    elapsed: float


Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


async def run_load(
    opts: LoadOptions,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    on_result: Callable[[Outcome], None] | None = None,
    stop: asyncio.Event | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
) -> LoadResult:
    """Send ``opts.total`` requests on schedule; the run's figures (``Tally.figures``).

    ``stop`` ends the schedule early (the drain still applies). ``on_result`` sees every
    request once, including those cancelled at the end of the drain.
    """
    headers = {"authorization": f"Bearer {opts.api_key}"} if opts.api_key else {}
    limits = httpx.Limits(
        max_connections=opts.concurrency, max_keepalive_connections=opts.concurrency
    )
    timeout = httpx.Timeout(opts.timeout_s, connect=min(opts.timeout_s, 5.0))
    slots = asyncio.Semaphore(opts.concurrency)
    pending: dict[asyncio.Task[Outcome], float] = {}
    bugs: list[BaseException] = []
    t0 = clock()
    tally = Tally(t0)

    def report() -> None:
        if on_progress is not None:
            done = tally.sent - len(pending)
            on_progress(Progress(tally.sent, done, opts.total, clock() - t0))

    def finished(task: asyncio.Task[Outcome]) -> None:
        due = pending.pop(task)
        if task.cancelled():
            o = Outcome(due, clock(), clock(), error="cancelled")
        elif (exc := task.exception()) is not None:
            bugs.append(exc)  # not a transport error: raised once the run is over
            return
        else:
            o = task.result()
        tally.add(o)
        if on_result is not None:
            on_result(o)
        report()

    async with httpx.AsyncClient(
        headers=headers, limits=limits, timeout=timeout, transport=transport
    ) as client:
        send = _Sender(client, opts, slots, clock)
        for i in range(opts.total):
            due = t0 + i / opts.qps
            if (wait := due - clock()) > 0:
                await _sleep_or_stop(sleep, wait, stop)
            if stop is not None and stop.is_set():
                break
            task = asyncio.create_task(send(due))
            pending[task] = due
            task.add_done_callback(finished)
            tally.sent += 1
            report()
        if pending:
            await asyncio.wait(set(pending), timeout=opts.drain_s)
        for task in list(pending):
            task.cancel()
        while pending:  # each cancelled task still reports once, through ``finished``
            await asyncio.wait(set(pending))
    if bugs:
        raise bugs[0]
    return {
        "target": opts.target,
        "model": opts.model,
        "stream": opts.stream,
        "qps": opts.qps,
        "duration_s": opts.duration,
        "concurrency": opts.concurrency,
        **tally.figures(opts.duration, stream=opts.stream),
    }


async def _sleep_or_stop(sleep: Sleep, seconds: float, stop: asyncio.Event | None) -> None:
    if stop is None:
        await sleep(seconds)
        return
    both = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(sleep(seconds))}
    try:
        await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in both:
            waiter.cancel()


class _Sender:
    """Sends one request and says what came back; never raises for a transport error."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        opts: LoadOptions,
        slots: asyncio.Semaphore,
        clock: Clock,
    ) -> None:
        self.client, self.slots, self.clock = client, slots, clock
        self.url, self.stream = opts.target, opts.stream
        self.content = orjson.dumps(opts.body())

    async def __call__(self, due: float) -> Outcome:
        async with self.slots:
            started = self.clock()
            seen: dict[str, Any] = {}
            try:
                await self._exchange(seen)
            except httpx.HTTPError as exc:
                seen["error"] = _kind(exc, "status" in seen)
            return Outcome(due, started, self.clock(), **seen)

    async def _exchange(self, seen: dict[str, Any]) -> None:
        request = self.client.build_request(
            "POST", self.url, content=self.content, headers={"content-type": "application/json"}
        )
        response = await self.client.send(request, stream=True)
        try:
            seen["status"] = response.status_code
            seen["backend"] = response.headers.get("x-canary-backend")
            seen["fallback"] = response.headers.get("x-canary-fallback")
            if self.stream and response.status_code == 200:
                await self._read_events(response, seen)
            else:
                seen["usage"] = _usage(_json(await response.aread()))
        finally:
            await response.aclose()

    async def _read_events(self, response: httpx.Response, seen: dict[str, Any]) -> None:
        """Read the whole SSE stream; the usage chunk gives the tokens; no [DONE] is a cut."""
        done = False
        async for line in response.aiter_lines():
            seen.setdefault("first_byte", self.clock())
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
            elif "usage" in data and (usage := _usage(_json(data))) is not None:
                seen["usage"] = usage
        if not done:
            seen["error"] = "cut"


def _json(raw: bytes | str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _usage(payload: Any) -> tuple[int, int] | None:
    usage = payload.get("usage") if isinstance(payload, Mapping) else None
    if not isinstance(usage, Mapping):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens", 0)
    if isinstance(prompt, int) and isinstance(completion, int):
        return prompt, completion
    return None


def _kind(exc: httpx.HTTPError, answered: bool) -> str:
    """Which kind of failure: a connection never made, a wait too long, or a cut."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return "connect"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    return "cut" if answered else "transport"


# --- the verb -------------------------------------------------------------------------------


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
    add("--drain", type=float, default=30.0, help="seconds to wait for the last answers")
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
