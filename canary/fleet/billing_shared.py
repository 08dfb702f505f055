"""The spend audit across a fleet (SPEC §11): one process polls, every meter is summed.

``Share`` is what the poller (``canary.serve.billing``) asks: ``lead`` (does this process
poll and judge alerts now?), ``totals`` (the fleet's lifetime figures per backend, given
this process's own), ``publish``/``read`` (the decider's billing state, which the others
show). Three kinds:

- ``Alone``: one process; it leads, its meter is the fleet's.
- ``HostShare``: the workers of one ``serve --workers N`` without Redis. The lease is an
  ``flock`` in their shared directory (the kernel drops it with its holder); their meters
  are summed already (``Fleet.merged_meter``); the state is a file beside the lock.
- ``RedisShare``: replicas on one Redis. The lease is a key renewed each tick that lapses
  when its holder dies; each replica adds the *rise* of its own figures since its last
  push to three fleet counters (``HINCRBYFLOAT``/``HINCRBY``), so the sums only grow and
  survive a replica leaving; the state is one key.

Figures travel as (metered USD, calls refused for spent credit, calls answered 2xx).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO, Protocol

from redis.asyncio import Redis

Figures = dict[str, tuple[float, int, int]]

LEASE_KEY, STATE_KEY = "canary:billing:leader", "canary:billing:state"
SUMS = ("canary:billing:metered", "canary:billing:spent", "canary:billing:served")
STATE_TTL_MS = 600_000
_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""


class Share(Protocol):
    where: str

    async def lead(self) -> bool: ...
    async def totals(self, mine: Figures) -> Figures: ...
    async def publish(self, state: bytes) -> None: ...
    async def read(self) -> bytes | None: ...


class Alone:
    """One process: it polls, and its meter is the whole fleet's."""

    where = "this process"

    async def lead(self) -> bool:
        return True

    async def totals(self, mine: Figures) -> Figures:
        return mine

    async def publish(self, state: bytes) -> None:
        return None

    async def read(self) -> bytes | None:
        return None


# Not ``*.json``: each worker's own file there is ``<worker>.json`` (canary.fleet.workers).
_STATE = "billing.state"


class HostShare(Alone):
    """The workers of one host, through their shared directory (see the module docstring)."""

    def __init__(self, directory: str) -> None:
        self.folder = Path(directory)
        self.where = f"{directory} (the workers of this host)"
        self._lock: IO[bytes] | None = None

    async def lead(self) -> bool:
        if self._lock is not None:
            return True
        lock = (self.folder / "billing.lock").open("ab")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            return False
        self._lock = lock  # held until this process ends
        return True

    async def publish(self, state: bytes) -> None:
        tmp = self.folder / f".billing.{os.getpid()}.tmp"
        tmp.write_bytes(state)
        os.replace(tmp, self.folder / _STATE)

    async def read(self) -> bytes | None:
        try:
            return (self.folder / _STATE).read_bytes()
        except FileNotFoundError:
            return None

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


class RedisShare:
    """Replicas on one Redis (see the module docstring)."""

    where = "redis"

    def __init__(self, client: Redis, replica_id: str, lease_ms: int) -> None:
        self.client = client
        self.replica_id = replica_id
        self.lease_ms = lease_ms
        self._pushed: Figures = {}

    async def lead(self) -> bool:
        return bool(await self.client.eval(_LEASE, 1, LEASE_KEY, self.replica_id, self.lease_ms))

    async def totals(self, mine: Figures) -> Figures:
        pipe = self.client.pipeline(transaction=False)
        for backend, (usd, spent, served) in mine.items():
            was = self._pushed.get(backend, (0.0, 0, 0))
            if usd > was[0]:
                pipe.hincrbyfloat(SUMS[0], backend, usd - was[0])
            if spent > was[1]:
                pipe.hincrby(SUMS[1], backend, spent - was[1])
            if served > was[2]:
                pipe.hincrby(SUMS[2], backend, served - was[2])
        for key in SUMS:
            pipe.hgetall(key)
        results = await pipe.execute()
        self._pushed = dict(mine)  # pushed: the next push adds only what rose since
        metered, spent_all, served_all = results[-3:]
        out: Figures = {}
        for raw in {*metered, *spent_all, *served_all}:
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            out[name] = (
                float(metered.get(raw, 0)),
                int(spent_all.get(raw, 0)),
                int(served_all.get(raw, 0)),
            )
        return out

    async def publish(self, state: bytes) -> None:
        await self.client.set(STATE_KEY, state, px=STATE_TTL_MS)

    async def read(self) -> bytes | None:
        raw = await self.client.get(STATE_KEY)
        return raw if isinstance(raw, bytes) else None
