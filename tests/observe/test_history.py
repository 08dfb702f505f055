"""The history ring: one point a second, a fixed size, merged across workers; ``since``."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canary.observe.history import FIELDS, History, document, merge, parse_since
from canary.serve.core import Core

ROUTES = """
backends:
  legacy: {base_url: "http://legacy.test/v1"}
  relay: {base_url: "http://relay.test/v1"}
  spare: {base_url: "http://spare.test/v1"}
routes:
  - name: chat
    weights: {legacy: 50, relay: 50}
    baseline: legacy
  - name: embed
    weights: {legacy: 90, spare: 10}
    baseline: legacy
pricing:
  relay: {gpt-4.1: {input: 1.0, output: 1.0}}
"""
WALL0 = 1_765_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = 1000.25

    def __call__(self) -> float:
        return self.t

    def wall(self) -> float:
        return WALL0 + self.t


def ring(tmp_path: Path, clock: Clock, keep_s: int = 900) -> tuple[Core, History]:
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES)
    core = Core.build(str(path), clock)
    core.store.load_initial()
    history = History(
        core.store, core.stats, core.breakers, core.meter, wall=clock.wall, keep_s=keep_s
    )
    return core, history


def one_second(core: Core, calls: dict[str, tuple[int, int, float]], clock: Clock) -> None:
    """``calls``: backend -> (calls, errors, latency s), counted where the proxy counts."""
    for backend, (n, errors, latency) in calls.items():
        window = core.stats.window(backend)
        route = "chat" if backend != "spare" else "embed"
        for i in range(n):
            window.record(latency, error=i < errors)
            core.meter.call(route, backend, 500 if i < errors else 200, latency)
        core.meter.usage(route, backend, "gpt-4.1", (100 * n, 10 * n), (1.0, 1.0))
    clock.t += 1.0


def test_the_ring_keeps_the_last_keep_s_seconds_each_once(tmp_path: Path) -> None:
    """Past its size the ring drops its oldest seconds; every second appears once, in order."""
    clock = Clock()
    core, history = ring(tmp_path, clock, keep_s=5)
    history.sample()  # the first sample only sets the start: nothing before it is known
    for n in range(1, 9):
        one_second(core, {"legacy": (n, 0, 0.010), "relay": (2 * n, n // 2, 0.200)}, clock)
        assert history.sample() == 1
    rows = history.rows(0)
    t = [row["t"] for row in rows]
    assert len(t) == 5 and t == sorted(set(t)) and t[-1] - t[0] == 4
    assert [row["b"]["legacy"][0] for row in rows] == [4, 5, 6, 7, 8]
    assert [row["b"]["relay"][1] for row in rows] == [2, 2, 3, 3, 4]
    assert rows[-1]["b"]["relay"][FIELDS.index("p50_ms")] == pytest.approx(200, rel=0.15)
    assert rows[-1]["b"]["relay"][FIELDS.index("tokens_in")] == 1600
    assert rows[-1]["b"]["relay"][FIELDS.index("cost_usd")] == pytest.approx(1760 / 1e6)
    assert rows[-1]["r"]["chat"] == {"legacy": 8, "relay": 16}
    # A sampler that missed seconds catches up from the windows (they hold 60 s).
    one_second(core, {"legacy": (3, 0, 0.01)}, clock)
    one_second(core, {"legacy": (4, 0, 0.01)}, clock)
    assert history.sample() == 2
    assert [row["b"]["legacy"][0] for row in history.rows(0)[-2:]] == [3, 4]
    assert history.rows(rows[-1]["t"] + 1)[0]["t"] == rows[-1]["t"] + 1  # since: inclusive
    assert rows[-1]["b"]["relay"][FIELDS.index("sessions_open")] == 0  # none opened


def test_sessions_open_now_and_opened_and_cut_each_second(tmp_path: Path) -> None:
    """With the meter's WebSocket session rows [open, total, cut, ...]: open at the sample,
    and how many opened and were cut in that second."""
    clock = Clock()
    core, history = ring(tmp_path, clock)
    rows: dict[str, list[int]] = {"relay": [2, 5, 1, 0, 0, 0, 0]}
    core.meter.sessions = rows  # type: ignore[attr-defined]
    history.sample()
    rows["relay"][:3] = [3, 9, 2]
    clock.t += 1.0
    history.sample()
    (row,) = history.rows(0)
    relay = dict(zip(FIELDS, row["b"]["relay"], strict=True))
    assert (relay["sessions_open"], relay["sessions_opened"], relay["sessions_cut"]) == (3, 4, 1)
    assert row["b"]["legacy"][FIELDS.index("sessions_open")] == 0  # counted, none open


def test_two_workers_merge_per_second(tmp_path: Path) -> None:
    """Calls, errors, tokens and cost add up; p99 is the max, p50 weighted, the circuit the
    worst; each route's share comes from the summed calls."""
    clock = Clock()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    core_a, a = ring(tmp_path / "a", clock)
    core_b, b = ring(tmp_path / "b", clock)
    a.sample(), b.sample()
    for backend, calls in {"legacy": (10, 0, 0.010), "relay": (10, 1, 0.100)}.items():
        one_second(core_a, {backend: calls}, clock)
        clock.t -= 1.0
    one_second(core_b, {"relay": (30, 3, 1.000)}, clock)
    core_b.breakers.get("relay").follow("open", "test")  # type: ignore[union-attr]
    a.sample(), b.sample()
    merged = merge(a.rows(0), [b.rows(0)])
    assert len(merged) == 1
    doc = document(merged, since=0, sources=2)
    relay = doc["backends"]["relay"]
    assert relay["calls"] == [40] and relay["errors"] == [4]
    assert relay["tokens_in"] == [4000] and relay["circuit"] == ["open"]
    p99_a = a.rows(0)[0]["b"]["relay"][3]
    p99_b = b.rows(0)[0]["b"]["relay"][3]
    assert relay["p99_ms"] == [max(p99_a, p99_b)] and p99_b > p99_a
    p50_a, p50_b = a.rows(0)[0]["b"]["relay"][2], b.rows(0)[0]["b"]["relay"][2]
    assert relay["p50_ms"][0] == pytest.approx((10 * p50_a + 30 * p50_b) / 40, abs=0.01)
    assert doc["backends"]["legacy"]["calls"] == [10]
    assert doc["routes"]["chat"]["share"] == {"legacy": [20.0], "relay": [80.0]}
    assert doc["sources"] == 2 and doc["t"] == [merged[0]["t"]]


