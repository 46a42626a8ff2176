"""The channel-layer bus: events to Channels groups, and ``async for`` over them.

Group names: ``eventbus.project.<hex>`` and ``eventbus.agent.<hex>``. What crosses
the layer is the event's public JSON (``private_fields`` removed), so only
JSON-safe data leaves the process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any
from uuid import UUID

from channels.layers import BaseChannelLayer, get_channel_layer
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string
from pydantic import TypeAdapter, ValidationError

from . import _redis, conf
from .catalog import catalog
from .envelope import ActorType, Event
from .exceptions import InvalidChannelError
from .layers import group_send_many

MESSAGE_TYPE = "eventbus.event"
"""The ``type`` of channel-layer messages; consumers handle it as ``eventbus_event``."""

_CHANNEL_NAME = re.compile(r"^[A-Za-z0-9._-]{1,90}$")
# What lost the layer's server (a subscription, a fan-out's reader) retries after 0.1 s,
# then 0.2 s, ... up to 2 s.
RETRY_FIRST = 0.1
RETRY_MAX = 2.0

logger = logging.getLogger("eventbus.bus")


def validate_channel(channel: object) -> str:
    """Return ``channel`` if it is a usable group name, else raise InvalidChannelError."""
    if not isinstance(channel, str) or not _CHANNEL_NAME.match(channel):
        raise InvalidChannelError(
            f"{channel!r} is not a valid channel name: use 1 to 90 ASCII letters, digits, "
            "'.', '-' or '_'."
        )
    return channel


def public_json(event: Event[Any]) -> str:
    """The event as JSON without its type's ``private_fields``."""
    private = catalog.resolve(event.type).spec.private_fields
    if not private:
        return event.model_dump_json()
    data = event.model_dump(mode="json")
    data["payload"] = {k: v for k, v in data["payload"].items() if k not in private}
    return json.dumps(data, separators=(",", ":"))


def parse_event(raw: str) -> Event[Any]:
    """Rebuild an event from :func:`public_json`; private fields stay unset."""
    try:
        return Event.model_validate_json(raw)
    except ValidationError:
        data = json.loads(raw)
        entry = catalog.resolve(data["type"])
        if not entry.spec.private_fields:
            raise
        # The payload lacks its private fields on purpose: keep the rest, typed.
        model = entry.payload_model
        fields = {
            name: model.model_fields[name].annotation
            for name in data["payload"]
            if name in model.model_fields
        }
        partial = {
            name: _coerce(annotation, data["payload"][name]) for name, annotation in fields.items()
        }
        data["payload"] = model.model_construct(**partial)
        return Event.model_validate(data)


def _coerce(annotation: Any, value: Any) -> Any:
    return TypeAdapter(annotation).validate_python(value)


def default_channels(event: Event[Any]) -> list[str]:
    """Where an event goes: its project's channel, and the channel of each agent it is about.

    An event is about an agent when its payload has an ``agent_id`` or its actor is
    an agent. Replace with ``EVENTBUS['CHANNEL_ROUTER']``.
    """
    channels = []
    if event.project_id is not None:
        channels.append(EventBus.get_project_channel(event.project_id))
    agent_ids = []
    payload_agent = getattr(event.payload, "agent_id", None)
    if isinstance(payload_agent, UUID):
        agent_ids.append(payload_agent)
    if event.actor_type == ActorType.AGENT and event.actor_id is not None:
        agent_ids.append(event.actor_id)
    for agent_id in dict.fromkeys(agent_ids):
        channels.append(EventBus.get_agent_channel(agent_id))
    return channels


class EventBus:
    """Publish events to Channels groups and subscribe to them."""

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
    def get_project_channel(project_id: UUID | str) -> str:
        return f"eventbus.project.{UUID(str(project_id)).hex}"

    @staticmethod
    def get_agent_channel(agent_id: UUID | str) -> str:
        return f"eventbus.agent.{UUID(str(agent_id)).hex}"

    def channels_for(self, event: Event[Any]) -> list[str]:
        """The channels ``event`` is broadcast to (none when its type opts out)."""
        if not catalog.resolve(event.type).spec.broadcast:
            return []
        router = import_string(conf.get_settings().CHANNEL_ROUTER)
        return [validate_channel(channel) for channel in router(event)]

    async def publish(self, channel: str, event: Event[Any]) -> None:
        """Send ``event`` to everyone subscribed to ``channel`` (at most once, live only)."""
        validate_channel(channel)
        await group_send_many(self.layer, [(channel, _message(event, channel))])

    async def broadcast(self, events: Sequence[Event[Any]]) -> int:
        """Send each event to its channels in one batch; return how many sends were made.

        Raises when the layer did not take the batch (some sends may have gone out:
        delivery is at least once).
        """
        sends = [
            (channel, _message(event, channel, raw))
            for event in events
            for raw in (public_json(event),)
            for channel in self.channels_for(event)
        ]
        await group_send_many(self.layer, sends)
        return len(sends)

    def subscribe(self, channels: Iterable[str]) -> Subscription:
        """Live events of ``channels``, to use as ``async with bus.subscribe([...]) as events``.

        Plain ``async for`` works too; ``break`` then leaves the groups only when the
        subscription is closed (``await sub.close()``) or garbage collected.
        """
        return Subscription(self, [validate_channel(channel) for channel in channels])


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
                delay = min(delay * 2, RETRY_MAX)
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


def is_connection_error(exc: BaseException) -> bool:
    # redis-py's ConnectionError and TimeoutError are not OSErrors; match them by name
    # rather than import an optional dependency.
    return isinstance(exc, OSError) or any(
        cls.__name__ in ("ConnectionError", "TimeoutError") for cls in type(exc).__mro__
    )


def _message(event: Event[Any], channel: str, raw: str | None = None) -> dict[str, Any]:
    # id and event_type ride along so consumers can filter and dedupe without parsing.
    return {
        "type": MESSAGE_TYPE,
        "channel": channel,
        "id": str(event.id),
        "event_type": str(event.type.value),
        "event": raw or public_json(event),
    }


_buses: dict[str | None, EventBus] = {}


def get_event_bus(layer_alias: str | None = None) -> EventBus:
    """The process's bus on ``layer_alias`` (default: ``EVENTBUS['CHANNEL_LAYER']``)."""
    bus = _buses.get(layer_alias)
    if bus is None:
        bus = _buses[layer_alias] = EventBus(layer_alias)
    return bus
