"""Frames written straight to a uvicorn sans-I/O WebSocket: a real uvicorn protocol object
over a transport that records what is written, the bytes checked by websockets' client."""

import asyncio
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from eventbus._uvicorn import encoded_text_frame, frame_writer

FRAME = '{"type":"event","channel":"c","event":{"id":"x"}}'


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False

    def write(self, data: Any) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )


class Socket:
    """uvicorn's protocol after the handshake, the ASGI send it gave the app, and a client
    that reads what the transport was given."""

    def __init__(self, protocol: WebSocketsSansIOProtocol, transport: Transport, client: Any):
        self.protocol, self.transport, self.client = protocol, transport, client
        self.send: Any = None

    def texts(self) -> list[str]:
        """The text frames the client can read from what was written so far."""
        self.client.receive_data(bytes(self.transport.written))
        self.transport.written.clear()
        events = self.client.events_received()
        return [e.data.decode() for e in events if isinstance(e, Frame) and e.opcode is Opcode.TEXT]


async def open_socket(compression: bool = False) -> Socket:
    accepted = asyncio.Event()
    socket: Socket

    async def app(scope: Any, receive: Any, send: Any) -> None:
        socket.send = send
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        accepted.set()
        await asyncio.Event().wait()

    config = Config(app=app, ws="websockets-sansio", ws_per_message_deflate=True, lifespan="off")
    config.load()
    protocol = WebSocketsSansIOProtocol(config, ServerState(), app_state={})
    transport = Transport()
    extensions = [ClientPerMessageDeflateFactory()] if compression else None
    client = ClientProtocol(parse_uri("ws://127.0.0.1:8000/ws/"), extensions=extensions)
    socket = Socket(protocol, transport, client)
    protocol.connection_made(transport)
    client.send_request(client.connect())
    protocol.data_received(b"".join(client.data_to_send()))
    await asyncio.wait_for(accepted.wait(), 5)
    client.receive_data(bytes(transport.written))  # the handshake's response
    transport.written.clear()
    client.events_received()
    return socket


async def test_a_frame_is_written_as_websockets_would_write_it():
    socket = await open_socket()
    write = frame_writer(socket.send)
    assert write is not None
    assert write(FRAME) and write(FRAME)
    written = bytes(socket.transport.written)
    assert socket.texts() == [FRAME, FRAME]
    # The very bytes the ASGI send writes.
    await socket.send({"type": "websocket.send", "text": FRAME})
    assert bytes(socket.transport.written) * 2 == written
    assert encoded_text_frame(FRAME) is encoded_text_frame(FRAME)  # encoded once


async def test_nothing_is_written_where_the_asgi_send_would_differ():
    socket = await open_socket()
    write = frame_writer(socket.send)
    assert write is not None
    socket.protocol.pause_writing()  # the client does not read: the send must wait
    assert not write(FRAME)
    socket.protocol.resume_writing()
    assert write(FRAME)
    await socket.send({"type": "websocket.close", "code": 1000})
    assert not write(FRAME)
    assert socket.texts() == [FRAME]


async def test_a_socket_with_compression_goes_through_the_asgi_send():
    socket = await open_socket(compression=True)
    assert socket.protocol.conn.extensions  # per-message deflate was agreed
    write = frame_writer(socket.send)
    assert write is not None and not write(FRAME)
    assert socket.transport.written == b""
    await socket.send({"type": "websocket.send", "text": FRAME})
    assert socket.texts() == [FRAME]


@pytest.mark.parametrize("send", [None, print, Transport().write])
def test_other_sends_get_no_writer(send):
    assert frame_writer(send) is None


def test_the_consumer_imports_without_uvicorn_or_websockets():
    # A project served by daphne has neither package; the install check found the
    # consumer failing to import when this module imported websockets at the top.
    import subprocess
    import sys

    code = (
        "import sys\n"
        "sys.modules['websockets'] = None\n"
        "sys.modules['uvicorn'] = None\n"
        "import eventbus.consumers, eventbus._uvicorn as u\n"
        "u._protocol_class.cache_clear()\n"
        "assert u.frame_writer(print) is None\n"
        "print('imported')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "imported"
