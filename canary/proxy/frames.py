"""The frames of one open WebSocket session, both ways, unchanged and in order.

    client --websocket.receive--> _upward   --send_str / send_bytes--> upstream
    client <--websocket.send----- _downward <--receive---------------- upstream

One task per direction; ``relay`` waits for the first to end, ends the other side and
says how the session ended (``Ending``). Text stays text and binary stays binary; a
message is relayed whole (uvicorn and aiohttp join fragments). Pings are answered on
each hop by the libraries (uvicorn, aiohttp's autoping): ASGI carries no ping, so they
keep each connection alive rather than cross. Close codes cross both ways: a code that
cannot go in a close frame (1005 "none given", 1006 "dropped") becomes 1000 from a
client that closed without one, 1001 from a client that vanished.

How a session ends, and what the other side gets:

    ended by                      other side gets                      cut
    client close frame (code c)   upstream: c                          no
    client gone (no close frame)  upstream: 1001                       no
    upstream close frame (c)      client: c (1000 when none given)     c == 1011
    upstream gone, garbage frames client: 1011                         yes
    server.session_max_s          both: 1001 "session_max_s reached"   no
    drain timeout (cancelled)     both: 1001 "canary is shutting down" no

Every close waits at most ``CLOSE_TIMEOUT_S`` for the peer's answer (aiohttp's close
timeout upstream, uvicorn's towards the client), so nothing stays open. Server events
are read (``canary.proxy.events``) only when their type could matter.

Towards the client, a frame goes through the server's frame writer when it offers one
(``canary.types.FRAMES``: ``canary serve`` does, ``canary.serve.websocket``), else through
ASGI's ``send``. The writer skips the ASGI message, uvicorn's dispatch of it and
websockets' framing, about 1.6 us of the 12 to 17 a relayed frame costs (``make bench``
row 5g); the price is a writer that reads uvicorn's protocol state, pinned by its tests.
It takes a frame only when ``send`` would write it at once: otherwise (writing paused, a
close under way, the client gone) it declines, and ``send`` waits or raises as always, so
order, flow control and close codes are ``send``'s. Closes always go through ``send``.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import aiohttp
from starlette.types import Receive, Send

from canary.proxy.events import COMPACT, WANTED, Scan
from canary.proxy.sockets import CLOSE_TIMEOUT_S, UpstreamSocket
from canary.types import FrameWriter

_TEXT, _BINARY, _CLOSE, _CLOSING = (
    aiohttp.WSMsgType.TEXT,
    aiohttp.WSMsgType.BINARY,
    aiohttp.WSMsgType.CLOSE,
    aiohttp.WSMsgType.CLOSING,
)
GOING_AWAY = 1001
UPSTREAM_FAILED = 1011
TOO_BIG = 1009


@dataclass(slots=True)
class Tally:
    """Frames and bytes each way (text frames count their characters: their bytes when
    ASCII, as JSON events nearly always are)."""

    frames_in: int = 0  # client -> upstream
    bytes_in: int = 0
    frames_out: int = 0  # upstream -> client
    bytes_out: int = 0


@dataclass(slots=True)
class Ending:
    """How a session ended: ``by`` client | upstream | limit | drain; the close code the
    client sent or got; ``cut`` when the upstream ended it abnormally."""

    by: str
    code: int
    cut: bool = False


def sendable(code: int | None, otherwise: int) -> int:
    """``code`` when it may go in a close frame (1000-1003, 1007-1014, 3000-4999)."""
    if code is not None and (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999):
        return code
    return otherwise


async def _upward(receive: Receive, upstream: UpstreamSocket, tally: Tally, scan: Scan) -> Ending:
    """The client's frames to the upstream until the client ends (or the upstream is gone)."""
    send_str, send_bytes = upstream.send_str, upstream.send_bytes
    while True:
        message = await receive()
        kind = message["type"]
        try:
            if kind == "websocket.receive":
                text = message.get("text")
                if text is not None:
                    if scan.asking:
                        scan.client(text)
                    await send_str(text)
                    tally.bytes_in += len(text)
                else:
                    data = message.get("bytes") or b""
                    await send_bytes(data)
                    tally.bytes_in += len(data)
                tally.frames_in += 1
            elif kind == "websocket.disconnect":
                code = message.get("code", 1005)
                return Ending("client", code)
        except (aiohttp.ClientError, OSError, RuntimeError):
            return Ending("upstream", UPSTREAM_FAILED, cut=True)  # it went away mid-write


def _cannot(data: Any) -> bool:
    return False  # no frame writer: every frame through ``send``


