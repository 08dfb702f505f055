"""The last 15 minutes, one point a second per backend and route: what the dashboard draws
on open, served as ``GET /status/history?since=<unix s>``.

Design. Nothing is added per request: a lifespan task (``canary.serve.history``) calls
``History.sample`` once a second, off the request path, and it reads what the calls already
counted:

- calls, errors, p50 and p99 of each complete second from the backend's rollback window,
  whose one-second buckets keep exactly that (``Window.second``);
- the circuit's state at the sample; WebSocket sessions (open now, opened, cut) from the
  meter's ``sessions`` rows (``meter_sessions``);
- tokens, cost and each route's calls per backend (its traffic share) as the rise of the
  meter's lifetime counters since the previous sample, put on the last complete second.

The ring is a few flat arrays of ``KEEP_S`` slots: per backend one ``array('d')`` of its 11
fields a slot, per (route, backend) one of calls, and one of the wall second each slot holds
(counted back from the wall's second at the sample). Its memory is fixed by the config's
names, never by traffic: ``8 * KEEP_S * (1 + 11 * backends + route_backends)`` bytes
(``History.nbytes``; 3 backends on 2 routes with 4 weighted pairs: 274,240 bytes).

Fleet. Each worker and each replica keeps its own ring; ``rows`` exports it JSON-ready,
``canary.fleet.history`` carries the rows between workers (a file each) and replicas (a
Redis list each), and ``merge`` adds them up per second: calls, errors, sessions, tokens and
cost are summed, p50 is the calls-weighted mean of the p50s (an approximation: bins are not
exchanged), p99 is the max of the p99s (a bound, never an understatement), the circuit is
the worst state seen. ``document`` turns merged rows into the columnar answer.
"""

from __future__ import annotations

import math
import sys
import time
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypedDict

from canary.config.store import ConfigStore
from canary.observe.meter import Meter
from canary.safety.breaker import Breakers
from canary.safety.windows import Stats, percentile
from canary.types import Clock

KEEP_S = 900  # 15 minutes of one-second points
SINCE_MAX_CHARS = 32
FIELDS = (
    "calls",
    "errors",
    "p50_ms",
    "p99_ms",
    "circuit",  # index into CIRCUITS: the worse state wins a merge
    "sessions_open",  # WebSocket sessions open at the sample
    "sessions_opened",  # sessions begun that second
    "sessions_cut",  # sessions the upstream ended abnormally that second
    "tokens_in",
    "tokens_out",
    "cost_usd",
)
CIRCUITS = ("closed", "half_open", "open")
_CALLS, _ERRORS, _P50, _P99, _CIRCUIT = 0, 1, 2, 3, 4
_OPEN, _OPENED, _CUT, _TIN, _TOUT, _COST = 5, 6, 7, 8, 9, 10
_SUMMED = (_CALLS, _ERRORS, _OPEN, _OPENED, _CUT, _TIN, _TOUT, _COST)
_NAN = float("nan")

# (open now, opened in total, cut in total) of one backend's WebSocket sessions, or None.
SessionCounts = Callable[[str], tuple[int, int, int] | None]
Row = dict[str, Any]  # {"t": s, "b": {backend: [FIELDS]}, "r": {route: {backend: calls}}}


def meter_sessions(meter: Meter) -> SessionCounts:
    """(open, total, cut) from the meter's per-backend session row ``[open, total, cut, ...]``
    (0, 0, 0 for a backend that never had one)."""

    def counts(backend: str) -> tuple[int, int, int]:
        row = meter.sessions.get(backend)
        return (int(row[0]), int(row[1]), int(row[2])) if row else (0, 0, 0)

    return counts


class HistoryDoc(TypedDict):
    """``GET /status/history``: columns over ``t`` (unix seconds, each second at most once)."""

    since: int
    keep_s: int
    t: list[int]
    backends: dict[str, dict[str, list[Any]]]  # backend -> field -> one value per t
    routes: dict[str, dict[str, dict[str, list[float | None]]]]  # route -> calls|share -> ...
    sources: int  # rings merged: this process's, sibling workers', other replicas'


