"""What bench.durable's ``db_worker`` processes run: the durable handler and its anchor.

Both do the same work for an event: record when they started, in one INSERT
(:func:`record_start`). The durable handler gets its event from eventbus; the anchor,
``by_hand``, is the task a project would write without eventbus: it loads the event's
row and calls the same body.

Every process of the bench loads this module at start-up, because its ``CATALOG`` is
in ``EVENTBUS['CATALOGS']`` (bench/durable_settings.py): that is also what declares the
durable handler in a worker before it runs a task.
"""

from __future__ import annotations

import enum
import os
import time
from typing import Any

from django.db import connection
from pydantic import BaseModel, ConfigDict

from eventbus import Event, event_handler
from eventbus.models import EVENT_COLUMNS, EventRecord, event_from_columns

try:
    from django.tasks import task
except ImportError:  # Django 5.2: the backport
    from django_tasks import task  # type: ignore[no-redef,import-not-found,unused-ignore]

# Written by the bench (CREATE TABLE in bench.durable), not by a migration.
STARTS = "bench_durable_start"


class BenchEvent(enum.StrEnum):
    DURABLE = "bench.durable"  # one durable handler
    BY_HAND = "bench.by_hand"  # no handler: the publisher enqueues ``by_hand`` itself


class Tick(BaseModel):
    model_config = ConfigDict(frozen=True)
    n: int


CATALOG = {BenchEvent.DURABLE: Tick, BenchEvent.BY_HAND: Tick}


def record_start(event_id: Any, kind: str) -> None:
    """The handler body both sides share: one row saying when it started, and where."""
    started = time.time()
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {STARTS} (event_id, kind, started, pid) VALUES (%s, %s, %s, %s)",
            [str(event_id), kind, started, os.getpid()],
        )


@event_handler(BenchEvent.DURABLE, durable=True)
def durable_handler(event: Event[Tick]) -> None:
    record_start(event.id, "eventbus")


@task()
def by_hand(event_id: str) -> None:
    """The anchor: what a task written by hand for the same handler does."""
    columns = EventRecord.objects.filter(pk=event_id).values_list(*EVENT_COLUMNS).first()
    if columns is None:
        raise LookupError(f"event {event_id} is not in the log")
    record_start(event_from_columns(*columns).id, "anchor")
