"""The history ring's rows carried between workers and between replicas (see
``canary.observe.history`` for the ring and the merge; ``canary.serve.history`` samples it
and answers ``/status/history``).

Rows are opaque JSON-ready dicts here, with an integer ``t`` (unix second); nothing here
knows their fields.

- ``WorkerRows`` (``serve --workers N``): each worker appends its new rows, one JSON line
  each, to ``<worker>.history`` in the workers' directory, once a second; past twice the
  ring's length the file is rewritten with the last ring's worth (write, then rename), so it
  stays bounded. Any worker reads the others' files when asked; a torn last line is skipped.
- ``ReplicaRows`` (``state.redis_url``): each replica pushes its new rows onto a Redis list
  of its own, trimmed to the ring's length and expiring a ring's length after its last
  push, and names itself in a sorted set scored by the time of that push. A read takes, in
  one pipelined round trip, only the tail each list may hold since ``since``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

Row = dict[str, Any]
SUFFIX = ".history"  # not ``.json``: the workers' figures files are read by that glob
ROWS_KEY = "canary:history:{}"
REPLICAS_KEY = "canary:history:replicas"
TIMEOUT_S = 0.25
SLACK = 5  # rows more than the span asked for: sampling is not exactly one row per second


class WorkerRows:
    """This worker's rows in a file of the workers' directory; the others' read on demand."""

    def __init__(self, directory: str, worker_id: str, keep_s: int) -> None:
        self.directory = Path(directory)
        self.path = self.directory / f"{worker_id}{SUFFIX}"
        self.keep_s = keep_s
        self._lines: list[bytes] = []  # what the file holds, to rewrite it shorter

    def append(self, rows: Sequence[Row]) -> None:
        """Add new rows (a full or read-only disk only makes the fleet's view partial)."""
        if not rows:
            return
        lines = [orjson.dumps(row) + b"\n" for row in rows]
        self._lines.extend(lines)
        if len(self._lines) > 2 * self.keep_s:
            self._lines = self._lines[-self.keep_s :]
            tmp = self.path.with_suffix(".tmp")
            tmp.write_bytes(b"".join(self._lines))
            os.replace(tmp, self.path)
            return
        with self.path.open("ab") as out:
            out.write(b"".join(lines))

    def read(self, since: int) -> list[list[Row]]:
        """The other workers' rows from ``since`` on, one list per worker."""
        parts = []
        for path in self.directory.glob(f"*{SUFFIX}"):
            if path == self.path:
                continue
            with contextlib.suppress(OSError):
                parts.append(_rows(path.read_bytes().splitlines(), since))
        return parts


class ReplicaRows:
    """This replica's rows on Redis; the other replicas' read on demand."""

    def __init__(
        self,
        client: Redis,
        replica_id: str,
        keep_s: int,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.replica_id = replica_id
        self.keep_s = keep_s
        self._wall = wall
        self._key = ROWS_KEY.format(replica_id)

    async def push(self, rows: Sequence[Row]) -> None:
        """One pipelined round trip, bounded; raises what Redis raised (the caller logs)."""
        if not rows:
            return
        now = self._wall()
        pipe = self.client.pipeline(transaction=False)
        pipe.rpush(self._key, *[orjson.dumps(row) for row in rows])
        pipe.ltrim(self._key, -self.keep_s, -1)
        pipe.pexpire(self._key, self.keep_s * 1000)
        pipe.zadd(REPLICAS_KEY, {self.replica_id: now})
        pipe.zremrangebyscore(REPLICAS_KEY, "-inf", now - self.keep_s)
        pipe.pexpire(REPLICAS_KEY, self.keep_s * 1000)
        async with asyncio.timeout(TIMEOUT_S):
            await pipe.execute()

    async def read(self, since: int) -> list[list[Row]]:
        """The other replicas' rows from ``since`` on, one list per replica (bounded)."""
        now = self._wall()
        tail = int(min(self.keep_s, max(0.0, now - since) + SLACK))
        async with asyncio.timeout(TIMEOUT_S):
            names = await self.client.zrangebyscore(REPLICAS_KEY, now - self.keep_s, "+inf")
            found = (n.decode() if isinstance(n, bytes) else str(n) for n in names)
            others = [name for name in found if name != self.replica_id]
            if not others:
                return []
            pipe = self.client.pipeline(transaction=False)
            for name in others:
                pipe.lrange(ROWS_KEY.format(name), -tail, -1)
            results = await pipe.execute()
        return [_rows(lines, since) for lines in results]


def _rows(lines: Sequence[bytes], since: int) -> list[Row]:
    """Rows from ``since`` on; a line that is not a row (torn, foreign) is skipped."""
    out = []
    for line in lines:
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("t"), int) and row["t"] >= since:
            out.append(row)  # its fields are checked where rows are merged
    return out