def parse_since(raw: str | None, now: float, keep_s: int = KEEP_S) -> int:
    """``?since=`` as a whole unix second; absent: the whole ring. ValueError says why not."""
    if raw is None or raw == "":
        return int(now) - keep_s
    if len(raw) > SINCE_MAX_CHARS:
        raise ValueError(f"since is longer than {SINCE_MAX_CHARS} characters")
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError("since must be a number of unix seconds, e.g. since=1765100000") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError("since must be a finite, non-negative number of unix seconds")
    return max(int(value), int(now) - keep_s)


class History:
    """This process's ring of one-second points (see the module docstring)."""

    def __init__(
        self,
        store: ConfigStore,
        stats: Stats,
        breakers: Breakers,
        meter: Meter,
        *,
        sessions: SessionCounts | None = None,
        wall: Clock = time.time,
        keep_s: int = KEEP_S,
    ) -> None:
        self.store, self.stats, self.breakers, self.meter = store, stats, breakers, meter
        self.sessions = sessions if sessions is not None else meter_sessions(meter)
        self.keep_s = keep_s
        self.seconds = array("q", [-1] * keep_s)  # the wall second each slot holds
        self.backends: dict[str, array[float]] = {}  # len(FIELDS) columns of keep_s slots
        self.routes: dict[tuple[str, str], array[float]] = {}  # (route, backend) -> calls
        self._wall = wall
        self._last = -1  # the last monotonic second sampled
        # Built with the lifespan, before the first call: the first sample covers from here,
        # so the calls of a router's first second are not lost to the sampler's first tick.
        self._start = int(stats.clock())
        self._totals: dict[str, list[float]] = {}  # backend -> lifetime [opened, cut, in, out, $]
        self._route_totals: dict[tuple[str, str], int] = {}

    # -- sampling (once a second, off the request path) ----------------------------------

    def sample(self) -> int:
        """Write every complete second since the last sample; returns how many."""
        cfg = self.store.config
        if cfg is None:
            return 0
        current = int(self.stats.clock())
        first = self._start if self._last < 0 else self._last + 1
        first = max(first, current - int(self.stats.window_s))  # what the windows still hold
        self._forget(set(cfg.backends), {(r.name, b) for r in cfg.routes for b in r.weights})
        rises = self._rises(cfg.backends)
        route_rises = self._route_rises(cfg.routes)
        if first >= current:
            self._last = current - 1
            return 0
        # A point is labelled with the wall's second, counted back from now: the windows'
        # seconds are monotonic ones (a test may move that clock; the labels never jump).
        wall = int(self._wall())
        for second in range(first, current):
            slot = self._slot(wall - (current - second))
            last = second == current - 1  # the counters' rise lands on the last second
            for name in cfg.backends:
                self._write_backend(name, second, slot, rises[name] if last else None)
            for key, column in self._route_columns(cfg.routes):
                column[slot] = route_rises.get(key, 0) if last else 0
        self._last = current - 1
        return current - first

    def _slot(self, t: int) -> int:
        slot = t % self.keep_s
        self.seconds[slot] = t
        return slot

    def _write_backend(self, name: str, second: int, slot: int, rise: list[float] | None) -> None:
        column = self.backends.get(name)
        if column is None:
            column = self.backends[name] = array("d", [_NAN]) * (len(FIELDS) * self.keep_s)
        base = slot * len(FIELDS)
        window = self.stats.windows.get(name)
        found = window.second(second) if window is not None else None
        requests, errors, hist = found if found is not None else (0, 0, None)
        circuit = self.breakers.get(name)
        counts = self.sessions(name)
        column[base + _CALLS] = requests
        column[base + _ERRORS] = errors
        column[base + _P50] = percentile(hist, requests, 0.5) if hist and requests else _NAN
        column[base + _P99] = percentile(hist, requests, 0.99) if hist and requests else _NAN
        column[base + _CIRCUIT] = CIRCUITS.index(circuit.state) if circuit is not None else 0
        column[base + _OPEN] = counts[0] if counts is not None else _NAN
        for i, field in enumerate((_OPENED, _CUT, _TIN, _TOUT, _COST)):
            column[base + field] = rise[i] if rise is not None else 0.0
        if counts is None:
            column[base + _OPENED] = column[base + _CUT] = _NAN

    def _rises(self, backends: Iterable[str]) -> dict[str, list[float]]:
        """Per backend, how far [opened, cut, tokens in, tokens out, USD] rose since last."""
        now: dict[str, list[float]] = {name: [0.0] * 5 for name in backends}
        for (_, backend, _), (_, tin, tout) in self.meter.tokens.items():
            row = now.get(backend)
            if row is not None:
                row[2] += tin
                row[3] += tout
        for (backend, _), usd in self.meter.spent.items():
            if backend in now:
                now[backend][4] += usd
        for name, row in now.items():
            counts = self.sessions(name)
            if counts is not None:
                row[0], row[1] = counts[1], counts[2]
        rises = {}
        for name, row in now.items():
            before = self._totals.get(name, [0.0] * 5)  # counted since the ring was built
            rises[name] = [max(0.0, a - b) for a, b in zip(row, before, strict=True)]
            self._totals[name] = row
        return rises

    def _route_rises(self, routes: Iterable[Any]) -> dict[tuple[str, str], int]:
        now: dict[tuple[str, str], int] = {}
        for (route, backend, _), n in self.meter.requests.items():
            if backend:  # "" is a refusal: no backend carried it
                now[(route, backend)] = now.get((route, backend), 0) + n
        rises = {}
        for key, n in now.items():
            before = self._route_totals.get(key, 0)
            rises[key] = max(0, n - before)
        self._route_totals = now
        return rises

    def _route_columns(self, routes: Iterable[Any]) -> Iterable[tuple[tuple[str, str], Any]]:
        for route in routes:
            for backend in route.weights:
                key = (route.name, backend)
                column = self.routes.get(key)
                if column is None:
                    column = self.routes[key] = array("d", [_NAN]) * self.keep_s
                yield key, column

    def _forget(self, backends: set[str], routes: set[tuple[str, str]]) -> None:
        """Names gone from routes.yaml leave the ring: memory follows the config."""
        for name in [n for n in self.backends if n not in backends]:
            del self.backends[name]
        for key in [k for k in self.routes if k not in routes]:
            del self.routes[key]

    # -- reading -------------------------------------------------------------------------

    def nbytes(self) -> int:
        """Bytes held by the ring's arrays (fixed once every configured name was sampled)."""
        arrays = [self.seconds, *self.backends.values(), *self.routes.values()]
        return sum(sys.getsizeof(a) for a in arrays)

    def rows(self, since: int) -> list[Row]:
        """Points from ``since`` on, oldest first, JSON-ready for the other workers."""
        held = sorted((t, slot) for slot, t in enumerate(self.seconds) if t >= since)
        if not held:
            return []
        width = len(FIELDS)
        # Many rows (a page opening): the arrays as lists once; a few (each second): as is.
        whole = len(held) > 60
        backends = [(n, c.tolist() if whole else c) for n, c in self.backends.items()]
        routes = [(key, c.tolist() if whole else c) for key, c in self.routes.items()]
        out: list[Row] = []
        for t, slot in held:
            base = slot * width
            points = {}
            for name, values in backends:
                if values[base] == values[base]:  # NaN: the backend was not there then
                    points[name] = [v if v == v else None for v in values[base : base + width]]
            calls: dict[str, dict[str, float]] = {}
            for (route, backend), values in routes:
                if values[slot] == values[slot]:
                    calls.setdefault(route, {})[backend] = values[slot]
            out.append({"t": t, "b": points, "r": calls})
        return out


