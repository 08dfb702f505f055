"""One rollout shared by every replica on one Redis (SPEC §10).

One replica decides: it holds a lease (``LEASE_KEY``, renewed every ``PERIOD_S``, gone
``LEASE_S`` after its holder dies, then taken by the next replica that asks) and writes
the rollout's state to ``STATE_KEY`` each period. The others follow: they read the state
each period and take it (``Rollouts.adopt``), so their weights move within a second. A
replica that starts, or takes over the lease, resumes from that state; only the step's
analysis starts over.

Steering on a follower is queued on ``COMMANDS_KEY`` for the decider, which answers on a
reply key the follower waits for (bounded). While Redis does not answer nobody decides:
the rollout holds where it is (circuits still roll back on each replica), and says so.
The decider judges its own calls (``step_min_requests`` counts what it saw).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from datetime import datetime
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis

from canary.safety.rollout import Refused, Transition
from canary.safety.rollouts import Rollouts
from canary.types import AsyncResource

log = structlog.get_logger("canary.fleet.rollout")

LEASE_KEY, STATE_KEY = "canary:rollout:leader", "canary:rollout:state"
COMMANDS_KEY, REPLY_KEY = "canary:rollout:commands", "canary:rollout:reply:"
PERIOD_S, LEASE_S, REPLY_WAIT_S = 0.25, 2.0, 3.0

# KEYS = [lease], ARGV = [replica, ttl ms]: 1 when this replica holds the lease now.
_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""


class SharedRollout(AsyncResource):
    """The lease, the shared state and the steering queue (see the module docstring)."""

    def __init__(self, client: Redis, rollouts: Rollouts, replica_id: str) -> None:
        self.client = client
        self.rollouts = rollouts
        self.replica_id = replica_id
        self._task: asyncio.Task[None] | None = None
        self._seen: bytes | str | None = None
        self._healthy = True

    async def start(self) -> None:
        self.rollouts.leading = False  # until the lease says otherwise
        self.rollouts.shared = self
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        self.rollouts.shared = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.rollouts.leading:  # hand over at once rather than after LEASE_S
            with contextlib.suppress(Exception):
                await self.client.eval(
                    "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end",
                    1,
                    LEASE_KEY,
                    self.replica_id,
                )
        self.rollouts.leading = True

    async def _run(self) -> None:
        while True:
            try:
                await self.step()
                if not self._healthy:
                    log.info("rollout.shared_back")
                self._healthy = True
            except Exception as exc:  # Redis down: nobody decides, the rollout holds
                self.rollouts.leading = False
                self.rollouts.persisted = "redis (not answering: the rollout holds)"
                if self._healthy:
                    log.warning("rollout.shared_unavailable", error=type(exc).__name__)
                self._healthy = False
            await asyncio.sleep(PERIOD_S)

    async def step(self) -> None:
        """One period: hold or take the lease; then decide and write, or read and follow."""
        mine = await self.client.eval(_LEASE, 1, LEASE_KEY, self.replica_id, int(LEASE_S * 1000))
        if mine and not self.rollouts.leading:
            await self._follow()  # take over from where the last decider left it
            log.info("rollout.deciding", replica=self.replica_id)
        self.rollouts.leading = bool(mine)
        if mine:
            await self._answer_commands()
            await self._write()
            self.rollouts.persisted = "redis (shared by replicas; this one decides)"
        else:
            await self._follow()
            self.rollouts.persisted = "redis (shared by replicas; another one decides)"

    async def _write(self) -> None:
        m = self.rollouts.machine
        if m is not None:
            await self.client.set(STATE_KEY, orjson.dumps(m.export()))

    async def _follow(self) -> None:
        raw = await self.client.get(STATE_KEY)
        if raw is None or raw == self._seen:
            return
        self._seen = raw
        with contextlib.suppress(ValueError):
            self.rollouts.adopt(orjson.loads(raw))

    async def _answer_commands(self) -> None:
        for _ in range(10):
            raw = await self.client.lpop(COMMANDS_KEY)
            if not isinstance(raw, bytes | str):
                return
            command = orjson.loads(raw)
            reply = self._apply(command.get("verb", ""))
            await self.client.set(
                REPLY_KEY + str(command.get("id")), orjson.dumps(reply), px=10_000
            )

    def _apply(self, verb: str) -> dict[str, Any]:
        try:
            return {"transition": self.rollouts.steer(verb).as_dict()}
        except Refused as exc:
            return {"refused": str(exc)}

    async def steer(self, verb: str) -> Transition:
        """Steer here when this replica decides, else through the queue to the one that does."""
        if self.rollouts.leading:
            t = self.rollouts.steer(verb)
            with contextlib.suppress(Exception):
                await self._write()  # followers see it on their next read
            return t
        ident = os.urandom(8).hex()
        try:
            await self.client.rpush(COMMANDS_KEY, orjson.dumps({"id": ident, "verb": verb}))
            reply = await self._reply(ident)
        except Refused:
            raise
        except Exception as exc:
            raise Refused(
                f"the replicas' shared state is not answering ({type(exc).__name__})"
            ) from None
        if "refused" in reply:
            raise Refused(reply["refused"])
        await self._follow()
        return _transition(reply["transition"])

    async def _reply(self, ident: str) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REPLY_WAIT_S
        while loop.time() < deadline:
            raw = await self.client.get(REPLY_KEY + ident)
            if raw is not None:
                reply: dict[str, Any] = orjson.loads(raw)
                return reply
            await asyncio.sleep(0.05)
        raise Refused(f"no replica decided within {REPLY_WAIT_S:g} s: is one holding the lease?")


def _transition(d: dict[str, Any]) -> Transition:
    return Transition(
        datetime.fromisoformat(d["at"]),
        d["backend"],
        d["from"],
        d["to"],
        int(d["step"]),
        float(d["percent"]),
        d["reason"],
    )
