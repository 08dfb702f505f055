"""Spent credit is read from the provider's error code: never retried, counted against the
backend as ``credit_spent``, fallen back from, and named in the readiness reason."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canary.proxy.credit import spent_code
from tests.helpers import Upstream, no_sleep, serving

ROUTES = """
backends:
  legacy: {base_url: "http://legacy.test/v1", api_key: sk-l}
  relay: {base_url: "http://relay.test/v1", api_key: sk-r}
routes:
  - name: chat
    weights: {legacy: 0, relay: 100}
    baseline: legacy
    fallback: true
readiness: {min_requests: 1}
retry: {max_attempts: 3, backoff_s: 0}
"""

# The providers' own error bodies (OpenAI; new-api/one-api; sub2api; OpenRouter).
SPENT = [
    pytest.param(
        429,
        {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
                   "param": None, "code": "insufficient_quota"}},
        "insufficient_quota",
        id="openai-429",
    ),
    pytest.param(
        403,
        {"error": {"message": "user quota is not enough", "type": "new_api_error",
                   "param": "", "code": "insufficient_user_quota"}},
        "insufficient_user_quota",
        id="new-api-403",
    ),
    pytest.param(
        403,
        {"error": {"message": "pre-consume failed", "type": "one_api_error",
                   "code": "pre_consume_token_quota_failed"}},
        "pre_consume_token_quota_failed",
        id="one-api-403",
    ),
    pytest.param(
        403,
        {"code": "INSUFFICIENT_BALANCE", "message": "Insufficient account balance"},
        "INSUFFICIENT_BALANCE",
        id="sub2api-403",
    ),
    pytest.param(402, {"error": {"code": 402, "message": "Insufficient credits"}}, "402",
                 id="openrouter-402"),
]  # fmt: skip


@pytest.mark.parametrize(("status", "body", "code"), SPENT)
async def test_spent_credit_falls_back_without_retry(
    tmp_path: Path, status: int, body: dict[str, object], code: str
) -> None:
    """One try on the relay, the client served by the baseline, the kind credit_spent."""
    upstream = Upstream()

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "relay.test":
            return httpx.Response(status, content=orjson.dumps(body))
        return Upstream.ok(request)

    upstream.handler = answer
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES)
    app = serving(str(path), transport=httpx.MockTransport(upstream), sleep=no_sleep, watch=False)
    async with app as c:
        r = await c.post("/v1/chat/completions", json={"model": "m", "messages": []})
        assert r.status_code == 200
        assert r.headers["x-canary-backend"] == "legacy"
        assert r.headers["x-canary-fallback"] == "relay"
        assert [q.url.host for q in upstream.requests] == ["relay.test", "legacy.test"]
        metrics = (await c.get("/metrics")).text
        assert 'canary_upstream_failures_total{backend="relay",kind="credit_spent"} 1.0' in metrics
        reason = (await c.get("/status")).json()["migration"]["reason"]
        assert f"credit spent ({code}) on 1 of 1 calls" in reason


async def test_a_plain_rate_limit_is_still_retried(tmp_path: Path) -> None:
    """A 429 that names no spent credit stays a rate limit: retried, then answered."""
    upstream = Upstream()
    upstream.handler = lambda r: httpx.Response(
        429, content=b'{"error": {"code": "rate_limit_exceeded"}}'
    )
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES.replace("fallback: true", "fallback: false"))
    app = serving(str(path), transport=httpx.MockTransport(upstream), sleep=no_sleep, watch=False)
    async with app as c:
        r = await c.post("/v1/chat/completions", json={"model": "m", "messages": []})
        assert r.status_code == 429
        assert r.json() == {"error": {"code": "rate_limit_exceeded"}}  # passed back unchanged
        assert len(upstream.requests) == 3


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def _dumps(value: object) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), _JSON.map(_dumps)))
def test_any_error_body_is_read_without_raising(body: bytes) -> None:
    """Random bytes and random JSON never crash the reader; a code comes back only when one
    of the known spent-credit codes is there."""
    code = spent_code(body)
    assert code is None or code.lower() in {
        "insufficient_quota", "insufficient_user_quota", "pre_consume_token_quota_failed",
        "insufficient_balance",
    }  # fmt: skip
