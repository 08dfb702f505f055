"""canary's WebSocket protocol under uvicorn: uvicorn's sans-I/O one, plus a frame writer.

uvicorn's ``websockets-sansio`` protocol does everything here (the handshake, pings and
pongs, close frames and their timeout, flow control, the drain's 1012): ``SessionProtocol``
only adds ``write_text`` / ``write_binary`` and offers them to the app as the scope
extension ``canary.types.FRAMES``, once the handshake is read. A session's frames
(``canary.proxy.frames``) go through them instead of ``await send(message)``:

    ASGI send      message dict -> uvicorn's send (writable wait, state checks, dispatch)
                   -> websockets' Frame, check, serialize -> join -> transport.write
    write_text     state checks -> 2, 4 or 10 header bytes + payload -> transport.write

A frame costs 0.6 us instead of 2.2 (a loop of small text frames on a recording
transport), of the 12 to 17 a relayed frame costs in all (``make bench`` row 5g). It
writes a frame only while the connection is open, nothing is waiting on flow control and
no close went either way: otherwise it returns False and the app uses ``send``, which
waits or raises as uvicorn does. With permessage-deflate negotiated, the frame goes
through websockets' own encoder (``Extension.encode``, as websockets' framing does), so
one compressor keeps its state whichever path a frame takes; compressing is most of such
a frame's cost (4.4 us instead of 5.6 through the writer). Server frames are never
masked; a message is one frame (FIN), as uvicorn sends it.

The writer reads uvicorn's protocol state (``conn``, websockets' state machine, and
``writable``, both there since uvicorn 0.35 brought this protocol) and the transport's:
``tests/serve/test_websocket.py`` pins that against the installed uvicorn and websockets.
"""

from __future__ import annotations

import struct
from typing import cast

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State

from canary.types import FRAMES

_OPEN = State.OPEN
_TEXT, _BINARY = 0x81, 0x82  # FIN and the opcode
_OPCODE = {_TEXT: Opcode.TEXT, _BINARY: Opcode.BINARY}
_SHORT = struct.Struct("!BB").pack  # payload < 126 bytes
_MEDIUM = struct.Struct("!BBH").pack  # < 64 KiB
_LONG = struct.Struct("!BBQ").pack


class SessionProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, offering the app a direct frame writer."""

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if self.response.status_code == 101:  # else refused: no app, no scope
            extensions = cast(dict[str, object], self.scope["extensions"])  # ASGI: a dict
            extensions[FRAMES] = self

    def write_text(self, data: str) -> bool:
        """One text frame, written at once; False when ``send`` must do it."""
        return self._write(_TEXT, data.encode())

    def write_binary(self, data: bytes) -> bool:
        """One binary frame, written at once; False when ``send`` must do it."""
        return self._write(_BINARY, data)

    def _write(self, first: int, payload: bytes | bytearray | memoryview) -> bool:
        conn = self.conn
        if (
            conn.state is not _OPEN  # not accepted, or a close went either way
            or self.transport.is_closing()  # lost or closing: websockets is not told
            or not self.writable.is_set()  # flow control: send waits for the drain
        ):
            return False
        if conn.extensions:  # permessage-deflate: websockets' encoder (its one compressor)
            frame = Frame(_OPCODE[first], payload)
            for extension in conn.extensions:
                frame = extension.encode(frame)
            first |= frame.rsv1 << 6 | frame.rsv2 << 5 | frame.rsv3 << 4
            payload = frame.data
        size = len(payload)
        if size < 126:
            self.transport.write(_SHORT(first, size) + payload)
        elif size < 65536:
            self.transport.write(_MEDIUM(first, 126, size) + payload)
        else:  # no copy of a large payload
            self.transport.writelines((_LONG(first, 127, size), payload))
        return True
