"""The client's body, taken under its bounds (SPEC §3a): an upload to stream, or JSON whole.

Which it is depends on the ``Content-Type`` alone (``canary.proxy.upload.streams``), so
the route is still chosen before any byte of an upload is read. A JSON body is read whole
(``canary.proxy.body``) with the wait for its bytes bounded by ``server.client_timeout_s``
on the call's watch: a stall is a 408 that closes the connection.
"""

from __future__ import annotations

import asyncio
import math

from starlette.types import Receive

from canary.config.model import Server
from canary.proxy.body import Body, read_body
from canary.proxy.upload import Upload, stalled, streams
from canary.proxy.watchdog import Watch


async def take_body(
    receive: Receive, hdrs: dict[bytes, bytes], server: Server, watch: Watch
) -> Body | Upload:
    """The request's body: an ``Upload`` not yet read, or a ``Body`` read whole."""
    if streams(hdrs.get(b"content-type")):
        limit, wait = server.max_upload_bytes, server.client_timeout_s
        return Upload(receive, hdrs.get(b"content-length"), limit, wait, watch)
    encoding = hdrs.get(b"content-encoding", b"").strip().lower()
    watch.deadline = watch.task.get_loop().time() + server.client_timeout_s
    try:
        return await read_body(
            receive, hdrs.get(b"content-length"), encoding, server.max_body_bytes
        )
    except asyncio.CancelledError:
        if watch.cancelled_here():
            raise stalled(server.client_timeout_s) from None
        raise
    finally:
        watch.deadline = math.inf
