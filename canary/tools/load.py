"""Open-loop load at a fixed arrival rate: the engine behind ``canary load``.

Request ``i`` is due at ``t0 + i / qps``, computed from ``t0`` (one scheduler loop, no
drifting per-request sleeps), and is sent then whether or not earlier ones came back.
Latency counts from the *scheduled* time, so a server that stalls cannot hide the
queueing it causes (no coordinated omission); a request held back by ``concurrency``
keeps counting too. After ``duration`` the requests still out get ``drain_s`` to finish,
then are cancelled and counted as ``cancelled``. Clock, sleep and transport are seams.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from canary.tools.tally import LoadResult, Tally
from canary.tools.tally import Outcome as Outcome  # re-exported: what each request gives
from canary.types import Clock, Sleep

MAX_REQUESTS = 10_000_000  # per run: the tallies keep a few floats per request
MAX_WAIT_S = 3600  # for --timeout and --drain: every wait is bounded
STOP_POLL_S = 0.1  # how soon the schedule sees ``stop`` at low rates
POOL_SIZE = 8  # connections per httpx client (see ``_slots``)


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
    # Requests waiting for a slot, at most, so memory stays bounded when the server
    # stalls; past that a request due is not sent and counts as the error "backlog".
    max_backlog: int = 20_000
    prompt: str = "hello canary"

    def problem(self) -> str | None:
        """What is wrong with these options, in words for the command line, if anything."""
        url = urlsplit(self.url)
        checks = [
            (url.scheme in ("http", "https") and bool(url.hostname), "URL must be http(s)://host"),
            (self.qps > 0, "--qps must be > 0"),
            (self.duration > 0, "--duration must be > 0"),
            (self.qps * self.duration <= MAX_REQUESTS, f"at most {MAX_REQUESTS:,} requests a run"),
            (1 <= self.concurrency <= 10_000, "--concurrency must be in [1, 10000]"),
            (0 < self.timeout_s <= MAX_WAIT_S, f"--timeout must be in (0, {MAX_WAIT_S}]"),
            (0 <= self.drain_s <= MAX_WAIT_S, f"--drain must be in [0, {MAX_WAIT_S}]"),
            (self.path.startswith("/"), "--path must start with /"),
        ]
        return next((message for ok, message in checks if not ok), None)

    @property
    def target(self) -> str:
        """``url`` + ``path``, without a doubled ``/v1`` (or whole path) when both carry it."""
        base = self.url.rstrip("/").removesuffix(self.path)
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
class Progress:
    """For a progress bar: requests sent so far, answered or failed, and scheduled in all."""

    sent: int
    done: int
    total: int
    elapsed: float


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
    async with contextlib.AsyncExitStack() as stack:
        send = _Sender(await _slots(stack, opts, transport), opts, clock)
        # t0 after the clients are built: that takes a while, and is not the server's
        run = _Run(opts, clock, on_progress, on_result)
        span = await run.schedule(send, stop, sleep)
        await run.drain()
    if run.bugs:
        raise run.bugs[0]
    return {
        "target": opts.target,
        "model": opts.model,
        "stream": opts.stream,
        "qps": opts.qps,
        "duration_s": opts.duration,
        "concurrency": opts.concurrency,
        "stopped_early": span < opts.duration,
        **run.tally.figures(span, stream=opts.stream),
    }


class _Run:
    """The schedule of one run: requests in flight, and each outcome told exactly once."""

    def __init__(
        self,
        opts: LoadOptions,
        clock: Clock,
        on_progress: Callable[[Progress], None] | None,
        on_result: Callable[[Outcome], None] | None,
    ) -> None:
        self.opts, self.clock = opts, clock
        self.on_progress, self.on_result = on_progress, on_result
        self.pending: dict[asyncio.Task[Outcome], float] = {}
        self.bugs: list[BaseException] = []
        self.t0 = clock()
        self.tally = Tally(self.t0)

    async def schedule(self, send: _Sender, stop: asyncio.Event | None, sleep: Sleep) -> float:
        """Start request ``i`` at ``t0 + i / qps``; the span sent for (shorter if stopped)."""
        opts, clock = self.opts, self.clock
        for i in range(opts.total):
            due = self.t0 + i / opts.qps
            while (wait := due - clock()) > 0 and not (stop and stop.is_set()):
                await sleep(min(wait, STOP_POLL_S))  # awaited here: the deadline is now's
            if stop is not None and stop.is_set():
                return clock() - self.t0
            self.tally.sent += 1
            if len(self.pending) >= opts.max_backlog + opts.concurrency:
                now = clock()
                self._record(Outcome(due, now, now, error="backlog"))  # the server stalled
                continue
            task = asyncio.create_task(send(due))
            self.pending[task] = due
            task.add_done_callback(self._finished)
            self._report()
        return opts.duration

    async def drain(self) -> None:
        """Give the requests still out ``drain_s`` to finish, then cancel the rest."""
        if self.pending:
            await asyncio.wait(set(self.pending), timeout=self.opts.drain_s)
        for task in list(self.pending):
            task.cancel()
        while self.pending:  # each cancelled task still reports once, through ``_finished``
            await asyncio.wait(set(self.pending))

    def _finished(self, task: asyncio.Task[Outcome]) -> None:
        due = self.pending.pop(task)
        if task.cancelled():
            o = Outcome(due, self.clock(), self.clock(), error="cancelled")
        elif (exc := task.exception()) is not None:
            self.bugs.append(exc)  # not a transport error: raised once the run is over
            return
        else:
            o = task.result()
        self._record(o)
        self._report()

    def _record(self, o: Outcome) -> None:
        self.tally.add(o)
        if self.on_result is not None:
            self.on_result(o)

    def _report(self) -> None:
        if self.on_progress is not None:
            done = self.tally.sent - len(self.pending)
            elapsed = self.clock() - self.t0
            self.on_progress(Progress(self.tally.sent, done, self.opts.total, elapsed))


async def _slots(
    stack: contextlib.AsyncExitStack, opts: LoadOptions, transport: httpx.AsyncBaseTransport | None
) -> asyncio.LifoQueue[httpx.AsyncClient]:
    """``concurrency`` slots, each naming the client to send with; a request holds one.

    Clients of at most ``POOL_SIZE`` connections: on each request and each answer httpcore
    1.0 checks every pooled connection against every other (O(n²)), so one pool of 256 costs
    milliseconds of CPU per call and the generator, not the server, would set the pace (50
    rather than 200 req/s on a small machine). Last in, first out: at a low rate one warm
    connection does all the work.
    """
    headers = {"authorization": f"Bearer {opts.api_key}"} if opts.api_key else {}
    timeout = httpx.Timeout(opts.timeout_s, connect=min(opts.timeout_s, 5.0))
    verify = httpx.create_ssl_context()  # one for all clients: each costs ~0.1 s of CPU
    slots: asyncio.LifoQueue[httpx.AsyncClient] = asyncio.LifoQueue()
    sizes = [POOL_SIZE] * (opts.concurrency // POOL_SIZE)
    sizes += [opts.concurrency % POOL_SIZE] if opts.concurrency % POOL_SIZE else []
    for size in reversed(sizes):
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        client = await stack.enter_async_context(
            httpx.AsyncClient(
                headers=headers, limits=limits, timeout=timeout, verify=verify, transport=transport
            )
        )
        for _ in range(size):
            slots.put_nowait(client)
    return slots


class _Sender:
    """Sends one request and says what came back; never raises for a transport error."""

    def __init__(
        self,
        slots: asyncio.LifoQueue[httpx.AsyncClient],
        opts: LoadOptions,
        clock: Clock,
    ) -> None:
        self.slots, self.clock = slots, clock
        self.url, self.stream = opts.target, opts.stream
        self.content = orjson.dumps(opts.body())

    async def __call__(self, due: float) -> Outcome:
        client = await self.slots.get()
        try:
            started = self.clock()
            seen: dict[str, Any] = {}
            try:
                await self._exchange(client, seen)
            except httpx.HTTPError as exc:
                seen["error"] = _kind(exc, "status" in seen)
            return Outcome(due, started, self.clock(), **seen)
        finally:
            self.slots.put_nowait(client)

    async def _exchange(self, client: httpx.AsyncClient, seen: dict[str, Any]) -> None:
        request = client.build_request(
            "POST", self.url, content=self.content, headers={"content-type": "application/json"}
        )
        response = await client.send(request, stream=True)
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
