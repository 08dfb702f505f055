"""Spent credit, recognised by the provider's code in its (small) error body (SPEC §11).

A status alone cannot tell spent credit from a rate limit or a barred key: OpenAI says
``429 insufficient_quota``, new-api and one-api ``403 insufficient_user_quota`` or
``pre_consume_token_quota_failed``, sub2api ``403 INSUFFICIENT_BALANCE``; any ``402`` is
spent credit too. ``screen`` reads the body of a 402, 403 or 429 answer whole (error bodies
are small; one over ``MAX_ERROR_BYTES`` is left to stream, unread) and gives back an answer
that replays it byte for byte: a ``SpentAnswer`` naming the code when credit is spent.
The exchange makes that the failure kind ``credit_spent``: never retried (more calls
cannot buy credit), counted against the backend, and fallen back from.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx
import orjson

from canary.observe.meter import Meter
from canary.proxy.transport import RAW_ERRORS, Answer, WholeAnswer

CREDIT_STATUSES = frozenset({402, 403, 429})
SPENT_CODES = frozenset(
    {
        "insufficient_quota",  # OpenAI, 429
        "insufficient_user_quota",  # new-api, one-api, 403
        "pre_consume_token_quota_failed",  # new-api, one-api, 403
        "insufficient_balance",  # sub2api, 403 (written INSUFFICIENT_BALANCE)
    }
)
MAX_ERROR_BYTES = 64 << 10
KIND = "credit_spent"


class SpentAnswer(WholeAnswer):
    """An answer that says the key's credit is spent; ``code`` is the provider's word."""

    __slots__ = ("code",)

    def __init__(
        self, status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes, code: str
    ) -> None:
        super().__init__(status, headers, body)
        self.code = code


def spent_code(body: bytes) -> str | None:
    """The code naming spent credit in an OpenAI-, new-api- or sub2api-shaped error body
    (``error.code``, ``error.type``, or a top-level ``code``); None otherwise. Never raises."""
    if not body or len(body) > MAX_ERROR_BYTES:
        return None
    try:
        data = orjson.loads(body)
    except ValueError:  # not JSON, not UTF-8, nested too deep
        return None
    if not isinstance(data, dict):
        return None
    said = [data.get("code"), data.get("type")]
    error = data.get("error")
    if isinstance(error, dict):
        said = [error.get("code"), error.get("type"), *said]
    for code in said:
        if isinstance(code, str) and code.lower() in SPENT_CODES:
            return code[:64]
    return None


def credit_spent(answer: Answer) -> str | None:
    """The code of an answer ``screen`` found spending no more credit, else None."""
    return answer.code if isinstance(answer, SpentAnswer) else None


def spent_kind(answer: Answer, meter: Meter, backend: str) -> str | None:
    """``credit_spent`` when ``answer`` says so (its code kept for the words), else None."""
    code = credit_spent(answer)
    if code is None:
        return None
    meter.credit(backend, code)
    return KIND


async def screen(answer: Answer) -> Answer:
    """``answer``, its body read whole when its status may mean spent credit (see above)."""
    if answer.status not in CREDIT_STATUSES or _declared(answer.headers) > MAX_ERROR_BYTES:
        return answer
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= MAX_ERROR_BYTES:
            chunk = await answer.readany()
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        else:
            return _Prefixed(answer, b"".join(chunks))  # too long for an error: pass it on
    except RAW_ERRORS as exc:
        raise answer.failed(exc) from exc
    await answer.aclose()
    body = b"".join(chunks)
    code = spent_code(body) or ("402" if answer.status == 402 else None)
    if code is not None:
        return SpentAnswer(answer.status, answer.headers, body, code)
    return WholeAnswer(answer.status, answer.headers, body)


def _declared(headers: Sequence[tuple[bytes, bytes]]) -> int:
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


class _Prefixed:
    """An answer whose first bytes were read already: they come back first."""

    __slots__ = ("_answer", "_prefix", "headers", "status")

    def __init__(self, answer: Answer, prefix: bytes) -> None:
        self._answer = answer
        self._prefix = prefix
        self.status = answer.status
        self.headers = answer.headers

    async def readany(self) -> bytes:
        if self._prefix:
            prefix, self._prefix = self._prefix, b""
            return prefix
        return await self._answer.readany()

    def failed(self, exc: BaseException) -> httpx.TransportError:
        return self._answer.failed(exc)

    async def aclose(self) -> None:
        await self._answer.aclose()
