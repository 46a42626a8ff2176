"""The anchor of bench.e2e: the group consumer a user would write by hand with Channels.

``/ws/plain/?group=NAME`` joins the group ``NAME`` on connect; each ``plain.message``
sent to the group goes out as its ``text``, unchanged.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncWebsocketConsumer


class PlainGroupConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    async def connect(self) -> None:
        query = parse_qs(self.scope["query_string"].decode())
        self.group = query["group"][0]
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(self.group, self.channel_name)

    async def plain_message(self, message: dict[str, Any]) -> None:
        await self.send(text_data=message["text"])
