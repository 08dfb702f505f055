"""The rollback state machine on a fake clock: the trip rule and every transition."""

from __future__ import annotations

from dataclasses import replace

import pytest

from canary.config.loader import parse_config
from canary.config.model import Config, Rollback
from canary.safety.breaker import CLOSED, HALF_OPEN, OPEN, Breakers, Circuit, CircuitEvent
from canary.safety.windows import Stats, Window

RULES = Rollback(
    window_s=60, min_requests=10, max_error_rate=0.2, open_s=30, probe_requests=3, auto_resume=True
)


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def events() -> list[CircuitEvent]:
    return []


@pytest.fixture
def circuit(clock: FakeClock, events: list[CircuitEvent]) -> Circuit:
    return Circuit("relay", RULES, Window(RULES.window_s, clock), clock, events.append)


def call(c: Circuit, *, error: bool) -> None:
    """One finished call, as the proxy reports it: window first, then the circuit."""
    c.window.start()
    c.window.finish(0.01, error=error)
    c.record(error=error)


def trip(c: Circuit) -> None:
    for i in range(10):
        call(c, error=i < 3)  # 3 of 10 = 0.3 > 0.2, decided on the 10th call
    assert c.state == OPEN


def test_no_verdict_below_min_requests(circuit: Circuit) -> None:
    """Even 100% errors do not trip before min_requests calls are in the window."""
    for _ in range(9):
        call(circuit, error=True)
    assert circuit.state == CLOSED
    call(circuit, error=True)
    assert circuit.state == OPEN


def test_trips_on_the_call_that_crosses_the_rate(
    circuit: Circuit, events: list[CircuitEvent]
) -> None:
    """The rate is checked when a failed call lands; the crossing call opens the circuit."""
    for _ in range(8):
        call(circuit, error=False)
    call(circuit, error=True)
    call(circuit, error=True)  # 2 of 10 = 0.2: not above the bar
    assert circuit.state == CLOSED
    call(circuit, error=True)  # 3 of 11 = 0.27
    assert circuit.state == OPEN
    assert [(e.from_state, e.to_state) for e in events] == [(CLOSED, OPEN)]
    assert events[0].reason == "error rate 0.273 > 0.2 over 11 requests"
    assert (events[0].requests, events[0].errors) == (11, 3)


def test_successes_alone_never_trip(circuit: Circuit) -> None:
    """A healthy backend stays closed however many calls it takes."""
    for _ in range(500):
        call(circuit, error=False)
    assert circuit.state == CLOSED


def test_old_errors_leave_the_window(circuit: Circuit, clock: FakeClock) -> None:
    """Errors older than window_s no longer count toward the rate."""
    for _ in range(9):
        call(circuit, error=True)
    clock.now += 61
    for _ in range(9):
        call(circuit, error=False)
    call(circuit, error=True)  # 1 of 10 in the window
    assert circuit.state == CLOSED


def test_open_refuses_until_open_s_then_half_opens(
    circuit: Circuit, clock: FakeClock, events: list[CircuitEvent]
) -> None:
    """Open sends traffic elsewhere; after open_s the next pick makes it half-open."""
    trip(circuit)
    assert not circuit.admit()
    clock.now += 29.9
    assert not circuit.admit()
    clock.now += 0.2
    assert circuit.admit()
    assert circuit.state == HALF_OPEN
    assert events[-1].to_state == HALF_OPEN


def test_half_open_admits_exactly_probe_requests(circuit: Circuit, clock: FakeClock) -> None:
    """Only probe_requests calls get through while half-open; the rest go to the baseline."""
    trip(circuit)
    clock.now += 31
    admitted = [circuit.admit() for _ in range(10)]
    assert admitted == [True, True, True] + [False] * 7


def test_good_probes_close_with_a_fresh_window(
    circuit: Circuit, clock: FakeClock, events: list[CircuitEvent]
) -> None:
    """All probes good: closed again, the window and readiness counts start fresh."""
    trip(circuit)
    clock.now += 31
    for _ in range(3):
        assert circuit.admit()
        call(circuit, error=False)
    assert circuit.state == CLOSED
    assert [e.to_state for e in events] == [OPEN, HALF_OPEN, CLOSED]
    assert events[-1].reason == "3 probes succeeded"
    assert circuit.window.counts() == (0, 0)
    assert (circuit.since_requests, circuit.since_errors) == (0, 0)
    call(circuit, error=True)  # old errors cannot trip it again
    assert circuit.state == CLOSED


def test_a_failed_probe_opens_again(
    circuit: Circuit, clock: FakeClock, events: list[CircuitEvent]
) -> None:
    """One bad probe reopens the circuit and restarts the open_s wait."""
    trip(circuit)
    clock.now += 31
    assert circuit.admit()
    call(circuit, error=False)
    assert circuit.admit()
    call(circuit, error=True)
    assert circuit.state == OPEN
    assert [e.to_state for e in events] == [OPEN, HALF_OPEN, OPEN]
    assert events[-1].reason == "probe failed (1 of 3 ok)"
    assert not circuit.admit()
    clock.now += 31
    assert circuit.admit()


