"""bench.e2e's floor: the least one Python process can do to fan an event out to sockets.

No ASGI, no Channels consumer, no per-socket task: a plain asyncio server that takes the
WebSocket handshake (websockets' sans-I/O protocol), joins ``?group=NAME`` once through
the same RedisChannelLayer as the other servers, and for each ``plain.message`` encodes
one frame and writes those same bytes to every socket of the group. What this takes to
reach 1,000 clients is the cost of the sockets themselves (one ``send()`` system call
each) plus Redis and the measuring client: no WebSocket server in one process can beat
it on this machine.

Run: ``python -m bench.floor_server --port N`` with ``EVENTBUS_TEST_REDIS_URL`` set.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from urllib.parse import parse_qs, urlsplit

from channels_redis.core import RedisChannelLayer
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol


class Fanout:
    def __init__(self, layer: RedisChannelLayer) -> None:
        self.layer = layer
        self.groups: dict[str, set[Connection]] = {}
        self.channel = ""

    async def run(self) -> None:
        while True:
            message = await self.layer.receive(self.channel)
            frame = Frame(Opcode.TEXT, message["text"].encode()).serialize(mask=False)
            for connection in self.groups.get(message["group"], ()):
                connection.transport.write(frame)

    async def join(self, group: str, connection: Connection) -> None:
        members = self.groups.setdefault(group, set())
        if not members:
            await self.layer.group_add(group, self.channel)
        members.add(connection)

    def leave(self, group: str, connection: Connection) -> None:
        self.groups.get(group, set()).discard(connection)


class Connection(asyncio.Protocol):
    def __init__(self, fanout: Fanout) -> None:
        self.fanout = fanout
        self.protocol = ServerProtocol()
        self.group: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if isinstance(event, Request):  # accept once in the group, as the anchor does
                asyncio.get_running_loop().create_task(self._accept(event))
        self._flush()

    async def _accept(self, request: Request) -> None:
        self.group = parse_qs(urlsplit(request.path).query)["group"][0]
        await self.fanout.join(self.group, self)
        self.protocol.send_response(self.protocol.accept(request))
        self._flush()

    def _flush(self) -> None:
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.transport.write(chunk)
            else:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.group is not None:
            self.fanout.leave(self.group, self)


async def serve(host: str, port: int) -> None:
    fanout = Fanout(RedisChannelLayer(hosts=[os.environ["EVENTBUS_TEST_REDIS_URL"]]))
    fanout.channel = await fanout.layer.new_channel()
    reader = asyncio.create_task(fanout.run())
    server = await asyncio.get_running_loop().create_server(
        lambda: Connection(fanout), host, port, backlog=1024
    )
    async with server:
        await asyncio.gather(reader, server.serve_forever())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    options = parser.parse_args()
    asyncio.run(serve(options.host, options.port))
