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


def run_durable_handlers(max_rounds: int = 10) -> int:
    """Execute every pending durable run here and now, as a worker would; how many ran.

    Runs that the executed handlers cause (their events' durable handlers) run too, up
    to ``max_rounds`` rounds. A run that raises stays pending (or dead) as it would in
    a worker; its next attempt waits for another call. Use it in tests instead of
    starting a worker; the runs must be committed (``django_db(transaction=True)``), or
    recorded in the test's transaction when the test never commits.
    """
    from .durable import execute
    from .models import HandlerRun, RunStatus

    ran = 0
    tried: set[Any] = set()
    for _ in range(max_rounds):
        pending = [
            run_id
            for run_id in HandlerRun.objects.filter(status=RunStatus.PENDING)
            .order_by("created_at")
            .values_list("id", flat=True)
            if run_id not in tried
        ]
        if not pending:
            break
        for run_id in pending:
            tried.add(run_id)
            execute(str(run_id))
            ran += 1
    return ran
