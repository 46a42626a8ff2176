"""A lean WebSocket client for bench.e2e: websockets' own protocol, stamped as frames are read.

bench.e2e holds up to 1,000 clients in one process. websockets' asyncio client wakes a
task for every message; here an ``asyncio.Protocol`` feeds websockets' sans-I/O
``ClientProtocol`` and stamps each text frame with ``time.perf_counter()`` in
``data_received``, the moment the event loop reads the socket. Frames are stored raw
and parsed after the measurement, so the clients cost little while it runs.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Origin
from websockets.uri import parse_uri

OPEN_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0


class Client(asyncio.Protocol):
    """One WebSocket connection.

    ``frames`` holds ``(perf_counter(), text bytes)`` as received, unless ``keep`` is
    false; ``received`` counts text frames either way.
    """

    def __init__(self, url: str, origin: str, cookie: str | None, keep: bool = True) -> None:
        self.url = url
        self.protocol = ClientProtocol(parse_uri(url), origin=Origin(origin), max_size=None)
        self.cookie = cookie
        self.keep = keep
        self.frames: list[tuple[float, bytes]] = []
        self.received = 0
        self.response: Response | None = None  # the handshake's, once it came
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        # A handshake that failed after its waiter gave up must not warn at exit.
        self.opened.add_done_callback(lambda f: f.cancelled() or f.exception())

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        request = self.protocol.connect()
        if self.cookie:
            request.headers["Cookie"] = self.cookie
        self.protocol.send_request(request)
        self._flush()

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if isinstance(event, Frame):
                if event.opcode is Opcode.TEXT:
                    self.received += 1
                    if self.keep:
                        self.frames.append((now, event.data))
            elif isinstance(event, Response) and not self.opened.done():
                self.response = event
                if self.protocol.handshake_exc is not None:
                    self.opened.set_exception(self.protocol.handshake_exc)
                else:
                    self.opened.set_result(None)
        self._flush()

    def eof_received(self) -> bool:
        self.protocol.receive_eof()
        self._flush()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during the handshake"))
        if not self.lost.done():
            self.lost.set_result(None)

    def _flush(self) -> None:
        assert self.transport is not None
        for data in self.protocol.data_to_send():
            if data:
                self.transport.write(data)
            elif self.transport.can_write_eof():
                self.transport.write_eof()
        if self.protocol.close_expected():
            self.transport.close()

    # -- use -----------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.protocol.state is State.OPEN

    @property
    def close_code(self) -> int | None:
        """The code of the close frame the server sent, if it sent one."""
        close = self.protocol.close_rcvd
        return close.code if close is not None else None

    def send_json(self, frame: Any) -> None:
        self.protocol.send_text(json.dumps(frame).encode())
        self._flush()

    def take_frames(self) -> list[tuple[float, bytes]]:
        """The frames held so far; ``frames`` and ``received`` start again from zero."""
        frames, self.frames, self.received = self.frames, [], 0
        return frames

    def stop_reading(self) -> None:
        """Stop reading the socket, as a stalled browser tab would; the connection stays up."""
        assert self.transport is not None
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        assert self.transport is not None
        self.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def close(self) -> None:
        """Close politely; drop the TCP connection after ``CLOSE_TIMEOUT`` seconds regardless."""
        if self.transport is None:
            return
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(1000)
            self._flush()
        try:
            await asyncio.wait_for(asyncio.shield(self.lost), CLOSE_TIMEOUT)
        except TimeoutError:
            self.transport.abort()


async def open_client(
    host: str,
    port: int,
    path: str,
    *,
    cookie: str | None = None,
    keep: bool = True,
    receive_buffer: int | None = None,
) -> Client:
    """Connect to ``ws://host:port/path`` with our own origin, and finish the handshake.

    ``receive_buffer`` fixes the socket's receive buffer (SO_RCVBUF), which turns off the
    kernel's autotuning: a client that stops reading is then felt by the server after a
    few kilobytes rather than megabytes.
    """
    loop = asyncio.get_running_loop()
    client = Client(f"ws://{host}:{port}{path}", f"http://{host}:{port}", cookie, keep)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), OPEN_TIMEOUT)
        await loop.create_connection(lambda: client, sock=sock)
    except BaseException:
        sock.close()
        raise
    try:
        await asyncio.wait_for(asyncio.shield(client.opened), OPEN_TIMEOUT)
    except BaseException:
        client.abort()
        raise
    return client


async def close_all(clients: list[Client]) -> None:
    """Close every client (each bounded by ``CLOSE_TIMEOUT``), all at once."""
    await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)


async def wait_received(clients: list[Client], count: int, timeout: float) -> bool:
    """Wait until every client has received ``count`` text frames, polling every 2 ms.

    One poller for all clients, not a task each: 1,000 waking tasks would load the
    event loop that stamps the frames. False when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while any(client.received < count for client in clients):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.002)
    return True
