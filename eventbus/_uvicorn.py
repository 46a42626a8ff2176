"""Frames written straight to a uvicorn WebSocket's transport, each encoded once per event.

Under uvicorn's sans-I/O WebSocket protocol (``--ws websockets-sansio``), an ASGI send
of a text frame encodes it (websockets' ``Frame.serialize``) for every socket. The
fan-out sends the same frame to thousands of sockets, so here it is encoded once and
the same bytes are written to each transport, as websockets would have written them.

Only when nothing would differ from the ASGI send: the socket is open, its transport
takes data without waiting (uvicorn has not paused writing), and no extension (per-
message compression) was negotiated. Otherwise the caller sends through ASGI as usual,
so backpressure, compression and closing behave as they do without this.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

# What the writer reads of uvicorn's protocol object; a uvicorn without them gets none.
_ATTRIBUTES = (
    "transport",
    "conn",
    "writable",
    "handshake_complete",
    "close_sent",
    "disconnected",
    "initial_response",
)


@functools.cache
def _protocol_class() -> type[Any] | None:
    # Imported on first use, not with the module: uvicorn and websockets are the
    # server's, and a project served by daphne has neither.
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import (
            WebSocketsSansIOProtocol,
        )
    except ImportError:
        return None
    return WebSocketsSansIOProtocol


def frame_writer(send: Any) -> Callable[[str], bool] | None:
    """For ``send``, a uvicorn sans-I/O socket's ASGI send: a function that writes a text
    frame to that socket at once and returns True, or returns False (having written
    nothing) when the frame must go through ``send``. None for any other ``send``."""
    protocol_class = _protocol_class()
    protocol: Any = getattr(send, "__self__", None)
    if (
        protocol_class is None
        or type(protocol) is not protocol_class
        or getattr(send, "__func__", None) is not protocol_class.send
        or not all(hasattr(protocol, name) for name in _ATTRIBUTES)
    ):
        return None
    from websockets.protocol import State  # there: uvicorn's sans-I/O protocol uses it

    writable, conn = protocol.writable, protocol.conn

    def write(text: str) -> bool:
        if (
            not writable.is_set()
            or not protocol.handshake_complete
            or protocol.close_sent
            or protocol.disconnected
            or protocol.initial_response is not None
            or conn.state is not State.OPEN
            or conn.extensions
        ):
            return False
        transport = protocol.transport
        if transport.is_closing():
            return False
        transport.write(encoded_text_frame(text))
        return True

    return write


@functools.lru_cache(maxsize=16)
def encoded_text_frame(text: str) -> bytes:
    """A server's unmasked, uncompressed text frame of ``text``: the bytes websockets
    writes for it. Cached: the fan-out writes the same frame to every socket."""
    from websockets.frames import Frame, Opcode

    return Frame(Opcode.TEXT, text.encode()).serialize(mask=False)