def merge(own: list[Row], others: Sequence[Iterable[Any]] = ()) -> list[Row]:
    """This process's rows and other workers' or replicas' added up per second (module
    docstring). Rows read from other processes are checked: a malformed one is skipped."""
    if not others:
        return own
    by_t: dict[int, Row] = {}
    for rows, trusted in ((own, True), *((rows, False) for rows in others)):
        for row in rows:
            checked = (row["t"], row["b"], row["r"]) if trusted else _checked(row)
            if checked is None:
                continue
            t, backends, routes = checked
            mine = by_t.setdefault(t, {"t": t, "b": {}, "r": {}})
            for name, values in backends.items():
                kept = mine["b"].get(name)
                mine["b"][name] = list(values) if kept is None else _merge_point(kept, values)
            for route, calls in routes.items():
                into = mine["r"].setdefault(route, {})
                for backend, n in calls.items():
                    into[backend] = into.get(backend, 0) + n
    return [by_t[t] for t in sorted(by_t)]


def _number(v: Any) -> bool:
    return v is None or (type(v) in (int, float) and math.isfinite(v))


def _checked(row: Any) -> tuple[int, dict[str, list[Any]], dict[str, dict[str, float]]] | None:
    """(t, backends, routes) of a well-formed row, copied; None for anything else."""
    if not isinstance(row, Mapping) or type(row.get("t")) is not int:
        return None
    b, r = row.get("b"), row.get("r")
    if not isinstance(b, Mapping) or not isinstance(r, Mapping):
        return None
    backends = {}
    for name, values in b.items():
        if not isinstance(values, list) or len(values) != len(FIELDS):
            return None
        if not all(_number(v) for v in values):
            return None
        backends[str(name)] = list(values)
    routes: dict[str, dict[str, float]] = {}
    for route, calls in r.items():
        if not isinstance(calls, Mapping):
            return None
        if not all(_number(n) and n is not None for n in calls.values()):
            return None
        routes[str(route)] = {str(k): n for k, n in calls.items()}
    return row["t"], backends, routes


