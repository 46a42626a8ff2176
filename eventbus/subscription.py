"""``async for`` over live events: a subscription to some channels of the channel layer.

It owns its reconnects: a lost connection to the layer's server does not end the
iteration (see :class:`Subscription`).
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import TYPE_CHECKING, Any

from channels.layers import BaseChannelLayer

from .envelope import Event
from .reconnect import RETRY_FIRST, is_connection_error, next_delay
from .wire import parse_event

if TYPE_CHECKING:
    from .bus import EventBus

logger = logging.getLogger("eventbus.bus")


class Subscription:
    """Live events of some channels; survives the channel layer's server restarting.

    Delivery is live only: events sent while the subscription is not in its groups
    (before it starts, after it closes, while the server is away) are not seen here.
    When the layer's server goes away (``receive`` raises a connection error, as
    channels-redis's ``RedisChannelLayer`` does), iteration does not end: it waits
    (0.1 s, doubling up to 2 s), joins its groups again and goes on. A restarted Redis
    has forgotten group membership, and a reconnect between two reads can go unnoticed,
    so while waiting for an event the subscription also re-joins its groups every
    ``refresh_seconds``. ``RedisPubSubChannelLayer`` re-subscribes by itself.
    """

    refresh_seconds = 5.0

    def __init__(self, bus: EventBus, channels: list[str]) -> None:
        self.bus = bus
        self.channels = channels
        self.channel_name: str | None = None
        self._layer: BaseChannelLayer | None = None

    async def start(self) -> None:
        if self.channel_name is not None:
            return
        self._layer = self.bus.layer
        self.channel_name = await self._layer.new_channel("eventbus.sub.")
        await self._join()

    async def _join(self) -> None:
        assert self._layer is not None and self.channel_name is not None
        for channel in self.channels:
            await self._layer.group_add(channel, self.channel_name)

    async def close(self) -> None:
        if self.channel_name is None or self._layer is None:
            return
        name, self.channel_name = self.channel_name, None
        for channel in self.channels:
            await self._layer.group_discard(channel, name)

    async def __aenter__(self) -> Subscription:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event[Any]:
        await self.start()
        assert self._layer is not None and self.channel_name is not None
        delay = RETRY_FIRST
        while True:
            try:
                message = await self._receive()
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                logger.warning(
                    "Subscription %s lost the channel layer, joining again in %.1f s: %s",
                    self.channel_name,
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)
                delay = next_delay(delay)
                await self._rejoin()
                continue
            return parse_event(message["event"])

    async def _receive(self) -> dict[str, Any]:
        assert self._layer is not None and self.channel_name is not None
        receive = asyncio.ensure_future(self._layer.receive(self.channel_name))
        try:
            while True:
                done, _ = await asyncio.wait({receive}, timeout=self.refresh_seconds)
                if done:
                    message: dict[str, Any] = receive.result()
                    return message
                await self._rejoin()
        finally:
            if not receive.done():  # we were cancelled: let the layer clean up first
                receive.cancel()
                await asyncio.wait({receive})

    async def _rejoin(self) -> None:
        try:
            await self._join()
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            # Still away: the next receive fails too, and waits longer.