def test_a_probe_whose_client_left_gives_its_slot_back(circuit: Circuit, clock: FakeClock) -> None:
    """An abandoned probe does not leave the circuit half-open forever."""
    trip(circuit)
    clock.now += 31
    assert [circuit.admit() for _ in range(3)] == [True] * 3
    assert not circuit.admit()
    circuit.abandon()
    assert circuit.admit()


def test_without_auto_resume_it_stays_open(clock: FakeClock) -> None:
    """auto_resume: false holds the circuit open however long; a re-arm resumes."""
    rules = replace(RULES, auto_resume=False)
    c = Circuit("relay", rules, Window(60, clock), clock, lambda e: None)
    trip(c)
    clock.now += 10_000
    assert not c.admit()
    c.rearm("routes.yaml changed relay")
    assert c.state == CLOSED
    assert c.admit()


def test_calls_in_flight_when_it_opened_do_not_change_it(circuit: Circuit) -> None:
    """A late result while open is counted in the window but leaves the state alone."""
    trip(circuit)
    call(circuit, error=False)
    assert circuit.state == OPEN


BASE = """
backends:
  legacy: {{base_url: "http://127.0.0.1:1/v1"}}
  relay: {{base_url: "http://127.0.0.1:2/v1"{relay_extra}}}
  other: {{base_url: "http://127.0.0.1:3/v1"}}
routes:
  - name: chat
    weights: {{legacy: 90, relay: {relay}}}
  - name: other
    weights: {{other: 100, legacy: 5}}
rollback: {{min_requests: 10, max_error_rate: 0.2, open_s: 30, probe_requests: 3}}
"""


def config(relay: int = 10, relay_extra: str = "", tail: str = "") -> Config:
    text = BASE.format(relay=relay, relay_extra=relay_extra) + tail
    return parse_config(text.encode(), "routes.yaml", environ={})


@pytest.fixture
def breakers(clock: FakeClock) -> Breakers:
    b = Breakers(Stats(60, clock), clock)
    b.apply(None, config())
    return b


def test_circuits_exist_for_canaries_only(breakers: Breakers) -> None:
    """A backend gets a circuit when it is a non-baseline target of some route."""
    assert set(breakers.circuits) == {"relay", "legacy"}  # legacy is a canary on 'other'


def test_effective_weights_zero_open_canaries_never_the_baseline(breakers: Breakers) -> None:
    """An open circuit's share moves to each route's baseline; a baseline is never zeroed."""
    cfg = config()
    trip(breakers.circuits["legacy"])
    assert breakers.effective(cfg.routes[0]) == {"legacy": 90, "relay": 10}  # legacy is baseline
    assert breakers.effective(cfg.routes[1]) == {"other": 105, "legacy": 0}
    trip(breakers.circuits["relay"])
    assert breakers.effective(cfg.routes[0]) == {"legacy": 100, "relay": 0}


@pytest.mark.parametrize(
    ("new", "rearmed"),
    [
        pytest.param(config(relay=20), True, id="weight"),
        pytest.param(config(relay_extra=", timeout_s: 5"), True, id="backend-setting"),
        pytest.param(
            config(tail="pricing: {legacy: {m: {input: 1, output: 1}}}\n"), False, id="other"
        ),
    ],
)
def test_config_change_rearms_what_it_touches(
    breakers: Breakers, events: list[CircuitEvent], new: Config, rearmed: bool
) -> None:
    """Changing a backend's weight or settings closes its circuit; other edits do not."""
    relay = breakers.circuits["relay"]
    trip(relay)
    breakers.apply(config(), new)
    assert relay.state == (CLOSED if rearmed else OPEN)
    if rearmed:
        assert breakers.events[-1].reason == "routes.yaml changed relay"
        assert relay.window.counts() == (0, 0)


def test_events_are_kept_newest_last_and_bounded(breakers: Breakers, clock: FakeClock) -> None:
    """Every transition is kept as an event; the list is bounded."""
    relay = breakers.circuits["relay"]
    for _ in range(60):
        trip(relay)
        relay.rearm("test")
    assert len(breakers.events) == 100
    assert breakers.events[-1].to_state == CLOSED


def test_the_call_that_reaches_min_requests_can_trip_it(circuit: Circuit) -> None:
    """Errors first, then successes: the call that fills the window to min_requests decides."""
    for _ in range(3):
        call(circuit, error=True)
    for _ in range(6):
        call(circuit, error=False)
    assert circuit.state == CLOSED  # 9 calls: no verdict yet
    call(circuit, error=False)  # the 10th: 3 of 10 = 0.3 > 0.2
    assert circuit.state == OPEN
