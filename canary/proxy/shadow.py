"""Shadow traffic (SPEC §9): a copy of a client's call to the route's shadow backend,
read to its end, compared with the answer the client got, and discarded.

    Shadows.start   on a sampled call answered by another backend: a slot under the
    │               route's max_concurrency and max_usd_per_day, else skipped and counted;
    │               the client's answer is tapped (bounded) for the comparison
    └── _copy       a task of its own: the shadow backend's model_map, key and headers, a
        │           request id of its own, no retries, no fallback, no rollback window;
        │           read to its end under the backend's timeout_s, metered apart
        └── _pair   once the client's answer has ended too: compared, kept, discarded

The client's answer never waits for the copy: the copy is a task, the tap only appends
references to chunks already sent, and a failing or slow shadow backend touches nothing
but its own counters.
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any, Protocol

import structlog
from starlette.types import Scope

from canary.config.model import Backend, Config, Route
from canary.errors import RouterError
from canary.observe.meter import Meter
from canary.proxy.answers import Client
from canary.proxy.audit import audit_answer
from canary.proxy.body import Body
from canary.proxy.facts import TAP_BYTES, Tap, answer_facts
from canary.proxy.relay import Try
from canary.proxy.transport import RAW_ERRORS, Outgoing, Upstream
from canary.proxy.upload import Upload
from canary.safety.equivalence import Ask, Facts, compare, echoed_model

log = structlog.get_logger("canary.proxy")


class Sender(Protocol):
    """How a copy reaches its backend (``canary.proxy.plane.Plane``)."""

    upstream: Upstream

    def upstream_request(
        self, scope: Scope, backend: Backend, content: bytes, rid: bytes, rewritten: bool
    ) -> Outgoing: ...


class Call(Protocol):
    """What a shadow copy reads of the client's exchange (``canary.proxy.exchange``)."""

    cfg: Config | None
    route: Route | None
    scope: Scope
    body: Body | Upload | None  # never an upload: a streamed body gets no copy
    client: Client


class Copy:
    """One shadow copy in flight, waiting for the client's answer to end."""

    __slots__ = ("ask", "done", "primary", "route", "start", "tap")

    def __init__(self, route: Route, ask: Ask, start: float) -> None:
        self.route = route
        self.ask = ask
        self.start = start
        self.tap = Tap()
        self.done = asyncio.get_running_loop().create_future()
        self.primary: Facts | None = None

    def primary_ended(self, t: Try | None) -> None:
        """The client's answer is complete (``t``: its try): its facts, from the tap."""
        if self.done.done() or t is None:
            return
        status, tokens = t.status, t.tokens
        ok = t.outcome == "ok" and 200 <= status < 300
        now = asyncio.get_running_loop().time()
        first = self.tap.first_at
        self.done.set_result(
            answer_facts(
                b"".join(self.tap.chunks),
                status=status,
                ok=ok,
                latency_s=now - self.start,
                ttfb_s=None if first is None else first - self.start,
                tokens=tokens,
            )
        )