async def _downward(
    upstream: UpstreamSocket, send: Send, tally: Tally, scan: Scan, writer: FrameWriter | None
) -> Ending:
    """The upstream's frames to the client until the upstream ends (or the client is gone).

    The hot loop of a session: locals only, each frame to the server's writer when it takes
    it, else one message dict per kind reused (the server encodes a message before ``send``
    returns), the tally written once at the end."""
    receive, server = upstream.receive, scan.server
    write_text = writer.write_text if writer is not None else _cannot
    write_binary = writer.write_binary if writer is not None else _cannot
    text_out: dict[str, Any] = {"type": "websocket.send", "text": ""}
    bytes_out: dict[str, Any] = {"type": "websocket.send", "bytes": b""}
    frames = size = 0
    try:
        while True:
            msg = await receive()
            kind = msg.type
            if kind is _TEXT:
                text: str = msg.data
                if text.startswith(WANTED) or not text.startswith(COMPACT):
                    server(text)  # deltas, the bulk of a session, never get here
                if not write_text(text):
                    text_out["text"] = text
                    await send(text_out)
                size += len(text)
            elif kind is _BINARY:
                data: bytes = msg.data
                if not write_binary(data):
                    bytes_out["bytes"] = data
                    await send(bytes_out)
                size += len(data)
            else:
                return _upstream_end(msg)
            frames += 1
    except OSError:  # uvicorn's ClientDisconnected: the client went away mid-write
        return Ending("client", 1006)
    finally:
        tally.frames_out += frames
        tally.bytes_out += size


def _upstream_end(msg: aiohttp.WSMessage) -> Ending:
    """What a message that is not a frame says about the upstream's end."""
    if msg.type is _CLOSE:
        code = sendable(msg.data or 1005, 1000)
        return Ending("upstream", code, cut=code == UPSTREAM_FAILED)
    if msg.type is _CLOSING:
        return Ending("closing", 0)  # we are closing it (``relay``), not the upstream
    error = msg.data
    if isinstance(error, aiohttp.WebSocketError) and error.code == TOO_BIG:
        return Ending("upstream", TOO_BIG)  # our bound on a message, not the upstream's fault
    return Ending("upstream", UPSTREAM_FAILED, cut=True)  # dropped, or garbage frames


async def relay(
    receive: Receive,
    send: Send,
    upstream: UpstreamSocket,
    scan: Scan,
    max_s: float,
    writer: FrameWriter | None = None,
) -> tuple[Ending, Tally]:
    """Relay until one side ends, ``max_s`` passes or the task is cancelled (the drain);
    then end the other side too. Returns how it ended and what went each way. ``writer``:
    the server's frame writer for the client's side, when it offers one."""
    tally = Tally()
    loop = asyncio.get_running_loop()
    up = loop.create_task(_upward(receive, upstream, tally, scan))
    down = loop.create_task(_downward(upstream, send, tally, scan, writer))
    try:
        done, _ = await asyncio.wait((up, down), timeout=max_s, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        await _end_both(up, down, upstream, send, GOING_AWAY, "canary is shutting down")
        raise
    if down in done and down.result().by != "client":
        ending = down.result()
        await _stop(up)
        await _close_client(send, ending.code, "" if not ending.cut else "upstream failed")
    elif up in done or down in done:
        ending = up.result() if up in done else down.result()
        if ending.by == "upstream":  # a write upstream failed: the downward side says how
            ending = await _bounded(down) or ending
            await _close_client(send, ending.code, "upstream failed")
        else:
            await _stop(up)
            code = 1000 if ending.code == 1005 else sendable(ending.code, GOING_AWAY)
            await _close_upstream(upstream, code, "")
            await _bounded(down)
    else:
        ending = Ending("limit", GOING_AWAY)
        await _end_both(up, down, upstream, send, GOING_AWAY, "session_max_s reached")
    return ending, tally


async def _end_both(
    up: asyncio.Task[Ending], down: asyncio.Task[Ending], upstream: UpstreamSocket, send: Send,
    code: int, reason: str,
) -> None:  # fmt: skip
    """Close both sides with ``code`` (the limit, the drain); bounded, never raising."""
    await _stop(up)
    await _close_upstream(upstream, code, reason)
    await _bounded(down)
    await _close_client(send, code, reason)


async def _stop(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


async def _bounded(task: asyncio.Task[Ending]) -> Ending | None:
    """The task's ending, waited for at most the close timeout (then cancelled)."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_S + 1):
            return await asyncio.shield(task)
    except TimeoutError:
        await _stop(task)
    except Exception:
        return None
    return None


async def _close_upstream(upstream: UpstreamSocket, code: int, reason: str) -> None:
    """Send the upstream our close frame; its answer is awaited up to the close timeout."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT_S + 1):
            await upstream.close(code=code, message=reason.encode())


async def _close_client(send: Send, code: int, reason: str) -> None:
    """Send the client our close frame (uvicorn bounds the wait for its answer)."""
    with contextlib.suppress(OSError, RuntimeError):  # gone already, or closed already
        await send({"type": "websocket.close", "code": code, "reason": reason})
