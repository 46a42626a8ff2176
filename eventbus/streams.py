"""Channel streams: one position per channel for each event, given once and read back.

The relay numbers an event on each of its channels when it first claims it, in the same
transaction (:func:`assign_positions`); live delivery and replay then share that order.
Readers (a resuming socket, a process's fan-out catching up, a Python subscription) read
a channel's events after a position with one index range query (:func:`read_after`).
The models are imported inside each function: ``eventbus.bus`` reaches this module when
the package is imported, before Django's app registry is ready.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

from asgiref.sync import sync_to_async
from django.db import close_old_connections, connections, router

from .channel_names import Positions
from .envelope import Event

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Head:
    """Where a channel's stream stands: its epoch and its last position (0: no event yet)."""

    epoch: str
    position: int


@dataclass(frozen=True, slots=True)
class Entry:
    """One event read back from a channel's stream, at its position."""

    position: int
    event: Event[Any] | None  # None: its row no longer reads under the catalog
    event_id: UUID
    event_type: str


def new_epoch() -> str:
    return secrets.token_hex(4)


def assign_positions(
    events: Sequence[tuple[UUID, Sequence[str]]], using: str | None = None
) -> dict[UUID, Positions]:
    """Give each event the next position on each of its channels, in the order given.

    Call inside the transaction that claims the events: each channel's head stays
    locked until it commits, so positions become visible in order. Heads are locked
    in channel order, so two claims never wait on each other in a circle. This runs for
    every relay batch, so it is plain SQL, not the ORM's bulk helpers: the heads locked,
    then (on PostgreSQL in one statement) moved on and the entries inserted.
    """
    from .models import EventRecord, StreamEntry, StreamHead

    alias = using or router.db_for_write(StreamHead)
    names = sorted({channel for _, channels in events for channel in channels})
    if not names:
        return {}
    connection = connections[alias]
    quote = connection.ops.quote_name
    heads_table = quote(StreamHead._meta.db_table)
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    marks = ", ".join(["%s"] * len(names))
    select = (
        f"SELECT channel, position FROM {heads_table} "
        f"WHERE channel IN ({marks}) ORDER BY channel{lock}"
    )
    with connection.cursor() as cursor:
        cursor.execute(select, names)
        last = dict(cursor.fetchall())
        if len(last) < len(names):  # a channel's first event: its head, with a new epoch
            new = [name for name in names if name not in last]
            cursor.executemany(
                f"INSERT INTO {heads_table} (channel, epoch, position) VALUES (%s, %s, 0) "
                "ON CONFLICT (channel) DO NOTHING",
                [(name, new_epoch()) for name in new],
            )
            cursor.execute(select, names)
            last = dict(cursor.fetchall())
        positions: dict[UUID, Positions] = {}
        entries = []
        event_id_value = EventRecord._meta.pk.get_db_prep_value
        native_uuid = connection.features.has_native_uuid_field
        for event_id, channels in events:
            mine = positions[event_id] = {}
            if isinstance(event_id, UUID):  # what get_db_prep_value gives, at a fraction
                prepared: Any = event_id if native_uuid else event_id.hex
            else:
                prepared = event_id_value(event_id, connection)
            for channel in dict.fromkeys(channels):
                last[channel] += 1
                mine[channel] = last[channel]
                entries.append((channel, last[channel], prepared))
        entries_table = quote(StreamEntry._meta.db_table)
        if connection.vendor == "postgresql":  # one statement: heads moved, entries in
            cursor.execute(
                f"""
                WITH moved AS (
                    UPDATE {heads_table} AS h SET position = v.position
                    FROM unnest(%s::varchar[], %s::bigint[]) AS v(channel, position)
                    WHERE h.channel = v.channel
                )
                INSERT INTO {entries_table} (channel, position, event_id)
                SELECT * FROM unnest(%s::varchar[], %s::bigint[], %s::uuid[])
                """,
                [
                    pg_array(f'"{name}"' for name in names),
                    pg_array(str(last[name]) for name in names),
                    pg_array(f'"{channel}"' for channel, _, _ in entries),
                    pg_array(str(position) for _, position, _ in entries),
                    pg_array(str(event_id) for _, _, event_id in entries),
                ],
            )
        else:
            cursor.executemany(
                f"UPDATE {heads_table} SET position = %s WHERE channel = %s",
                [(last[name], name) for name in names],
            )
            cursor.executemany(
                f"INSERT INTO {entries_table} (channel, position, event_id) VALUES (%s, %s, %s)",
                entries,
            )
    return positions


