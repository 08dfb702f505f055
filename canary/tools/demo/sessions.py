"""The demo's WebSocket part: a few Realtime sessions through the router, once the story
has played out, so ``make demo`` shows a session chosen, relayed and metered as a call is.

Each session opens ``/v1/realtime`` (the route ``realtime``, 50/50 like ``chat``), asks for
one response, reads to its ``response.done`` and closes; who served it comes from the
handshake's ``x-canary-backend``, the tokens from the event's usage. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

SESSIONS = 4
WAIT_S = 5.0


async def one_session(router: str, user: str) -> tuple[str, int]:
    """(the backend that served it, its tokens), from one Realtime session."""
    from websockets.asyncio.client import connect

    url = router.replace("http://", "ws://", 1) + "/v1/realtime?model=gpt-realtime"
    async with (
        asyncio.timeout(WAIT_S),
        connect(
            url, additional_headers={"x-user-id": user}, open_timeout=WAIT_S, close_timeout=1
        ) as ws,
    ):
        assert ws.response is not None
        backend = ws.response.headers.get("x-canary-backend", "?")
        await ws.send(json.dumps({"type": "response.create"}))
        async for raw in ws:
            event = json.loads(raw)
            if event.get("type") == "response.done":
                usage = event["response"].get("usage") or {}
                return backend, int(usage.get("input_tokens", 0) + usage.get("output_tokens", 0))
    return backend, 0


async def sessions_line(router: str) -> str:
    """One line on what the sessions did, or why they could not."""
    served: Counter[str] = Counter()
    tokens = 0
    try:
        for i in range(SESSIONS):
            backend, used = await one_session(router, f"ws-user-{i}")
            served[backend] += 1
            tokens += used
    except (OSError, TimeoutError, ValueError) as exc:  # websockets' errors are OSError/ValueError
        return f"  WebSocket sessions: failed ({type(exc).__name__})"
    by = ", ".join(f"{name} {n}" for name, n in sorted(served.items()))
    return f"  WebSocket sessions: {SESSIONS} Realtime sessions ({by}), {tokens} tokens metered"
