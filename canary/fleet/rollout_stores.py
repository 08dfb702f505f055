"""Where replicas (or the workers of one host) share a rollout: Redis, or a directory.

``SharedRollout`` (``canary.fleet.rollout_shared``) runs one protocol over either store: a
lease that says who decides, the rollout's state, a queue of steering commands for the
decider and their replies. ``RedisStore`` serves replicas on one Redis; ``FileStore``
serves the workers of one host (and a lone process) through the state file: its lease is
an ``flock`` the kernel drops when the holder dies, and the state file is what a
restarted router resumes from.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO, Protocol

from redis.asyncio import Redis

LEASE_KEY, STATE_KEY = "canary:rollout:leader", "canary:rollout:state"
COMMANDS_KEY, REPLY_KEY = "canary:rollout:commands", "canary:rollout:reply:"

# KEYS = [lease], ARGV = [replica, ttl ms]: 1 when this replica holds the lease now.
_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end"


class Store(Protocol):
    where: str  # for /status: where the state is kept

    async def lease(self, holder: str, ttl_ms: int) -> bool: ...
    async def release(self, holder: str) -> None: ...
    async def get_state(self) -> bytes | None: ...
    async def set_state(self, state: bytes) -> None: ...
    async def push(self, ident: str, command: bytes) -> None: ...
    async def pop(self) -> bytes | None: ...
    async def reply(self, ident: str, answer: bytes) -> None: ...
    async def answer(self, ident: str) -> bytes | None: ...


def _bytes(value: object) -> bytes | None:
    if isinstance(value, str):
        return value.encode()
    return value if isinstance(value, bytes) else None


class RedisStore:
    """Replicas on one Redis."""

    where = "redis"

    def __init__(self, client: Redis) -> None:
        self.client = client

    async def lease(self, holder: str, ttl_ms: int) -> bool:
        return bool(await self.client.eval(_LEASE, 1, LEASE_KEY, holder, ttl_ms))

    async def release(self, holder: str) -> None:
        await self.client.eval(_RELEASE, 1, LEASE_KEY, holder)

    async def get_state(self) -> bytes | None:
        return _bytes(await self.client.get(STATE_KEY))

    async def set_state(self, state: bytes) -> None:
        await self.client.set(STATE_KEY, state)

    async def push(self, ident: str, command: bytes) -> None:
        await self.client.rpush(COMMANDS_KEY, command)

    async def pop(self) -> bytes | None:
        return _bytes(await self.client.lpop(COMMANDS_KEY))

    async def reply(self, ident: str, answer: bytes) -> None:
        await self.client.set(REPLY_KEY + ident, answer, px=10_000)

    async def answer(self, ident: str) -> bytes | None:
        return _bytes(await self.client.get(REPLY_KEY + ident))


class FileStore:
    """The workers of one host (or one process): the state file and a folder beside it.

    Small local files: written in place of a network round trip, off the request path."""

    def __init__(self, path: Path, why: str) -> None:
        self.path = path
        self.where = f"{path} ({why})"
        self.folder = path.with_name(path.name + ".d")
        self._lock: IO[bytes] | None = None

    async def lease(self, holder: str, ttl_ms: int) -> bool:
        return self._lock is not None or self._take_lock()

    def _take_lock(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock").open("ab")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            return False
        self._lock = lock  # held until release, or until this process dies
        return True

    async def release(self, holder: str) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    async def get_state(self) -> bytes | None:
        with contextlib.suppress(FileNotFoundError):
            return self.path.read_bytes()
        return None

    async def set_state(self, state: bytes) -> None:
        _write(self.path, state)

    async def push(self, ident: str, command: bytes) -> None:
        _write(self.folder / f"{ident}.cmd", command)

    async def pop(self) -> bytes | None:
        if not self.folder.is_dir():
            return None
        for entry in sorted(self.folder.glob("*.cmd"), key=lambda p: p.stat().st_mtime):
            with contextlib.suppress(FileNotFoundError):
                data = entry.read_bytes()
                entry.unlink()
                return data
        return None

    async def reply(self, ident: str, answer: bytes) -> None:
        _write(self.folder / f"{ident}.reply", answer)

    async def answer(self, ident: str) -> bytes | None:
        path = self.folder / f"{ident}.reply"
        with contextlib.suppress(FileNotFoundError):
            data = path.read_bytes()
            path.unlink()
            return data
        return None


def _write(path: Path, data: bytes) -> None:
    """Atomically: a reader sees the old bytes or the new ones, never half of them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
