"""Per-backend sliding windows of requests, errors and latency on an injected clock.

A ``Window`` is a ring of one-second buckets covering ``window_s``; recording touches
only the current bucket (O(1) per request, no allocation once the ring is warm), and a
snapshot sums the live buckets. Latency goes into log-spaced bins (15% apart from
0.1 ms), so percentiles are accurate to a bin without keeping samples.

Counted at the start of a call: ``qps`` / ``peak_qps`` (request starts per second),
``in_flight`` and ``peak_concurrency``. Counted when a call ends: ``requests``,
``errors`` and latency. The clock is ``time.monotonic`` in production and a fake one
in tests; nothing here sleeps or reads the wall clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from canary.types import Clock

_BIN_BASE_MS = 0.1
_BIN_RATIO = 1.15
_LOG_RATIO = math.log(_BIN_RATIO)
BINS = _BINS = 120  # 0.1 ms * 1.15**120 ~ 19 minutes; slower calls land in the last bin


def _bin(ms: float) -> int:
    if ms <= _BIN_BASE_MS:
        return 0
    return min(int(math.log(ms / _BIN_BASE_MS) / _LOG_RATIO) + 1, _BINS - 1)


def _bin_upper_ms(i: int) -> float:
    return _BIN_BASE_MS * _BIN_RATIO**i


class _Bucket:
    __slots__ = ("errors", "hist", "peak_in_flight", "requests", "second", "starts")

    def __init__(self) -> None:
        self.second = -1
        self.starts = 0
        self.requests = 0
        self.errors = 0
        self.peak_in_flight = 0
        self.hist = [0] * _BINS

    def reset(self, second: int) -> None:
        self.second = second
        self.starts = self.requests = self.errors = self.peak_in_flight = 0
        hist = self.hist
        for i in range(_BINS):
            hist[i] = 0


class _Sums:
    """Live buckets added up for a snapshot: this process's ring, then sibling workers'."""

    __slots__ = ("errors", "hist", "oldest", "per_second", "requests", "starts")

    def __init__(self, oldest: int) -> None:
        self.oldest = oldest
        self.requests = self.errors = self.starts = 0
        self.hist = [0] * _BINS
        self.per_second: dict[int, list[int]] = {}  # second -> [starts, peak in flight]

    def add(self, second: int, starts: int, requests: int, errors: int, peak: int) -> bool:
        """Count one bucket if it is still in the window (the caller then adds its bins)."""
        if second < self.oldest:
            return False
        self.requests += requests
        self.errors += errors
        self.starts += starts
        cell = self.per_second.setdefault(second, [0, 0])
        cell[0] += starts
        cell[1] += peak
        return True


@dataclass(frozen=True, slots=True)
class WindowSnapshot:
    """Figures over the window (``in_flight`` is the live count)."""

    window_s: float
    requests: int
    errors: int
    error_rate: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    qps: float
    peak_qps: float
    in_flight: int
    peak_concurrency: int
    total_requests: int
    total_errors: int


class Window:
    """Sliding-window counters for one backend."""

    def __init__(self, window_s: float, clock: Clock) -> None:
        self.window_s = window_s
        self._clock = clock
        self.in_flight = 0
        self.total_requests = 0
        self.total_errors = 0
        self._retired: list[_Bucket] = []  # the ring before the last reset, for ``second``
        self._fresh_ring()

    def _fresh_ring(self) -> None:
        self._size = max(1, math.ceil(self.window_s)) + 1  # +1: the current, partial second
        self._ring = [_Bucket() for _ in range(self._size)]
        self._second = int(self._clock())
        self._current = self._ring[self._second % self._size]
        self._current.reset(self._second)
        self._started_at = self._clock()
        # Running sums over the live buckets, so the trip rule reads them in O(1).
        self.requests = 0
        self.errors = 0
        # Other replicas' calls over their windows (canary.fleet.shared fills these in).
        self.remote_requests = 0
        self.remote_errors = 0

    def _bucket(self) -> _Bucket:
        second = int(self._clock())
        if second == self._second:
            return self._current
        # Expire every second skipped since the last call (at most a ring's worth): each
        # bucket leaves the running sums exactly once, so the cost per call is O(1) amortised.
        first = max(self._second + 1, second - self._size + 1)
        for s in range(first, second + 1):
            b = self._ring[s % self._size]
            self.requests -= b.requests
            self.errors -= b.errors
            b.reset(s)
        self._second = second
        self._current = b = self._ring[second % self._size]
        b.peak_in_flight = self.in_flight
        return b

    def start(self) -> None:
        """A call to this backend begins."""
        b = self._bucket()
        b.starts += 1
        self.in_flight += 1
        if self.in_flight > b.peak_in_flight:
            b.peak_in_flight = self.in_flight

    def finish(self, latency_s: float, *, error: bool) -> None:
        """A call ends; ``latency_s`` runs from its start to its last byte or its failure."""
        self.in_flight -= 1
        self.record(latency_s, error=error)

    def record(self, latency_s: float, *, error: bool) -> None:
        """Count one finished call or figure without touching ``in_flight`` (a first-byte
        window has no calls in flight of its own)."""
        b = self._bucket()
        b.requests += 1
        b.hist[_bin(latency_s * 1000.0)] += 1
        self.requests += 1
        self.total_requests += 1
        if error:
            b.errors += 1
            self.errors += 1
            self.total_errors += 1

    def resize(self, window_s: float) -> None:
        """Start over with a window of another length, in place (calls in flight finish here)."""
        self.window_s = window_s
        self._retired = self._ring
        self._fresh_ring()

    def reset(self) -> None:
        """Forget the window (a closed circuit starts fresh); lifetime totals stay. The old
        ring stays readable by ``second`` until the next reset: the history sampler reads
        each second just after it ends, and a reset must not take its calls away."""
        self._retired = self._ring
        self._fresh_ring()

    def counts(self) -> tuple[int, int]:
        """(requests, errors) over the window, in O(1): the figures a trip rule needs."""
        self._bucket()  # expire what has left the window
        return self.requests, self.errors

    def global_counts(self) -> tuple[int, int]:
        """``counts()`` plus what the other replicas reported (the same without Redis)."""
        requests, errors = self.counts()
        return requests + self.remote_requests, errors + self.remote_errors

    def second(self, second: int) -> tuple[int, int, list[int]] | None:
        """(requests, errors, latency bins) of one past second still in the ring, else None.

        Read once a second by the history sampler (``canary.observe.history``): the bins are
        the live ones, to be read at once and never kept. A second split by a ``reset`` is
        the sum of its two buckets."""
        b = self._ring[second % self._size]
        live = b if b.second == second else None
        old = next((r for r in self._retired if r.second == second), None)
        if old is None or old.requests == 0:
            return (live.requests, live.errors, live.hist) if live is not None else None
        if live is None:
            return old.requests, old.errors, old.hist
        hist = [x + y for x, y in zip(live.hist, old.hist, strict=True)]
        return live.requests + old.requests, live.errors + old.errors, hist

    def export(self) -> dict[str, Any]:
        """This process's own figures, JSON-ready, for sibling workers' ``snapshot(peers)``.

        Buckets are keyed by monotonic second, which all processes of one host share."""
        oldest = int(self._clock()) - self._size + 1
        buckets = [
            [b.second, b.starts, b.requests, b.errors, b.peak_in_flight]
            + [[i, n] for i, n in enumerate(b.hist) if n]
            for b in self._ring
            if b.second >= oldest
        ]
        return {
            "buckets": buckets,
            "in_flight": self.in_flight,
            "total_requests": self.total_requests,
            "total_errors": self.total_errors,
        }

    def snapshot(self, peers: Sequence[dict[str, Any]] = ()) -> WindowSnapshot:
        """Figures over the window; ``peers`` adds sibling workers' ``export()``s.

        ``requests`` and ``errors`` are this process's plus ``remote_*`` (what replicas,
        or sibling workers, reported); latency, qps and concurrency add the peers' buckets.
        """
        now = self._clock()
        second = int(now)
        sums = _Sums(oldest=second - self._size + 1)
        in_flight = self.in_flight + sum(p["in_flight"] for p in peers)
        hist = sums.hist
        for b in self._ring:
            if sums.add(b.second, b.starts, b.requests, b.errors, b.peak_in_flight):
                for i, n in enumerate(b.hist):
                    if n:
                        hist[i] += n
        for peer in peers:  # their latency bins come sparse: [bin, count] pairs
            for row in peer["buckets"]:
                if sums.add(*row[:5]):
                    for i, n in row[5:]:
                        hist[i] += n
        per_second, starts = sums.per_second, sums.starts
        # the current second is still filling up: it does not count for the peak rate
        peak_qps = max((c[0] for s, c in per_second.items() if s != second), default=0)
        peak_conc = max((c[1] for c in per_second.values()), default=0)
        span = min(self.window_s, max(now - self._started_at, 1.0))
        requests, errors = sums.requests, sums.errors
        latency_count = requests
        if peers:  # the peers' own counts are in remote_* already (exchanged by the fleet)
            requests, errors = self.global_counts()
        else:
            requests += self.remote_requests  # global figures when replicas share state
            errors += self.remote_errors
        return WindowSnapshot(
            window_s=self.window_s,
            requests=requests,
            errors=errors,
            error_rate=errors / requests if requests else 0.0,
            p50_ms=_percentile(hist, latency_count, 0.50),
            p95_ms=_percentile(hist, latency_count, 0.95),
            p99_ms=_percentile(hist, latency_count, 0.99),
            qps=starts / span,
            peak_qps=float(peak_qps),
            in_flight=in_flight,
            peak_concurrency=max(peak_conc, in_flight),
            total_requests=self.total_requests + sum(p["total_requests"] for p in peers),
            total_errors=self.total_errors + sum(p["total_errors"] for p in peers),
        )


def _percentile(hist: list[int], total: int, q: float) -> float:
    """Upper bound of the bin holding the q-quantile, in ms (0 when empty)."""
    if total == 0:
        return 0.0
    rank = math.ceil(q * total)
    seen = 0
    for i, n in enumerate(hist):
        seen += n
        if seen >= rank:
            return round(_bin_upper_ms(i), 3)
    return round(_bin_upper_ms(_BINS - 1), 3)  # pragma: no cover - rank <= total


percentile = _percentile  # for step figures built from exported buckets (safety.analysis)


class Stats:
    """The windows of every backend, created on first use; beside each, a window of its
    streams' time to first byte (its "latency" is that time; read by rollout analysis)."""

    def __init__(self, window_s: float, clock: Clock) -> None:
        self.window_s = window_s
        self.clock = clock
        self.windows: dict[str, Window] = {}
        self.ttfb_windows: dict[str, Window] = {}

    def window(self, backend: str) -> Window:
        w = self.windows.get(backend)
        if w is None:
            w = self.windows[backend] = Window(self.window_s, self.clock)
        return w

    def first_byte(self, backend: str, seconds: float) -> None:
        """A stream from ``backend`` sent its first byte ``seconds`` after the call left."""
        w = self.ttfb_windows.get(backend)
        if w is None:
            w = self.ttfb_windows[backend] = Window(self.window_s, self.clock)
        w.record(seconds, error=False)

    def ttfb(self, backend: str) -> Window | None:
        return self.ttfb_windows.get(backend)

    def resize(self, window_s: float) -> None:
        """A reload changed ``rollback.window_s``: fresh windows, lifetime totals kept."""
        if window_s != self.window_s:
            self.window_s = window_s
            for w in (*self.windows.values(), *self.ttfb_windows.values()):
                w.resize(window_s)
