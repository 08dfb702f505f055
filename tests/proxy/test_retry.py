"""Retry rules: which failures, how long to wait, and the budget, on a fake clock."""

from __future__ import annotations

import random

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canary.proxy.retry import MAX_RETRY_AFTER_S, MIN_RETRIES, RetryBudget, delay_s, retryable_error


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("exc", "retry"),
    [
        pytest.param(httpx.ConnectError("refused"), True, id="connect"),
        pytest.param(httpx.ConnectTimeout("slow connect"), True, id="connect-timeout"),
        pytest.param(httpx.ReadTimeout("read"), False, id="read-timeout"),
        pytest.param(httpx.ReadError("reset"), False, id="reset"),
        pytest.param(httpx.RemoteProtocolError("closed"), False, id="closed-after-send"),
    ],
)
def test_only_calls_that_never_left_are_retried(exc: httpx.TransportError, retry: bool) -> None:
    """A request that may have reached the provider could be billed twice: no retry."""
    assert retryable_error(exc) is retry


def test_backoff_grows_exponentially_with_jitter() -> None:
    """Waits stay under backoff_s * 2**(attempt-1) and vary between calls."""
    rng = random.Random(1)
    none: list[tuple[bytes, bytes]] = []
    waits = [[delay_s(a, 0.5, none, rng) for _ in range(200)] for a in (1, 2, 3)]
    for attempt, ws in zip((1, 2, 3), waits, strict=True):
        assert all(w is not None and 0 <= w <= 0.5 * 2 ** (attempt - 1) for w in ws)
        assert len(set(ws)) > 100


@pytest.mark.parametrize(
    ("headers", "at_least"),
    [
        pytest.param({"retry-after": "2"}, 2.0, id="seconds"),
        pytest.param({"retry-after-ms": "1500", "retry-after": "9"}, 1.5, id="ms-first"),
        pytest.param({"Retry-After": "3"}, 3.0, id="any-case"),
        pytest.param({"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"}, 0.0, id="http-date"),
    ],
)
def test_provider_retry_after_is_honoured(headers: dict[str, str], at_least: float) -> None:
    """The wait is never shorter than what the provider asked for."""
    wait = delay_s(1, 0.01, httpx.Headers(headers).raw, random.Random(0))
    assert wait is not None and wait >= at_least


def test_a_provider_asking_too_much_is_not_retried() -> None:
    """Retry-After beyond the cap means: give the answer back (or fall back) now."""
    headers = [(b"retry-after", str(int(MAX_RETRY_AFTER_S) + 1).encode())]
    assert delay_s(1, 0.5, headers, random.Random(0)) is None


def test_budget_allows_a_floor_then_a_share_of_calls() -> None:
    """Retries are capped at budget x calls over the span, with a floor for quiet backends."""
    clock = FakeClock()
    budget = RetryBudget(clock)
    assert [budget.try_spend("relay", 0.2) for _ in range(MIN_RETRIES + 1)] == [
        True
    ] * MIN_RETRIES + [False]
    for _ in range(100):
        budget.note_call("relay")
    spent = sum(budget.try_spend("relay", 0.2) for _ in range(50))
    assert spent == 20 - MIN_RETRIES  # 20% of 100 calls, counting the floor already used
    assert budget.try_spend("legacy", 0.2)  # per backend


def test_budget_recovers_as_old_calls_leave_the_span() -> None:
    """Ten seconds later the spent retries no longer count."""
    clock = FakeClock()
    budget = RetryBudget(clock)
    while budget.try_spend("relay", 0.2):
        pass
    clock.now += 11
    assert budget.try_spend("relay", 0.2)


def test_unsafe_retries_are_the_operators_choice() -> None:
    """retry.unsafe resends timeouts and resets too, but never a request we could not write."""
    assert retryable_error(httpx.ReadTimeout("read"), unsafe=True)
    assert retryable_error(httpx.RemoteProtocolError("closed"), unsafe=True)
    assert not retryable_error(httpx.LocalProtocolError("bad header"), unsafe=True)


_NAMES = st.sampled_from([b"retry-after", b"Retry-After", b"RETRY-AFTER-MS", b"retry-after-ms"])
_VALUES = st.sampled_from([b"nan", b"inf", b"-inf", b"-1", b"1e400", b" 2 ", b"0.02", b"\xff"])


@settings(max_examples=300, deadline=None)
@given(
    headers=st.lists(
        st.tuples(st.one_of(_NAMES, st.binary(max_size=20)), st.one_of(_VALUES, st.binary())),
        max_size=6,
    ),
    attempt=st.integers(1, 4),
)
def test_any_upstream_retry_after_gives_a_bounded_wait_or_none(
    headers: list[tuple[bytes, bytes]], attempt: int
) -> None:
    """Whatever an upstream sends in its headers (any bytes, any case, repeats), the
    wait is None (asked too much) or between 0 and the larger of backoff and its ask."""
    wait = delay_s(attempt, 0.5, headers, random.Random(0))
    assert wait is None or 0.0 <= wait <= max(0.5 * 2 ** (attempt - 1), MAX_RETRY_AFTER_S)
