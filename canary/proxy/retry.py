"""Retries of failed upstream calls: which failures, how long to wait, and how many.

Only failures that cannot have been billed are retried on the same backend: a 429, 502,
503 or 504 answer (the provider said it did not do the work), or a connection that
never opened (``httpx.ConnectError``/``ConnectTimeout``, exact thanks to
``canary.proxy.transport``). A timeout or a reset after the request was sent is not resent
(an LLM call received twice is billed twice) unless ``retry.unsafe: true`` says the
caller accepts that; fallback to the baseline still applies.

Waits grow exponentially from ``retry.backoff_s`` with full jitter, and honour the
provider's ``retry-after-ms`` / ``Retry-After`` (seconds) when longer; a provider asking
for more than ``MAX_RETRY_AFTER_S`` is not retried (the answer goes back, or falls back).

``RetryBudget`` keeps retries to at most ``retry.budget`` of the calls made to a backend
over the last ``SPAN_S`` seconds (Envoy's retry budget), with a floor of ``MIN_RETRIES``
so a quiet backend can still retry: a failing provider must not get its load multiplied.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import httpx

from canary.proxy.transport import Answer, WholeAnswer, may_have_reached, read_all

RETRY_STATUSES = frozenset({429, 502, 503, 504, 529})  # 529: Anthropic's overloaded_error
MAX_RETRY_AFTER_S = 10.0
SPAN_S = 10
MIN_RETRIES = 3


def retryable_error(exc: httpx.TransportError, *, unsafe: bool = False) -> bool:
    """Only a call that never reached the provider (``transport.may_have_reached``) is safe
    to send again; ``retry.unsafe`` accepts the risk of a double bill for the rest."""
    if isinstance(exc, httpx.LocalProtocolError | httpx.UnsupportedProtocol):
        return False  # our request or URL is at fault: sending it again cannot help
    return unsafe or not may_have_reached(exc)


def backoff(attempt: int, backoff_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter before try ``attempt + 1``."""
    return backoff_s * 2.0 ** (attempt - 1) * rng.random()


def delay_s(
    attempt: int, backoff_s: float, headers: Sequence[tuple[bytes, bytes]], rng: random.Random
) -> float | None:
    """Seconds to wait before try ``attempt + 1``; None when the provider asks too much."""
    wait = backoff(attempt, backoff_s, rng)
    asked = _retry_after(headers)
    if asked is not None:
        if asked > MAX_RETRY_AFTER_S:
            return None
        wait = max(wait, asked)
    return wait


_RETRY_AFTER = {b"retry-after-ms": 0.001, b"retry-after": 1.0}


def _retry_after(headers: Sequence[tuple[bytes, bytes]]) -> float | None:
    """The provider's ask, in seconds: ``retry-after-ms`` first, then ``Retry-After``."""
    asked: dict[float, bytes] = {}
    for name, value in headers:
        scale = _RETRY_AFTER.get(name.lower())
        if scale is not None:
            asked.setdefault(scale, value)
    for scale in _RETRY_AFTER.values():
        given = asked.get(scale)
        if given is not None:
            try:
                return max(0.0, float(given.decode("latin-1")) * scale)
            except ValueError:
                continue  # an HTTP date: rare from LLM providers; fall back to our backoff
    return None


class RetryBudget:
    """Per-backend counts of calls and retries over a short ring of one-second buckets."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._rings: dict[str, list[list[int]]] = {}

    def _bucket(self, backend: str) -> list[int]:
        ring = self._rings.get(backend)
        if ring is None:
            ring = self._rings[backend] = [[-1, 0, 0] for _ in range(SPAN_S)]
        second = int(self._clock())
        bucket = ring[second % SPAN_S]
        if bucket[0] != second:
            bucket[0], bucket[1], bucket[2] = second, 0, 0
        return bucket

    def note_call(self, backend: str) -> None:
        self._bucket(backend)[1] += 1

    def try_spend(self, backend: str, ratio: float) -> bool:
        """Take one retry if the budget allows it."""
        bucket = self._bucket(backend)
        oldest = int(self._clock()) - SPAN_S + 1
        calls = retries = 0
        for second, c, r in self._rings[backend]:
            if second >= oldest:
                calls += c
                retries += r
        if retries >= max(MIN_RETRIES, ratio * calls):
            return False
        bucket[2] += 1
        return True


def give_up(response: Answer | None, failure: httpx.TransportError | None) -> Answer:
    """No more tries: the last failure stands (raised), or the last answer goes back."""
    if failure is not None:
        raise failure
    assert response is not None
    return response


async def kept(response: Answer) -> Answer:
    """A retryable answer read whole (an error body is small) and its connection freed,
    so it can still be passed back, byte for byte, if the retry is not made."""
    try:
        raw = await read_all(response)
    finally:
        await response.aclose()
    return WholeAnswer(response.status, response.headers, raw)
