"""3. Logged publish: ``publish`` with the log on, inside a transaction, vs a bare ORM insert.

The anchor writes the same row with ``EventRecord.objects.create``; eventbus also
validates the payload, builds the envelope and checks the JSON size. Run once per
database: ``--db sqlite`` or ``--db postgres`` (127.0.0.1:5432, as in the tests).
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from bench._harness import interleaved, main, row

TARGET = 1.3


def run(quick: bool = False, db: str = "sqlite") -> list[dict[str, Any]]:
    if db == "postgres":
        os.environ["EVENTBUS_TEST_DB"] = "postgres"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from django.db import connection, transaction
    from django.test.utils import override_settings, setup_databases, teardown_databases

    from eventbus import get_event_dispatcher
    from eventbus.ids import uuid7
    from eventbus.models import EventRecord
    from tests.testapp.events import ShopEvent

    calls = 50 if quick else 1_000
    project = uuid.uuid4()
    data = {"order_id": 7, "title": "Desk", "quantity": 2}
    dispatcher = get_event_dispatcher()
    databases = setup_databases(verbosity=0, interactive=False)
    try:
        with (
            override_settings(EVENTBUS={"CATALOGS": [], "SINK": None}),
            dispatcher.isolated(),
        ):

            def publish_batch(_: int) -> float:
                EventRecord.objects.all().delete()
                start = time.perf_counter()
                with transaction.atomic():
                    for _ in range(calls):
                        dispatcher.publish(ShopEvent.ORDER_PLACED, data, project_id=project)
                return (time.perf_counter() - start) / calls

            def insert_batch(_: int) -> float:
                EventRecord.objects.all().delete()
                start = time.perf_counter()
                with transaction.atomic():
                    for _ in range(calls):
                        event_id = uuid7()
                        EventRecord.objects.create(
                            id=event_id,
                            type="order.placed",
                            timestamp=django.utils.timezone.now(),
                            project_id=project,
                            actor_type="system",
                            payload=data,
                            correlation_id=event_id,
                        )
                return (time.perf_counter() - start) / calls

            medians = interleaved(
                {"eventbus": publish_batch, "anchor": insert_batch},
                rounds=3 if quick else 9,
                max_seconds=120,
            )
            vendor = connection.vendor
    finally:
        teardown_databases(databases, verbosity=0)
    ratio = medians["eventbus"] / medians["anchor"]
    return [
        row(
            "logged_publish",
            f"publish with the log on, in a transaction ({vendor})",
            eventbus=medians["eventbus"] * 1e6,
            anchor=medians["anchor"] * 1e6,
            anchor_name="EventRecord.objects.create of the same row",
            unit="µs/event",
            target=f"≤ {TARGET}×",
            met=ratio <= TARGET,
            database=vendor,
        )
    ]


if __name__ == "__main__":
    main(run, db="sqlite")
