"""Where committed events go beyond the process, chosen by ``EVENTBUS['SINK']``.

A sink is any class with ``async def send(self, events)`` that raises when the
events did not get through; the relay then keeps them pending and retries.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from django.utils.module_loading import import_string

from .envelope import Event


@runtime_checkable
class Sink(Protocol):
    async def send(self, events: Sequence[Event[Any]]) -> None:
        """Deliver ``events`` (in order) or raise; partial delivery may repeat on retry."""


class InMemorySink:
    """Keeps what it is sent in ``events``: a fake for tests (the default is ChannelLayerSink)."""

    def __init__(self) -> None:
        self.events: list[Event[Any]] = []

    async def send(self, events: Sequence[Event[Any]]) -> None:
        self.events.extend(events)

    def clear(self) -> None:
        self.events.clear()


class ChannelLayerSink:
    """Broadcasts each event to its channels on the Channels layer (the default sink)."""

    async def send(self, events: Sequence[Event[Any]]) -> None:
        from .bus import get_event_bus  # imports Channels only when this sink is used

        await get_event_bus().broadcast(events)


@functools.cache
def load_sink(path: str) -> Sink:
    """One sink instance per import path, per process."""
    sink = import_string(path)()
    if not isinstance(sink, Sink):
        raise TypeError(f"{path} has no async send(events) method, so it is not a sink")
    return sink
