"""``async for`` over live events: a subscription to some channels of the channel layer.

It owns its reconnects: a lost connection to the layer's server does not end the
iteration (see :class:`Subscription`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING, Any

from channels.layers import BaseChannelLayer

from .cursor import RESET_TYPE, StreamCursor
from .envelope import Event
from .exceptions import StreamReset
from .presence import PRESENCE_TYPE
from .reconnect import RETRY_FIRST, is_connection_error, next_delay
from .wire import parse_event

if TYPE_CHECKING:
    from .bus import EventBus

logger = logging.getLogger("eventbus.bus")


class Subscription:
    """Live events of some channels, in position order per channel, with nothing missed.

    Each channel's events arrive in the order of its stream (``eventbus.streams``), once
    each. When the layer's server goes away (``receive`` raises a connection error, as
    channels-redis's ``RedisChannelLayer`` does), iteration does not end: it waits
    (0.1 s, doubling up to 2 s), joins its groups again, and reads from the event log
    what was sent meanwhile before anything newer. A restarted Redis has forgotten group
    membership, and a reconnect between two reads can go unnoticed, so while waiting
    the subscription also rejoins and checks the log every ``refresh_seconds``; and an
    event that skips positions makes it read the missing ones from the log first.

    When the log cannot fill a gap (more than ``RESUME_MAX_EVENTS`` missed, pruned, the
    log unreachable), iteration raises :class:`~eventbus.StreamReset` for that channel.
    The subscription stays open: handle the reset (reload your state) and iterate again;
    the events after ``reset.position`` follow. Events of types kept out of the log
    (``EventSpec(log=False)``) and those sent with ``EventBus.send`` have no position:
    they are live only, at most once.
    """

    refresh_seconds = 5.0

    def __init__(self, bus: EventBus, channels: list[str]) -> None:
        self.bus = bus
        self.channels = channels
        self.channel_name: str | None = None
        self._layer: BaseChannelLayer | None = None
        self.cursor = StreamCursor()
        self._ready: deque[dict[str, Any]] = deque()

    async def start(self) -> None:
        """Join the channels' groups, then note where each stream stands in the log."""
        if self.channel_name is not None:
            return
        self._layer = self.bus.layer
        self.channel_name = await self._layer.new_channel("eventbus.sub.")
        await self._join()
        for channel in self.channels:
            await self.cursor.follow(channel)

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
        while not self._ready:
            try:
                received = await self._receive()
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
                self._ready.extend(await self._rejoin())
                continue
            delay = RETRY_FIRST
            for message in received:
                if message.get("type") == PRESENCE_TYPE:
                    continue  # presence is for sockets (and bus.presence), not events
                self._ready.extend(await self.cursor.admit(message))
        message = self._ready.popleft()
        if message.get("type") == RESET_TYPE:
            raise StreamReset(
                message["channel"], message["reason"], message["epoch"], message["position"]
            )
        return parse_event(message["event"])

    async def _receive(self) -> list[dict[str, Any]]:
        """The next message to admit; or none, when a refresh found what the log had that
        never arrived (it goes straight to the ready queue)."""
        assert self._layer is not None and self.channel_name is not None
        receive = asyncio.ensure_future(self._layer.receive(self.channel_name))
        try:
            while True:
                done, _ = await asyncio.wait({receive}, timeout=self.refresh_seconds)
                if done:
                    return [receive.result()]
                missed = await self._rejoin()
                if missed:
                    self._ready.extend(missed)
                    return []
        finally:
            if not receive.done():  # cancelled, or returning the log's: let the layer clean up
                receive.cancel()
                await asyncio.wait({receive})

    async def _rejoin(self) -> list[dict[str, Any]]:
        """Join the groups again; what the log has beyond each channel's position."""
        try:
            await self._join()
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            return []  # still away: the next receive fails too, and waits longer
        return await self.cursor.catch_up()
