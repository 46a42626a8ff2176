"""Replay: a socket resuming a channel 100 events back, with 10k, 100k and 1M rows logged.

eventbus reads the channel's stream after the position (``eventbus.replay.load_replay``:
one range scan of the (channel, position) index). Measured in the same run:
- the floor: the same 100 events read by primary key, validated and encoded the same way;
- before positions: the replay eventbus had until issue 11 (every row after ``since`` in
  the log's order, from every tenant, each re-validated, filtered by channel), written out
  here as it was, on the same rows.

The log holds ``rows`` events spread evenly over 50 channels; the channel resumed from
has its share (rows / 50), and the resume point is 100 of its events back.
"""

from __future__ import annotations

import os
import time
from typing import Any

from bench._harness import main, row

CHANNELS = 50
BACK = 100


def run(quick: bool = False, db: str = "sqlite") -> list[dict[str, Any]]:
    if db == "postgres":
        os.environ["EVENTBUS_TEST_DB"] = "postgres"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from django.db import connection
    from django.test.utils import override_settings, setup_databases, teardown_databases

    sizes = [10_000, 20_000] if quick else [10_000, 100_000, 1_000_000]
    rows: list[dict[str, Any]] = []
    databases = setup_databases(verbosity=0, interactive=False)
    try:
        with override_settings(EVENTBUS={"CATALOGS": ["tests.testapp.events.EVENT_PAYLOAD_MAP"]}):
            filled = 0
            for size in sizes:
                filled = _fill(connection, filled, size)
                rows.append(_measure(size, quick, connection.vendor))
    finally:
        teardown_databases(databases, verbosity=0)
    return rows


def _channel(n: int) -> str:
    return f"eventbus.project.{n % CHANNELS}"


def _fill(connection: Any, start: int, size: int) -> int:
    """Log events start..size-1 (round robin over the channels), numbered as the relay
    numbers them: raw INSERTs in batches, or a million rows would take minutes."""
    from django.utils import timezone

    from eventbus.ids import uuid7
    from eventbus.models import EventRecord, StreamEntry, StreamHead

    events, entries = EventRecord._meta.db_table, StreamEntry._meta.db_table
    now = timezone.now()
    uuid_prep = EventRecord._meta.pk.get_db_prep_value
    when = EventRecord._meta.get_field("timestamp").get_db_prep_value
    stamp = when(now, connection)
    batch = 20_000
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":  # a scratch database: no need to survive a crash
            cursor.execute("PRAGMA synchronous = OFF")
            cursor.execute("PRAGMA journal_mode = MEMORY")
        for first in range(start, size, batch):
            event_rows, entry_rows = [], []
            for n in range(first, min(first + batch, size)):
                event_id = uuid7()
                prepared = uuid_prep(event_id, connection)
                event_rows.append(
                    (prepared, "order.deleted", stamp, str(n % CHANNELS), "system",
                     f'{{"order_id": {n}}}', prepared, "delivered", 1, "", n + 1)
                )  # fmt: skip
                entry_rows.append((_channel(n), n // CHANNELS + 1, prepared))
            cursor.executemany(
                f"INSERT INTO {events} (id, type, timestamp, project_id, actor_type, payload, "
                "correlation_id, status, attempts, last_error, sequence) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                event_rows,
            )
            cursor.executemany(
                f"INSERT INTO {entries} (channel, position, event_id) VALUES (%s, %s, %s)",
                entry_rows,
            )
    StreamHead.objects.all().delete()
    StreamHead.objects.bulk_create(
        StreamHead(channel=_channel(c), epoch="bench", position=len(range(c, size, CHANNELS)))
        for c in range(CHANNELS)
    )
    return size


def _measure(size: int, quick: bool, vendor: str) -> dict[str, Any]:
    from eventbus.models import EVENT_COLUMNS, EventRecord, StreamEntry, event_from_columns
    from eventbus.replay import load_replay
    from eventbus.streams import heads
    from eventbus.wire import event_frame, public_json

    channel = _channel(7)
    head = heads([channel])[channel].position
    after = head - BACK

    def eventbus_replay() -> int:
        return len(load_replay(channel, after, None, None, lambda _: True, 1000).frames)

    wanted = list(
        StreamEntry.objects.filter(channel=channel, position__gt=after).values_list(
            "event_id", flat=True
        )
    )

    def floor() -> int:
        found = EventRecord.objects.filter(id__in=wanted).values_list(*EVENT_COLUMNS)
        return len([event_frame(channel, public_json(event_from_columns(*r))) for r in found])

    since = EventRecord.objects.filter(id=wanted[0]).values_list("sequence", flat=True).get()

    def before_positions() -> int:
        # The pre-issue-11 replay: every row after `since`, validated, kept if routed here.
        found = 0
        rows = EventRecord.objects.filter(sequence__gt=since - 1).order_by("sequence")
        for r in rows.values_list("project_id", *EVENT_COLUMNS).iterator(chunk_size=500):
            event = event_from_columns(*r[1:])
            if _channel(int(r[0])) == channel:
                public_json(event)
                found += 1
        return found

    cases = {"eventbus": eventbus_replay, "floor": floor, "before": before_positions}
    counts = {name: case() for name, case in cases.items()}
    assert counts == {"eventbus": BACK, "floor": BACK, "before": BACK}, counts
    repeats = 3 if quick else 7
    samples: dict[str, list[float]] = {name: [] for name in cases}
    deadline = time.monotonic() + (20 if quick else 120)
    for _ in range(repeats):
        for name, case in cases.items():
            started = time.perf_counter()
            case()
            samples[name].append(time.perf_counter() - started)
        if time.monotonic() > deadline:
            break
    median = {name: sorted(values)[len(values) // 2] * 1e3 for name, values in samples.items()}
    return row(
        "replay",
        f"resume 100 events back, {size:,} rows logged ({vendor})",
        eventbus=median["eventbus"],
        anchor=median["floor"],
        anchor_name="the same 100 rows read by id (floor)",
        unit="ms",
        before_positions_ms=round(median["before"], 3),
        rows=size,
        database=vendor,
    )


if __name__ == "__main__":
    main(run, db="sqlite")
