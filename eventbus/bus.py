"""The channel-layer bus: committed events out to Channels groups, and subscriptions to them.

What crosses the layer is the event's public JSON (``private_fields`` removed, see
``eventbus.wire``), so only JSON-safe data leaves the process.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from uuid import UUID

from channels.layers import BaseChannelLayer, get_channel_layer
from django.core.exceptions import ImproperlyConfigured

from . import _redis, conf
from .catalog import CatalogEntry, catalog
from .channel_names import (
    Positions,
    agent_channel,
    default_channels,
    project_channel,
    route,
    validate_channel,
)
from .envelope import Event
from .ids import ObjectKey
from .layers import group_send_many
from .presence import Presence, read_presence
from .subscription import Subscription
from .wire import layer_message, public_json

__all__ = ["EventBus", "Subscription", "default_channels", "get_event_bus", "validate_channel"]


class EventBus:
    """Send events to Channels groups and subscribe to them."""

    def __init__(self, layer_alias: str | None = None) -> None:
        self.layer_alias = layer_alias

    @property
    def layer(self) -> BaseChannelLayer:
        alias = self.layer_alias or conf.get_settings().CHANNEL_LAYER
        layer = get_channel_layer(alias)
        if layer is None:
            raise ImproperlyConfigured(
                f"eventbus needs the channel layer {alias!r} in settings.CHANNEL_LAYERS."
            )
        return _redis.configure(layer)

    @staticmethod
    def get_project_channel(project_id: ObjectKey) -> str:
        """``eventbus.project.<key>``; a UUID, an integer or a short string key."""
        return project_channel(project_id)

    @staticmethod
    def get_agent_channel(agent_id: ObjectKey) -> str:
        """``eventbus.agent.<key>``; a UUID, an integer or a short string key."""
        return agent_channel(agent_id)

    def channels_for(self, event: Event[Any], entry: CatalogEntry | None = None) -> list[str]:
        """The channels ``event`` is broadcast to (none when its type opts out)."""
        return route(event, entry)

    async def send(self, channel: str, event: Event[Any]) -> None:
        """Send ``event`` to everyone subscribed to ``channel`` (at most once, live only).

        Nothing is stored: this bypasses the event log, so no resume can recover it.
        """
        validate_channel(channel)
        await group_send_many(self.layer, [(channel, layer_message(event, channel))])

    async def publish(self, channel: str, event: Event[Any]) -> None:
        """Deprecated alias of :meth:`send` (``publish`` is the dispatcher's word)."""
        warnings.warn(
            "EventBus.publish() is deprecated; use EventBus.send().",
            DeprecationWarning,
            stacklevel=2,
        )
        await self.send(channel, event)

    async def broadcast(
        self, events: Sequence[Event[Any]], positions: Mapping[UUID, Positions] | None = None
    ) -> int:
        """Send each event to its channels in one batch; return how many sends were made.

        An event with ``positions`` goes to the channels it was numbered on, each message
        carrying its position there; one without is routed now and carries none (a type
        kept out of the log). Raises when the layer did not take the batch (some sends
        may have gone out: delivery is at least once).
        """
        sends: list[tuple[str, dict[str, Any]]] = []
        for event in events:
            entry = catalog.resolve(event.type)
            numbered = positions.get(event.id) if positions else None
            channels: Iterable[str] = numbered if numbered is not None else route(event, entry)
            raw = None
            for channel in channels:
                raw = raw or public_json(event, entry)
                position = numbered[channel] if numbered is not None else None
                sends.append((channel, layer_message(event, channel, raw, position)))
        await group_send_many(self.layer, sends)
        return len(sends)

    async def presence(self, channel: str) -> Presence:
        """Who is on ``channel`` now: each present user's key, what it exposes (the
        ``PRESENCE`` hook's dict) and its connection count, across server processes.

        Connections whose server stopped renewing them (it died) are pruned first, and
        their users' leaves announced to the channel's watchers. Empty for a channel on
        which nobody is present (the hook answered None for everyone). Raises
        :class:`~eventbus.exceptions.PresenceError` when presence is off or the layer
        has no presence store.
        """
        return await read_presence(self.layer, validate_channel(channel))

    def subscribe(self, channels: Iterable[str]) -> Subscription:
        """Live events of ``channels``, to use as ``async with bus.subscribe([...]) as events``.

        Plain ``async for`` works too; ``break`` then leaves the groups only when the
        subscription is closed (``await sub.close()``) or garbage collected.
        """
        return Subscription(self, [validate_channel(channel) for channel in channels])


_buses: dict[str | None, EventBus] = {}


def get_event_bus(layer_alias: str | None = None) -> EventBus:
    """The process's bus on ``layer_alias`` (default: ``EVENTBUS['CHANNEL_LAYER']``)."""
    bus = _buses.get(layer_alias)
    if bus is None:
        bus = _buses[layer_alias] = EventBus(layer_alias)
    return bus