def _merge_point(a: list[Any], b: list[Any]) -> list[Any]:
    out = list(a)
    for i in _SUMMED:
        if a[i] is None or b[i] is None:
            out[i] = b[i] if a[i] is None else a[i]
        else:
            out[i] = a[i] + b[i]
    calls_a, calls_b = a[_CALLS] or 0, b[_CALLS] or 0
    if a[_P50] is None or b[_P50] is None:
        out[_P50] = b[_P50] if a[_P50] is None else a[_P50]
    elif calls_a + calls_b:
        out[_P50] = round((a[_P50] * calls_a + b[_P50] * calls_b) / (calls_a + calls_b), 3)
    out[_P99] = max((v for v in (a[_P99], b[_P99]) if v is not None), default=None)
    out[_CIRCUIT] = max(a[_CIRCUIT] or 0, b[_CIRCUIT] or 0)
    return out


def document(rows: list[Row], since: int, sources: int, keep_s: int = KEEP_S) -> HistoryDoc:
    """Merged rows as columns over ``t``; a backend absent from a second reads null."""
    t = [int(row["t"]) for row in rows]
    names = sorted({name for row in rows for name in row["b"]})
    backends: dict[str, dict[str, list[Any]]] = {}
    absent = [None] * len(FIELDS)
    for name in names:
        points = [row["b"].get(name) or absent for row in rows]
        columns = {f: list(c) for f, c in zip(FIELDS, zip(*points, strict=True), strict=True)}
        columns["circuit"] = [
            CIRCUITS[int(v)] if v is not None and 0 <= v < len(CIRCUITS) else None
            for v in columns["circuit"]
        ]
        backends[name] = columns
    return {
        "since": since,
        "keep_s": keep_s,
        "t": t,
        "backends": backends,
        "routes": _route_columns(rows),
        "sources": sources,
    }


def _route_columns(rows: list[Row]) -> dict[str, dict[str, dict[str, list[float | None]]]]:
    """Per route: each backend's calls and its share (% of the route's calls; null: none)."""
    pairs = sorted({(route, b) for row in rows for route, c in row["r"].items() for b in c})
    out: dict[str, dict[str, dict[str, list[float | None]]]] = {}
    for route, backend in pairs:
        entry = out.setdefault(route, {"calls": {}, "share": {}})
        calls: list[float | None] = []
        share: list[float | None] = []
        for row in rows:
            counts = row["r"].get(route, {})
            n = counts.get(backend)
            total = sum(counts.values())
            calls.append(n)
            share.append(round(100.0 * n / total, 2) if n is not None and total else None)
        entry["calls"][backend] = calls
        entry["share"][backend] = share
    return out
