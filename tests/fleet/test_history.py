"""History rows between processes: the workers' files and the replicas' Redis lists."""

from __future__ import annotations

import uuid
from pathlib import Path

from redis.asyncio import Redis

from canary.fleet.history import ReplicaRows, WorkerRows
from tests.helpers import RedisServer


def row(t: int, calls: int) -> dict[str, object]:
    return {"t": t, "b": {"relay": [calls] + [None] * 10}, "r": {"chat": {"relay": calls}}}


def test_worker_files_stay_bounded_and_skip_a_torn_line(tmp_path: Path) -> None:
    """Each worker reads the others' rows from ``since`` on; a file holds at most two rings'
    worth of rows, and a line cut mid-write is skipped."""
    a = WorkerRows(str(tmp_path), "a", keep_s=10)
    b = WorkerRows(str(tmp_path), "b", keep_s=10)
    for t in range(100, 135):
        a.append([row(t, t)])
    assert len(a.path.read_bytes().splitlines()) <= 20
    with a.path.open("ab") as out:
        out.write(b'{"t": 135, "b": {"rel')  # a worker killed mid-write
    (parts,) = b.read(since=130)
    assert [r["t"] for r in parts] == [130, 131, 132, 133, 134]
    assert a.read(since=0) == []  # b has written nothing yet: no part, and no error


async def test_replicas_read_each_others_tail(redis_server: RedisServer) -> None:
    """Every replica pushes its rows; a read returns the others' (not its own) from ``since``."""
    # A database of its own: routers of other tests register as replicas (db 0, and 7
    # for the replicas' e2e test, which may have run just before on this redis-server).
    client = Redis.from_url(redis_server.url.removesuffix("/0") + "/11")
    tag = uuid.uuid4().hex[:6]
    now = [1_000.0]
    try:
        one = ReplicaRows(client, f"one-{tag}", keep_s=60, wall=lambda: now[0])
        two = ReplicaRows(client, f"two-{tag}", keep_s=60, wall=lambda: now[0])
        for t in range(900, 1000):
            await one.push([row(t, 1)])
        await two.push([row(999, 7)])
        (theirs,) = await two.read(since=990)
        assert [r["t"] for r in theirs] == list(range(990, 1000))
        assert len(await client.lrange(f"canary:history:one-{tag}", 0, -1)) == 60  # trimmed
        mine = await one.read(since=990)
        assert [[r["b"]["relay"][0] for r in part] for part in mine if part] == [[7]]
    finally:
        await client.aclose()
