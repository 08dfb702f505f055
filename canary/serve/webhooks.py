"""Rollout webhooks (SPEC §10): every transition POSTed as JSON to each ``rollout.webhooks``.

The body is ``{rollout, from, to, step, percent, reason, at}`` plus ``text``, one line a
Slack incoming webhook shows as is. Sent from a background task, never on the request
path: a transition only queues it (a bounded queue; the oldest is dropped when full). Each
POST is bounded (``TIMEOUT_S``) and tried ``TRIES`` times with a growing back-off. A URL
is never logged, only its host: a webhook's path or query is often its secret.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog

from canary.safety.rollout import Transition
from canary.safety.rollouts import Rollouts
from canary.types import Sleep

log = structlog.get_logger("canary.serve.webhooks")

TIMEOUT_S, TRIES, BACKOFF_S, QUEUE = 5.0, 3, 0.5, 100


def payload(t: Transition) -> dict[str, Any]:
    """What a webhook receives for one transition."""
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
    """Queues each transition of ``rollouts`` and POSTs it to the block's webhooks."""

    def __init__(self, rollouts: Rollouts, client: httpx.AsyncClient, sleep: Sleep) -> None:
        self.rollouts = rollouts
        self.client = client
        self.sleep = sleep
        self.queue: asyncio.Queue[tuple[tuple[str, ...], dict[str, Any]]] = asyncio.Queue(QUEUE)
        self.sent = self.failed = 0

    def on_transition(self, t: Transition) -> None:
        m = self.rollouts.machine
        urls = m.spec.webhooks if m is not None else ()
        if not urls:
            return
        if self.queue.full():
            self.queue.get_nowait()
            log.warning("rollout.webhook_dropped", reason="queue full")
        self.queue.put_nowait((urls, payload(t)))

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
        log.warning("rollout.webhook_failed", host=host, tries=TRIES, error=why)


@contextlib.asynccontextmanager
async def webhooks(
    rollouts: Rollouts, transport: httpx.AsyncBaseTransport | None, sleep: Sleep
) -> AsyncIterator[Webhooks]:
    """Send the rollout's webhooks from a background task while serving."""
    async with httpx.AsyncClient(transport=transport) as client:
        hooks = Webhooks(rollouts, client, sleep)
        rollouts.listeners.append(hooks.on_transition)
        task = asyncio.get_running_loop().create_task(hooks.run())
        try:
            yield hooks
        finally:
            rollouts.listeners.remove(hooks.on_transition)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
