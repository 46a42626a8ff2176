"""Where committed events go beyond the process, chosen by ``EVENTBUS['SINK']``.

A sink is any class with ``async def send(self, events)`` that raises when the
events did not get through; the relay then keeps them pending and retries.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from uuid import UUID

from django.utils.module_loading import import_string

from .envelope import Event

if TYPE_CHECKING:
    from .channel_names import Positions


@runtime_checkable
class Sink(Protocol):
    async def send(self, events: Sequence[Event[Any]]) -> None:
        """Deliver ``events`` (in order) or raise; partial delivery may repeat on retry."""


async def send_to(
    sink: Sink, events: Sequence[Event[Any]], positions: Mapping[UUID, Positions]
) -> None:
    """Hand ``events`` to ``sink``; one that sets ``takes_positions`` gets their positions.

    A sink that declares ``takes_positions = True`` is called as
    ``send(events, positions=...)``: each event's position on each of its channels.
    """
    if getattr(sink, "takes_positions", False):
        await sink.send(events, positions=positions)  # type: ignore[call-arg]
    else:
        await sink.send(events)


class InMemorySink:
    """Keeps what it is sent in ``events``: a fake for tests (the default is ChannelLayerSink)."""

    def __init__(self) -> None:
        self.events: list[Event[Any]] = []

    async def send(self, events: Sequence[Event[Any]]) -> None:
        self.events.extend(events)

    def clear(self) -> None:
        self.events.clear()


class ChannelLayerSink:
    """Broadcasts each event to its channels on the Channels layer (the default sink).

    Each message carries the event's position on its channel, so readers order it.
    """

    takes_positions = True

    async def send(
        self, events: Sequence[Event[Any]], positions: Mapping[UUID, Positions] | None = None
    ) -> None:
        from .bus import get_event_bus  # imports Channels only when this sink is used

        await get_event_bus().broadcast(events, positions)


@functools.cache
def load_sink(path: str) -> Sink:
    """One sink instance per import path, per process."""
    sink = import_string(path)()
    if not isinstance(sink, Sink):
        raise TypeError(f"{path} has no async send(events) method, so it is not a sink")
    return sink
