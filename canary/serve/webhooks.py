"""Webhooks: one sender for rollout transitions (SPEC §10) and spend alerts (SPEC §11).

A rollout transition goes to ``rollout.webhooks`` and ``alerts.webhooks`` as
``{rollout, from, to, step, percent, reason, at}``; an alert goes to ``alerts.webhooks``
as ``{alert, backend, state, reason, at}`` (``canary.observe.alerts``). Both carry
``text``, one line a Slack incoming webhook shows as is. Sent from a background task, never
on the request path: telling only queues (a bounded queue; the oldest is dropped when full).
Each POST is bounded (``TIMEOUT_S``) and tried ``TRIES`` times with a growing back-off: one
retry policy for both. A URL is never logged, only its host: a webhook's path or query is
often its secret.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog

from canary.config.store import ConfigStore
from canary.observe.alerts import Alert, AlertBook
from canary.safety.rollout import Transition
from canary.safety.rollouts import Rollouts
from canary.types import Sleep

log = structlog.get_logger("canary.serve.webhooks")

TIMEOUT_S, TRIES, BACKOFF_S, QUEUE = 5.0, 3, 0.5, 100


def payload(t: Transition) -> dict[str, Any]:
    """What a webhook receives for one rollout transition."""
    text = (
        f"canary rollout of {t.backend}: {t.from_state} -> {t.to_state} "
        f"at step {t.step} ({t.percent:g}%): {t.reason}"
    )
    return {
        "rollout": t.backend,
        "from": t.from_state,
        "to": t.to_state,
        "step": t.step,
        "percent": t.percent,
        "reason": t.reason,
        "at": t.at.isoformat(),
        "text": text,
    }


class Webhooks:
    """A bounded queue of (urls, body) and the task that POSTs them."""

    def __init__(self, client: httpx.AsyncClient, sleep: Sleep) -> None:
        self.client = client
        self.sleep = sleep
        self.queue: asyncio.Queue[tuple[tuple[str, ...], dict[str, Any]]] = asyncio.Queue(QUEUE)
        self.sent = self.failed = 0

    def tell(self, urls: Iterable[str], body: dict[str, Any]) -> None:
        """Queue ``body`` for each of ``urls`` (each once); never waits."""
        targets = tuple(dict.fromkeys(urls))
        if not targets:
            return
        if self.queue.full():
            self.queue.get_nowait()
            log.warning("webhook.dropped", reason="queue full")
        self.queue.put_nowait((targets, body))

    async def run(self) -> None:
        while True:
            urls, body = await self.queue.get()
            for url in urls:
                await self._post(url, body)

    async def _post(self, url: str, body: dict[str, Any]) -> None:
        host = urlsplit(url).hostname
        for attempt in range(1, TRIES + 1):
            try:
                r = await self.client.post(url, json=body, timeout=TIMEOUT_S)
                if r.status_code < 300:
                    self.sent += 1
                    return
                why = f"status {r.status_code}"
            except httpx.HTTPError as exc:
                why = type(exc).__name__
            if attempt < TRIES:
                await self.sleep(BACKOFF_S * 2 ** (attempt - 1))
        self.failed += 1
        log.warning("webhook.failed", host=host, tries=TRIES, error=why)


@contextlib.asynccontextmanager
async def webhooks(
    store: ConfigStore,
    rollouts: Rollouts,
    alerts: AlertBook,
    transport: httpx.AsyncBaseTransport | None,
    sleep: Sleep,
) -> AsyncIterator[Webhooks]:
    """Tell the webhooks of rollout transitions and spend alerts while serving."""

    def alert_urls() -> tuple[str, ...]:
        return store.config.alerts.webhooks if store.config is not None else ()

    async with httpx.AsyncClient(transport=transport) as client:
        hooks = Webhooks(client, sleep)

        def on_transition(t: Transition) -> None:
            m = rollouts.machine
            hooks.tell([*(m.spec.webhooks if m is not None else ()), *alert_urls()], payload(t))

        def on_alert(a: Alert) -> None:
            hooks.tell(alert_urls(), a.payload())

        rollouts.listeners.append(on_transition)
        alerts.listeners.append(on_alert)
        task = asyncio.get_running_loop().create_task(hooks.run())
        try:
            yield hooks
        finally:
            rollouts.listeners.remove(on_transition)
            alerts.listeners.remove(on_alert)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