def pg_array(elements: Iterable[str]) -> str:
    """A PostgreSQL array literal of elements written already (quoted where needed).

    Django binds parameters on the client with psycopg, which renders a Python list
    element by element; a batch's arrays as one text parameter cost a join instead.
    """
    return "{" + ",".join(elements) + "}"


def positions_of(event_ids: Iterable[UUID], using: str | None = None) -> dict[UUID, Positions]:
    """The positions given already (an event sent again keeps its positions)."""
    from .models import StreamEntry

    found: dict[UUID, Positions] = {}
    rows = (
        StreamEntry.objects.using(using or router.db_for_read(StreamEntry))
        .filter(event_id__in=list(event_ids))
        .values_list("event_id", "channel", "position")
    )
    for event_id, channel, position in rows:
        found.setdefault(event_id, {})[channel] = position
    return found


def heads(channels: Iterable[str], using: str | None = None) -> dict[str, Head]:
    """Where each channel's stream stands; a channel with no event yet is at 0, epoch ''."""
    from .models import StreamHead

    names = list(channels)
    found = {
        channel: Head(epoch, position)
        for channel, epoch, position in StreamHead.objects.using(
            using or router.db_for_read(StreamHead)
        )
        .filter(channel__in=names)
        .values_list("channel", "epoch", "position")
    }
    return {name: found.get(name, Head("", 0)) for name in names}


def position_of(event_id: UUID, channel: str, using: str | None = None) -> int | None:
    """The position of one event on ``channel``, if it has one there."""
    from .models import StreamEntry

    return (
        StreamEntry.objects.using(using or router.db_for_read(StreamEntry))
        .filter(event_id=event_id, channel=channel)
        .values_list("position", flat=True)
        .first()
    )


def read_after(channel: str, after: int, limit: int, using: str | None = None) -> list[Entry]:
    """The channel's entries with a position over ``after``, in order, at most ``limit``.

    One range scan of the (channel, position) index, whatever the size of the log.
    """
    from .models import EVENT_COLUMNS, StreamEntry, event_from_columns

    rows = (
        StreamEntry.objects.using(using or router.db_for_read(StreamEntry))
        .filter(channel=channel, position__gt=after)
        .order_by("position")
        .values_list("position", *(f"event__{column}" for column in EVENT_COLUMNS))[:limit]
    )
    entries = []
    for position, *columns in rows:
        try:
            event: Event[Any] | None = event_from_columns(*columns)
        except Exception:  # a row that no longer reads: the relay marks it failed
            event = None
        entries.append(Entry(position, event, columns[0], columns[1]))
    return entries


# A few threads: one client replays at a time (eventbus.limits), so a client that keeps
# replaying holds one of them while the others serve everyone else's reads.
_reader = ThreadPoolExecutor(max_workers=4, thread_name_prefix="eventbus-streams")


async def aread(func: Callable[..., T], *args: Any) -> T:
    """Run a stream read from async code, on a thread of its own.

    Not on asgiref's shared thread: a long replay must not hold up other sockets'
    session loading and authorization, which wait there. Connections are closed around
    it, as Channels does for its database calls.
    """

    def call() -> T:
        close_old_connections()
        try:
            return func(*args)
        finally:
            close_old_connections()

    return await sync_to_async(call, thread_sensitive=False, executor=_reader)()
