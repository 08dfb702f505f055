"""Workers of one ``canary serve --workers N`` act as one router, through a directory.

The parent makes a private directory and hands it to every worker. Every
``SYNC_S`` each worker writes one file there, atomically (write, then rename): its
meter counters, its windows' buckets, and per backend its (requests, errors, since
the circuit's last change) and its readiness counts. Reading the others' files:

- without Redis (or while it is unreachable), their window counts become this worker's
  ``remote_*`` and the trip rule runs on them (``canary.fleet.shared.apply_remote``, the same
  rule replicas use through Redis), so the workers trip within one interval of each
  other on the host's figures; while Redis answers, that exchange already covers every
  worker, and files only feed the view;
- ``/status`` and ``/metrics`` on any worker merge everyone: meter counters summed (a
  worker that died keeps its last file, so counters never go back), latency, qps and
  concurrency from the buckets of the workers that are alive (fresh files), readiness
  counts from the workers whose circuit changed at about the same moment.

Files are small (a few KB) and local; a worker that cannot write or read one keeps
serving and only its view is partial.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import structlog

from canary.fleet.shared import FRESH_S, apply_remote
from canary.observe.meter import Meter
from canary.safety.breaker import Breakers
from canary.safety.windows import Stats
from canary.types import AsyncResource

log = structlog.get_logger("canary.fleet.workers")

SYNC_S = 0.5
READINESS_SKEW_S = 5.0  # workers start (and load the config) a few seconds apart at most


_PEER_KEYS = frozenset({"worker", "sent_at", "meter", "windows", "circuits"})


class Fleet(AsyncResource):
    """This worker's side of the exchange (see the module docstring)."""

    def __init__(
        self,
        directory: str,
        worker_id: str,
        stats: Stats,
        breakers: Breakers,
        meter: Meter,
        *,
        share_windows: Callable[[], bool],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(directory)
        self.worker_id = worker_id
        self.stats = stats
        self.breakers = breakers
        self.meter = meter
        self.share_windows = share_windows
        self.interval_s = SYNC_S
        self._wall = wall
        self._task: asyncio.Task[None] | None = None
        self._peers: list[dict[str, Any]] = []

    async def start(self) -> None:
        self._sync_quietly()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self._sync_quietly()

    def _sync_quietly(self) -> None:
        try:
            self.sync()
        except Exception as exc:  # a full or read-only disk must not stop the worker
            log.warning("fleet.sync_failed", error=type(exc).__name__)

    def _since(self, backend: str) -> float:
        circuit = self.breakers.get(backend)
        return circuit.epoch if circuit is not None else 0.0

    def sync(self) -> None:
        """Write this worker's file, read the others', share the windows' counts."""
        now = self._wall()
        windows = {}
        for name, window in self.stats.windows.items():
            requests, errors = window.counts()
            windows[name] = {**window.export(), "counts": [requests, errors, self._since(name)]}
        circuits = {c.backend: [c.epoch, c.since_requests, c.since_errors] for c in self.breakers}
        mine = {
            "worker": self.worker_id,
            "pid": os.getpid(),
            "sent_at": now,
            "meter": self.meter.export(),
            "windows": windows,
            "circuits": circuits,
        }
        path = self.directory / f"{self.worker_id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(mine))
        os.replace(tmp, path)
        self._peers = self._read_peers()
        if self.share_windows():
            for name in self.stats.windows:
                entries = (
                    (*p["windows"][name]["counts"], p["sent_at"])
                    for p in self.fresh(now)
                    if name in p["windows"]
                )
                apply_remote(self.stats, self.breakers, name, entries, now)

    def _read_peers(self) -> list[dict[str, Any]]:
        peers = []
        for path in self.directory.glob("*.json"):
            if path.stem == self.worker_id:
                continue
            with contextlib.suppress(OSError, orjson.JSONDecodeError):
                peer = orjson.loads(path.read_bytes())
                if isinstance(peer, dict) and peer.keys() >= _PEER_KEYS:  # a worker's, whole
                    peers.append(peer)
        return peers

    def fresh(self, now: float | None = None) -> list[dict[str, Any]]:
        """The other workers that are alive (their file is recent)."""
        now = self._wall() if now is None else now
        return [p for p in self._peers if now - p["sent_at"] <= FRESH_S]

    def window_peers(self, backend: str) -> list[dict[str, Any]]:
        """Live workers' ``Window.export()`` for ``backend``, for ``Window.snapshot``."""
        return [p["windows"][backend] for p in self.fresh() if backend in p["windows"]]

    def merged_meter(self) -> Meter:
        """Every worker's counters summed, dead workers' last figures included."""
        merged = Meter(self.meter.clock)
        merged.absorb(self.meter.export())
        for peer in self._peers:
            merged.absorb(peer["meter"])
        return merged

    def calls_by_worker(self) -> dict[str, int]:
        """Lifetime calls (refusals included) of every worker that wrote a file, and ours."""
        calls = {self.worker_id: sum(self.meter.requests.values())}
        for peer in self._peers:
            calls[peer["worker"]] = sum(peer["meter"]["requests"].values())
        return calls

    def since_counts(self, backend: str) -> tuple[int, int]:
        """Other live workers' readiness counts for ``backend`` since the same change."""
        since = self._since(backend)
        requests = errors = 0
        for peer in self.fresh():
            row = peer["circuits"].get(backend)
            if row is not None and abs(row[0] - since) <= READINESS_SKEW_S:
                requests += row[1]
                errors += row[2]
        return requests, errors

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._sync_quietly()  # the last figures stay for the others (counters never go back)
