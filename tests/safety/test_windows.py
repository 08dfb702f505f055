"""Sliding windows of requests, errors, latency and load, driven by a fake clock (no sleeps)."""

from __future__ import annotations

import random

import pytest

from canary.safety.windows import Stats, Window, WindowSnapshot

T0 = 1_000.0


class FakeClock:
    """A monotonic clock that moves only when a test moves it."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def record(window: Window, n: int = 1, *, latency_s: float = 0.05, errors: int = 0) -> None:
    """``n`` complete calls at the current instant, the first ``errors`` of them failed."""
    for i in range(n):
        window.start()
        window.finish(latency_s, error=i < errors)


def empty(
    window_s: float, *, in_flight: int = 0, totals: tuple[int, int] = (0, 0)
) -> WindowSnapshot:
    return WindowSnapshot(
        window_s=window_s,
        requests=0,
        errors=0,
        error_rate=0.0,
        p50_ms=0.0,
        p95_ms=0.0,
        p99_ms=0.0,
        qps=0.0,
        peak_qps=0.0,
        in_flight=in_flight,
        peak_concurrency=in_flight,
        total_requests=totals[0],
        total_errors=totals[1],
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_empty_window_gives_zeros(clock: FakeClock) -> None:
    """A window that has seen nothing reports zeros everywhere, without dividing by zero."""
    window = Window(60, clock)

    assert window.counts() == (0, 0)
    assert window.snapshot() == empty(60)
    clock.advance(3600)
    assert window.snapshot() == empty(60)


def test_requests_errors_and_error_rate_over_the_window(clock: FakeClock) -> None:
    """Finished calls and failures are counted over the window, with their ratio as error_rate."""
    window = Window(60, clock)

    for _ in range(4):
        record(window, 10, errors=1)
        clock.advance(1.5)
    window.start()  # still in flight: not a request yet

    snap = window.snapshot()
    assert window.counts() == (40, 4)
    assert (snap.requests, snap.errors, snap.error_rate) == (40, 4, 0.1)
    assert (snap.total_requests, snap.total_errors, snap.in_flight) == (40, 4, 1)


def test_a_call_is_counted_when_it_finishes(clock: FakeClock) -> None:
    """A call that starts in one second and ends in the next counts once, when it ends."""
    window = Window(60, clock)
    clock.now = T0 + 0.9

    window.start()
    clock.advance(0.3)
    window.finish(0.3, error=True)

    assert window.counts() == (1, 1)


@pytest.mark.parametrize("window_s", [2, 10, 60])
def test_entries_older_than_the_window_fall_out(clock: FakeClock, window_s: int) -> None:
    """Calls stay counted while younger than window_s and are gone a second after (1 s buckets)."""
    window = Window(window_s, clock)
    record(window, 5, errors=5)

    clock.advance(window_s - 0.5)
    assert window.counts() == (5, 5)
    record(window, 3)
    assert window.counts() == (8, 5)

    clock.advance(1.5)  # the first calls are now window_s + 1 seconds old
    assert window.counts() == (3, 0)
    assert window.snapshot().error_rate == 0.0
    assert (window.snapshot().total_requests, window.snapshot().total_errors) == (8, 5)


def test_steady_traffic_keeps_about_one_window_of_calls(clock: FakeClock) -> None:
    """One call a second for a long time keeps window_s calls in the window, give or take one."""
    window = Window(10, clock)
    clock.now = T0 + 0.5

    for i in range(40):
        record(window)
        requests, _ = window.counts()
        assert min(i + 1, 10) <= requests <= min(i + 1, 11)
        clock.advance(1)


@pytest.mark.parametrize(
    "gap",
    [
        pytest.param(600.0, id="10x-window"),
        pytest.param(610.0, id="ring-length-multiple"),
        pytest.param(86_400.5, id="a-day"),
    ],
)
def test_long_idle_gap_gives_an_empty_window(clock: FakeClock, gap: float) -> None:
    """After an idle gap far longer than the window, nothing from before it is counted."""
    window = Window(60, clock)
    for _ in range(60):
        record(window, 7, errors=2, latency_s=0.2)
        clock.advance(1)

    clock.advance(gap)

    assert window.counts() == (0, 0)
    assert window.snapshot() == empty(60, totals=(420, 120))
    record(window, 1, latency_s=0.01)
    assert window.counts() == (1, 0)
    assert window.snapshot().p99_ms < 20


def test_qps_is_starts_per_second_over_the_window(clock: FakeClock) -> None:
    """Ten starts a second for two minutes read as 10 qps and a peak of 10."""
    window = Window(60, clock)

    for _ in range(120):
        for _ in range(10):
            window.start()
            clock.advance(0.1)
            window.finish(0.1, error=False)

    snap = window.snapshot()
    assert snap.qps == pytest.approx(10, rel=0.05)
    assert snap.peak_qps == 10.0


def test_qps_of_a_young_window_uses_the_time_elapsed(clock: FakeClock) -> None:
    """Before a full window has passed, qps divides by the seconds elapsed, not by window_s."""
    window = Window(60, clock)
    for _ in range(3):
        record(window, 20)
        clock.advance(1)

    assert window.snapshot().qps == pytest.approx(20.0)


def test_peak_qps_ignores_the_current_partial_second(clock: FakeClock) -> None:
    """peak_qps is the busiest complete second; the second still filling up does not count yet."""
    window = Window(60, clock)
    for starts in (5, 20, 10):
        record(window, starts)
        clock.advance(1)

    clock.advance(0.5)
    record(window, 50)
    assert window.snapshot().peak_qps == 20.0

    clock.advance(0.5)
    assert window.snapshot().peak_qps == 50.0


def test_peak_qps_falls_out_with_its_second(clock: FakeClock) -> None:
    """A burst stops being the peak once its second leaves the window."""
    window = Window(10, clock)
    record(window, 100)
    for _ in range(15):
        clock.advance(1)
        record(window, 3)

    clock.advance(1)
    assert window.snapshot().peak_qps == 3.0


def test_in_flight_and_peak_concurrency(clock: FakeClock) -> None:
    """in_flight is the live count; peak_concurrency is its highest value within the window."""
    window = Window(10, clock)
    for _ in range(5):
        window.start()
    for _ in range(2):
        window.finish(0.1, error=False)

    snap = window.snapshot()
    assert (snap.in_flight, snap.peak_concurrency) == (3, 5)

    clock.advance(30)  # the peak of 5 has left the window; 3 calls are still running
    snap = window.snapshot()
    assert (snap.in_flight, snap.peak_concurrency) == (3, 3)

    for _ in range(3):
        window.finish(30, error=False)
    assert window.snapshot().in_flight == 0
    clock.advance(30)
    assert window.snapshot().peak_concurrency == 0


def _uniform() -> list[float]:
    return [ms / 1000 for ms in range(1, 1001)]


def _bimodal() -> list[float]:
    return [0.02] * 900 + [0.8] * 90 + [5.0] * 10


@pytest.mark.parametrize(
    ("latencies", "expected_ms"),
    [
        pytest.param(_uniform(), (500, 950, 990), id="uniform-1-1000ms"),
        pytest.param(_bimodal(), (20, 800, 800), id="bimodal"),
        pytest.param([0.25] * 10, (250, 250, 250), id="constant"),
    ],
)
def test_percentiles_are_within_one_bin_of_the_truth(
    clock: FakeClock, latencies: list[float], expected_ms: tuple[float, float, float]
) -> None:
    """p50, p95 and p99 of a known distribution are within one 15% bin of the true values."""
    window = Window(60, clock)
    random.Random(3).shuffle(latencies)

    for latency in latencies:
        window.start()
        window.finish(latency, error=False)

    snap = window.snapshot()
    for got, want in zip((snap.p50_ms, snap.p95_ms, snap.p99_ms), expected_ms, strict=True):
        assert got == pytest.approx(want, rel=0.15)


def test_percentiles_cover_only_the_window(clock: FakeClock) -> None:
    """Slow calls that have left the window no longer raise the percentiles."""
    window = Window(10, clock)
    record(window, 100, latency_s=2.0)
    clock.advance(20)

    record(window, 100, latency_s=0.01)

    assert window.snapshot().p99_ms == pytest.approx(10, rel=0.15)


@pytest.mark.parametrize(
    "start",
    [
        pytest.param(T0, id="clock-at-1000"),
        pytest.param(0.0, id="clock-at-0"),
    ],
)
def test_reset_forgets_the_window_but_keeps_totals(start: float) -> None:
    """reset() empties the window (a closed circuit starts fresh); totals and in_flight stay."""
    clock = FakeClock(start)
    window = Window(60, clock)
    record(window, 30, errors=20, latency_s=1.0)
    window.start()
    clock.advance(2.5)

    window.reset()

    assert window.counts() == (0, 0)
    assert window.snapshot() == empty(60, in_flight=1, totals=(30, 20))
    window.finish(2.5, error=False)
    record(window, 4, errors=1, latency_s=0.01)
    assert window.counts() == (5, 1)
    snap = window.snapshot()
    assert (snap.in_flight, snap.total_requests, snap.total_errors) == (0, 35, 21)


def test_a_reset_leaves_each_second_whole_for_the_history(clock: FakeClock) -> None:
    """The history reads each second once it has ended: a reset mid-second (a circuit
    opening) must not take that second's calls away, nor the seconds just before it."""
    window = Window(60, clock)
    clock.advance(1)
    record(window, 3, errors=1, latency_s=0.01)
    clock.advance(1)
    second = int(clock())
    record(window, 2, errors=2, latency_s=0.01)
    window.reset()
    record(window, 4, errors=0, latency_s=0.01)
    clock.advance(1)
    got = window.second(second)
    assert got is not None and got[:2] == (6, 2) and sum(got[2]) == 6
    before = window.second(second - 1)
    assert before is not None and before[:2] == (3, 1)
    assert window.counts() == (4, 0)  # the window itself starts fresh


