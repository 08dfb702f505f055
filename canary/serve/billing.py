"""The billing poller (SPEC §11): a task beside the proxy, never on the request path.

Every ``TICK_S`` it adds this process's figures to the fleet's (``Share.totals``, in
``canary.fleet.billing_shared``) and asks whether this process decides. The decider judges
spent-credit alerts on the fleet's totals, starts a poll of each backend whose
``billing.poll_s`` is due (each next one ``poll_s`` later, +-10% jitter, so replicas and
backends do not poll in step), and publishes the state; the others adopt it, so every
``/status`` shows the same figures. A poll calls the backend's billing
API with the backend's own key (in the header that backend takes), is bounded as a whole
(``bound_s``: a slower one is dropped, as a failure), reads at most ``MAX_BODY`` per answer,
and on failure only sets the ledger's ``error``: it never raises, never counts against the
circuit, and the key is never part of what it shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable

import httpx
import orjson
import structlog

from canary.config.model import Backend, Billing, Config
from canary.config.store import ConfigStore
from canary.errors import BillingError
from canary.fleet.billing_shared import Figures, Share
from canary.observe.billing import Billing as Ledgers
from canary.observe.billing import Totals, totals_of
from canary.observe.billing_api import ENDPOINTS, Reading, parse
from canary.observe.meter import Meter
from canary.types import AsyncResource

log = structlog.get_logger("canary.serve.billing")

TICK_S = 0.5
MAX_BODY = 1 << 20
MAX_BOUND_S = 10.0


def bound_s(spec: Billing) -> float:
    """How long one poll may take: its period, between 1 and 10 s."""
    return min(MAX_BOUND_S, max(1.0, spec.poll_s))


class Poller(AsyncResource):
    """See the module docstring."""

    def __init__(
        self,
        store: ConfigStore,
        ledgers: Ledgers,
        share: Share,
        meter: Callable[[], Meter],
        client: httpx.AsyncClient,
        *,
        tick_s: float = TICK_S,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.ledgers, self.share = store, ledgers, share
        self.meter, self.client = meter, client
        self.tick_s = tick_s
        self.wall = wall
        self.rng = random.Random()
        self.due: dict[str, float] = {}  # backend -> wall time of its next poll
        self.polls: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._said: dict[str, str | None] = {}  # backend -> the last error logged

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        tasks = [t for t in [self._task, *self.polls.values()] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception as exc:  # the shared state is away: try again next tick
                log.debug("billing.tick_failed", error=type(exc).__name__)
            await asyncio.sleep(self.tick_s)

    async def tick(self) -> None:
        cfg = self.store.config
        if cfg is None:
            return
        if not await self.share.lead():
            await self.totals()  # this replica's figures join the fleet's all the same
            raw = await self.share.read()
            if raw is not None:
                self.ledgers.adopt(orjson.loads(raw))
            return
        totals = await self.totals()
        self.ledgers.judge_credit(totals, self.meter().credit_codes)
        now = self.wall()
        for name, backend in cfg.backends.items():
            spec = backend.billing
            if spec is None or name in self.polls or self.due.get(name, 0.0) > now:
                continue
            self.due[name] = now + spec.poll_s * self.rng.uniform(0.9, 1.1)
            task = asyncio.get_running_loop().create_task(self._poll(cfg, backend, spec))
            self.polls[name] = task
            task.add_done_callback(self._done(name))
        await self.share.publish(orjson.dumps(self.ledgers.export()))

    def _done(self, name: str) -> Callable[[asyncio.Task[None]], None]:
        def forget(_: asyncio.Task[None]) -> None:
            self.polls.pop(name, None)

        return forget

    async def totals(self) -> dict[str, Totals]:
        mine: Figures = {
            b: (t.metered_usd, t.credit_spent, t.served) for b, t in totals_of(self.meter()).items()
        }
        return {b: Totals(*f) for b, f in (await self.share.totals(mine)).items()}

    async def _poll(self, cfg: Config, backend: Backend, spec: Billing) -> None:
        ledger = self.ledgers.ledger(backend.name, spec.api)
        try:
            async with asyncio.timeout(bound_s(spec)):
                reading = await fetch(self.client, backend, spec)
                metered = (await self.totals()).get(backend.name, Totals()).metered_usd
        except (BillingError, TimeoutError, httpx.HTTPError, ValueError, OSError) as exc:
            ledger.error = _words(exc, backend, spec)
            self._say(backend.name, ledger.error)
            return
        ledger.record(self.wall(), reading, metered)
        self._say(backend.name, None)
        self.ledgers.judge(cfg, backend.name)

    def _say(self, backend: str, error: str | None) -> None:
        """One log line when a backend's polls start failing, or change how they fail."""
        if self._said.get(backend) != error:
            self._said[backend] = error
            if error is not None:
                log.warning("billing.poll_failed", backend=backend, error=error)


def _words(exc: BaseException, backend: Backend, spec: Billing) -> str:
    if isinstance(exc, TimeoutError):
        text = f"no answer within {bound_s(spec):g} s"
    elif isinstance(exc, BillingError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__} polling {spec.api} billing"
    return text.replace(backend.api_key, "***") if backend.api_key else text


async def fetch(client: httpx.AsyncClient, backend: Backend, spec: Billing) -> Reading:
    """The billing API's answers for ``backend``'s key, read (``canary.observe.billing_api``)."""
    answers = []
    for path in ENDPOINTS[spec.api]:
        async with client.stream("GET", spec.url + path, headers=_auth(backend)) as r:
            body = bytearray()
            async for chunk in r.aiter_bytes():
                body += chunk
                if len(body) > MAX_BODY:
                    raise BillingError(f"{path} answered more than {MAX_BODY >> 20} MiB")
            answers.append((r.status_code, bytes(body)))
    return parse(spec.api, answers)


def _auth(backend: Backend) -> dict[str, str]:
    """The backend's key as its API takes it (billing endpoints sit behind the same check)."""
    key = backend.api_key
    if not key:
        return {}
    if backend.api_key_header in ("x-api-key", "api-key"):
        return {backend.api_key_header: key}
    return {"authorization": f"Bearer {key}"}


@contextlib.asynccontextmanager
async def polling(
    store: ConfigStore,
    ledgers: Ledgers,
    share: Share,
    meter: Callable[[], Meter],
    transport: httpx.AsyncBaseTransport | None,
) -> AsyncIterator[Poller]:
    """The poller over its own HTTP client, while serving."""
    async with httpx.AsyncClient(transport=transport) as client:
        poller = Poller(store, ledgers, share, meter, client)
        async with poller:
            yield poller