def test_memory_is_fixed_by_the_config_not_the_traffic(tmp_path: Path) -> None:
    """Full and busy, the ring holds the same bytes as after its first minute: 8 bytes per
    slot per column, 15 minutes of slots."""
    clock = Clock()
    core, history = ring(tmp_path, clock)
    history.sample()
    sizes = []
    for second in range(1000):
        n = 1 + second % 7
        one_second(core, {"legacy": (n, 0, 0.01), "relay": (n, 1, 0.3), "spare": (1, 0, 2)}, clock)
        history.sample()
        if second in (60, 999):
            sizes.append(history.nbytes())
    assert sizes[0] == sizes[1]
    columns = 1 + len(FIELDS) * 3 + 4  # wall seconds, 3 backends, 4 (route, backend) pairs
    assert columns * 900 * 8 <= sizes[1] < columns * 900 * 8 + 2000
    print(f"history ring at full size, 3 backends on 2 routes: {sizes[1]} bytes")
    assert len(history.rows(0)) == 900


@given(st.text(max_size=40))
def test_since_is_a_bounded_number_or_a_clear_refusal(raw: str) -> None:
    """Any ``since`` either parses to a second within the ring's reach or is refused."""
    now = WALL0
    try:
        since = parse_since(raw, now)
    except ValueError as exc:
        assert "since" in str(exc)
        return
    value = float(raw.strip()) if raw.strip() else now - 900
    assert math.isfinite(value) and value >= 0
    assert since == max(int(value), int(now) - 900)


@given(st.integers(min_value=0, max_value=4_000_000_000))
def test_since_takes_whole_and_decimal_seconds(value: int) -> None:
    """A unix second, as an int or with a fraction, reads as that second (or the ring's start)."""
    assert parse_since(str(value), WALL0) == max(value, int(WALL0) - 900)
    assert parse_since(f"{value}.75", WALL0) == max(value, int(WALL0) - 900)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=12) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=12,
)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(JSON | st.fixed_dictionaries({"t": st.integers(), "b": JSON, "r": JSON}), max_size=4)
)
def test_rows_from_other_processes_never_break_the_merge(rows: list[object]) -> None:
    """Rows read back from files or Redis are outside input: malformed ones are skipped, and
    the answer is still one column per field, as long as ``t``."""
    good = {"t": 5, "b": {"relay": [1] + [None] * (len(FIELDS) - 1)}, "r": {"chat": {"relay": 1}}}
    doc = document(merge([good], [rows]), since=0, sources=2)
    assert 5 in doc["t"] and doc["t"] == sorted(set(doc["t"]))
    for columns in doc["backends"].values():
        assert set(columns) == set(FIELDS)
        assert all(len(v) == len(doc["t"]) for v in columns.values())