@pytest.mark.parametrize("new_window_s", [10, 120])
def test_resize_keeps_in_flight_and_lets_earlier_calls_finish(
    clock: FakeClock, new_window_s: float
) -> None:
    """resize() in place keeps calls in flight, which finish without in_flight going negative."""
    window = Window(60, clock)
    record(window, 10, errors=10)
    window.start()
    window.start()

    window.resize(new_window_s)
    window.finish(0.1, error=False)
    window.finish(0.1, error=True)

    snap = window.snapshot()
    assert snap.window_s == new_window_s
    assert (snap.in_flight, snap.requests, snap.errors) == (0, 2, 1)
    assert (snap.total_requests, snap.total_errors) == (12, 11)
    clock.advance(new_window_s + 1)
    assert window.counts() == (0, 0)


def test_resize_applies_the_new_length(clock: FakeClock) -> None:
    """After resizing to a shorter window, calls fall out by the new length."""
    window = Window(60, clock)
    window.resize(5)
    record(window, 3)

    clock.advance(4.5)
    assert window.counts() == (3, 0)
    clock.advance(1.5)
    assert window.counts() == (0, 0)


def test_stats_creates_windows_on_first_use_and_resizes_them_in_place(clock: FakeClock) -> None:
    """Stats hands out one window per backend and resizes each in place when window_s changes."""
    stats = Stats(60, clock)
    relay = stats.window("relay")
    record(relay, 3, errors=1)

    stats.resize(60)  # unchanged: nothing is forgotten
    assert stats.window("relay") is relay
    assert relay.counts() == (3, 1)

    stats.resize(30)
    assert stats.window("relay") is relay
    assert (relay.window_s, stats.window("legacy").window_s) == (30, 30)
    assert relay.counts() == (0, 0)
    assert (relay.total_requests, relay.total_errors) == (3, 1)


def test_counts_forget_old_errors_after_an_idle_gap(clock: FakeClock) -> None:
    """After a gap longer than the window, counts() holds only the calls made since."""
    window = Window(10, clock)
    record(window, 5, errors=5)
    clock.advance(25)
    assert window.counts() == (0, 0)
    record(window, 2, errors=1)
    assert window.counts() == (2, 1)
    clock.advance(3)
    record(window, 1)
    assert window.counts() == (3, 1)
    assert window.snapshot().requests == 3
