"""A raw-socket WebSocket client: it sends frames no well-behaved library would.

Frames are built by hand (RFC 6455, masked as a client must), so a test can send
invalid UTF-8, fragments, control frames, reserved opcodes and oversized messages.
Everything it reads is parsed just enough to find the server's close code.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import struct

TIMEOUT = 10.0


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, rng: random.Random | None = None
) -> bytes:
    """One masked client frame."""
    head = bytes([(0x80 if fin else 0) | opcode])
    length = len(payload)
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", length)
    mask = (rng or random).randbytes(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawWs:
    """One connection; ``close_code`` is the server's, once ``closed`` is done."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.close_code: int | None = None
        self.text_frames = 0
        self.closed = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(
        cls, host: str, port: int, origin: str, cookie: str | None = None
    ) -> tuple[int, RawWs | None]:
        """``(HTTP status, connection)``; the connection is None unless the status is 101."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            "GET /ws/events/ HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            f"Origin: {origin}",
        ]
        if cookie:
            lines.append(f"Cookie: sessionid={cookie}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        status = int(head.split(b" ", 2)[1])
        if status != 101:
            writer.close()
            return status, None
        return status, cls(reader, writer)

    async def _read(self) -> None:
        try:
            while True:
                first, second = await self.reader.readexactly(2)
                length = second & 0x7F
                if length == 126:
                    (length,) = struct.unpack("!H", await self.reader.readexactly(2))
                elif length == 127:
                    (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
                payload = await self.reader.readexactly(length)
                opcode = first & 0x0F
                if opcode == 0x1:
                    self.text_frames += 1
                elif opcode == 0x8:
                    if len(payload) >= 2:
                        (self.close_code,) = struct.unpack("!H", payload[:2])
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return

    async def send(self, data: bytes) -> bool:
        """Write raw bytes; False once the server has gone."""
        if self.closed.done() or self.writer.is_closing():
            return False
        try:
            self.writer.write(data)
            await asyncio.wait_for(self.writer.drain(), TIMEOUT)
        except (ConnectionError, TimeoutError):
            return False
        return True

    async def close(self) -> None:
        if not self.closed.done():
            await self.send(frame(0x8, struct.pack("!H", 1000)))
            try:
                await asyncio.wait_for(asyncio.shield(self.closed), 2)
            except TimeoutError:
                self.closed.cancel()
        self.writer.close()
