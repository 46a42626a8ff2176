"""Helpers for testing code that publishes events, like Django's ``mail.outbox``.

::

    with capture_events() as events:
        close_ticket(ticket)
    assert events.types() == ["ticket.status_updated", "ticket.closed"]

Events are captured when published, before any commit, the way ``mail.outbox``
captures mail when sent; handlers still run as usual.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .dispatcher import EventDispatcher, get_event_dispatcher
from .envelope import Event


class CapturedEvents(list[Event[Any]]):
    def of_type(self, event_type: object) -> list[Event[Any]]:
        name = getattr(event_type, "value", event_type)
        return [event for event in self if event.type.value == name]

    def types(self) -> list[str]:
        return [str(event.type.value) for event in self]


@contextmanager
def capture_events(dispatcher: EventDispatcher | None = None) -> Iterator[CapturedEvents]:
    """Collect every event published inside the block (nested blocks each get theirs).

    It observes the dispatcher (:meth:`EventDispatcher.connect_observer`), so events
    are captured once stored, from ``publish()`` and ``apublish()`` alike.
    """
    dispatcher = dispatcher or get_event_dispatcher()
    captured = CapturedEvents()
    dispatcher.connect_observer(captured.append)
    try:
        yield captured
    finally:
        dispatcher.disconnect_observer(captured.append)