class Shadows:
    """Every route's shadow copies in this process (one per ``Plane``)."""

    def __init__(self, meter: Meter, upstream: Sender, rng: random.Random) -> None:
        self.meter = meter
        self.upstream = upstream
        self.rng = rng
        self.in_flight: dict[str, int] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        """Shut down: copies still in flight are cancelled (a copy's answer is discarded)."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def start(self, call: Call, answering: Backend) -> Copy | None:
        """A copy of ``call`` for its route's shadow backend, or None (not sampled, or
        skipped and counted, or ``answering`` is the shadow backend itself)."""
        route, cfg, body = call.route, call.cfg, call.body
        assert route is not None and cfg is not None and isinstance(body, Body)
        shadow = route.shadow
        if shadow is None or answering.name == shadow.backend:
            return None
        if shadow.sample < 1.0 and self.rng.random() >= shadow.sample:
            return None
        if self.in_flight.get(route.name, 0) >= shadow.max_concurrency:
            self.meter.shadow_skip(route.name, "concurrency")
            return None
        if self.meter.shadow_spent_today(route.name) >= shadow.max_usd_per_day:
            self.meter.shadow_skip(route.name, "budget")
            return None
        backend = cfg.backends[shadow.backend]
        copy = Copy(route, _ask(body, backend), asyncio.get_running_loop().time())
        self.in_flight[route.name] = self.in_flight.get(route.name, 0) + 1
        call.client.tap = copy.tap
        task = asyncio.get_running_loop().create_task(self._copy(call, backend, copy))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return copy

    async def _copy(self, call: Call, backend: Backend, copy: Copy) -> None:
        route, cfg, body = copy.route, call.cfg, call.body
        assert cfg is not None and isinstance(body, Body)
        try:
            facts, head = await self._send(call, backend, copy)
        except Exception as exc:  # a shadow never fails anything but itself
            log.warning(
                "shadow.failed", route=route.name, backend=backend.name, error=type(exc).__name__
            )
            now = asyncio.get_running_loop().time()
            facts, head = Facts(0, False, now - copy.start), None
        finally:
            self.in_flight[route.name] -= 1
        tokens = None
        if facts.prompt_tokens is not None and facts.completion_tokens is not None:
            tokens = (facts.prompt_tokens, facts.completion_tokens)
        price = cfg.pricing.get(backend.name, {}).get(body.accounted_model() or "")
        usd = (
            0.0
            if tokens is None or price is None
            else (tokens[0] * price.input + tokens[1] * price.output) / 1e6
        )
        self.meter.shadow_call(route.name, backend.name, facts.ok, tokens, usd)
        if head is not None and facts.ok:
            echoed = echoed_model(head)
            audit_answer(self.meter, backend, body.accounted_model(), echoed, "shadow")
        try:
            primary = await asyncio.wait_for(copy.done, backend.timeout_s + 1.0)
        except TimeoutError:
            return  # the client's answer never ended (it left): no pair
        self.meter.pair(route.name, compare(primary, facts, copy.ask))

    async def _send(self, call: Call, backend: Backend, copy: Copy) -> tuple[Facts, bytes | None]:
        """The copy sent and read to its end; its facts and its first bytes."""
        body = call.body
        assert isinstance(body, Body)
        content, rewritten = body.for_backend(backend)
        loop = asyncio.get_running_loop()
        rid = b"shadow-" + os.urandom(8).hex().encode()  # its own: no primary's metadata
        request = self.upstream.upstream_request(call.scope, backend, content, rid, rewritten)
        chunks: list[bytes] = []
        first: float | None = None
        async with asyncio.timeout(backend.timeout_s):
            response = await self.upstream.upstream.send(request)
            size = 0
            try:
                while chunk := await response.readany():  # to its end, streams included
                    if first is None:
                        first = loop.time()
                    if size < TAP_BYTES:
                        chunks.append(chunk)
                        size += len(chunk)
            except RAW_ERRORS as exc:
                raise response.failed(exc) from exc
            finally:
                await response.aclose()
        now = loop.time()
        raw = b"".join(chunks)
        ok = 200 <= response.status < 300
        facts = answer_facts(
            raw,
            status=response.status,
            ok=ok,
            latency_s=now - copy.start,
            ttfb_s=None if first is None else first - copy.start,
            tokens=None,
        )
        return facts, raw[:4096] if ok else None


def _ask(body: Body, backend: Backend) -> Ask:
    """What the client's body asks that the comparison must know."""
    parsed: dict[str, Any] | None
    try:
        parsed = body.json()
    except RouterError:
        parsed = None
    parsed = parsed or {}
    model = parsed.get("model")
    asked = backend.model_map.get(model, model) if isinstance(model, str) else None
    fmt = parsed.get("response_format") or parsed.get("text") or {}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if isinstance(fmt, dict) and isinstance(fmt.get("format"), dict):
        kind = fmt["format"].get("type")
    return Ask(
        model=asked,
        deterministic=parsed.get("temperature") == 0,
        json=kind in ("json_object", "json_schema"),
        tools=bool(parsed.get("tools")),
    )
