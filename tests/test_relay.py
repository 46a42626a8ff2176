"""The relay: hand-off after commit, retries with backoff, sweep, and faults."""

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

from eventbus.models import DeliveryStatus, EventRecord, StreamEntry
from eventbus.relay import Relay, backoff_seconds, redeliver
from eventbus.sinks import load_sink
from eventbus.streams import positions_of
from tests.testapp.events import ShopEvent

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.db_heavy]

FLAKY = "tests.sinks.FlakySink"


def relay_settings(**overrides: Any) -> dict[str, Any]:
    return {
        "CATALOGS": [],
        "SINK": FLAKY,
        "RELAY_BACKOFF_BASE": 1.0,
        "RELAY_BACKOFF_MAX": 8.0,
        "RELAY_SWEEP_AFTER": 10.0,
        **overrides,
    }


@pytest.fixture
def sink():
    flaky = load_sink(FLAKY)
    flaky.clear()
    flaky.failing = False
    flaky.calls = 0
    with override_settings(EVENTBUS=relay_settings()):
        yield flaky
    flaky.failing = False


def publish(dispatcher, order_id: int):
    return dispatcher.publish(ShopEvent.ORDER_DELETED, {"order_id": order_id})


def later(seconds: float):
    return timezone.now() + timedelta(seconds=seconds)


def test_committed_event_is_handed_off_and_marked_delivered(dispatcher, sink):
    with transaction.atomic():
        event = publish(dispatcher, 1)
        assert sink.events == []  # not before the commit
    assert sink.events == [event]
    row = EventRecord.objects.get(id=event.id)
    assert row.status == DeliveryStatus.DELIVERED and row.attempts == 1
    assert row.delivered_at is not None and row.sequence is not None


def test_rolled_back_event_is_never_handed_off(dispatcher, sink):
    with pytest.raises(RuntimeError), transaction.atomic():
        publish(dispatcher, 1)
        raise RuntimeError
    assert sink.events == [] and sink.calls == 0


def test_failed_hand_off_stays_pending_until_the_relay_retries(dispatcher, sink):
    sink.failing = True
    event = publish(dispatcher, 1)
    row = EventRecord.objects.get(id=event.id)
    assert row.status == DeliveryStatus.PENDING and row.attempts == 1
    assert row.last_error == "ConnectionError: sink is down"
    assert row.next_attempt_at > timezone.now()
    relay = Relay()
    assert not Relay().run_once()  # not due yet: backoff
    sink.failing = False
    report = relay.run_once(now=later(5))
    assert report.delivered == [event.id]
    assert sink.events == [event]
    row.refresh_from_db()
    assert (row.status, row.attempts, row.last_error) == (DeliveryStatus.DELIVERED, 2, "")


def test_backoff_doubles_and_is_capped(sink):
    assert [backoff_seconds(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_row_fails_after_max_attempts_and_can_be_redelivered(dispatcher, sink):
    from eventbus.relay import redeliver

    sink.failing = True
    with override_settings(EVENTBUS=relay_settings(RELAY_MAX_ATTEMPTS=3)):
        event = publish(dispatcher, 1)  # attempt 1
        relay = Relay()
        assert relay.run_once(now=later(60)).retrying == [event.id]  # attempt 2
        assert relay.run_once(now=later(120)).failed == [event.id]  # attempt 3
        assert not relay.run_once(now=later(1000))  # failed rows are left alone
        row = EventRecord.objects.get(id=event.id)
        assert (row.status, row.attempts) == (DeliveryStatus.FAILED, 3)
        sink.failing = False
        assert redeliver([event.id]) == 1
        assert relay.run_once(now=later(1)).delivered == [event.id]


def test_sweep_delivers_rows_whose_process_died_before_hand_off(dispatcher, sink):
    with override_settings(EVENTBUS=relay_settings(HAND_OFF_ON_COMMIT=False)):
        event = publish(dispatcher, 1)
    assert sink.events == []
    relay = Relay()
    assert not relay.run_once()  # too young: its own process may still hand it off
    assert relay.run_once(now=later(11)).delivered == [event.id]
    assert sink.events == [event]


def test_sequence_follows_hand_off_order_not_creation_order(dispatcher, sink):
    """An event created first but committed last is numbered last, so resumes don't skip it."""
    with override_settings(EVENTBUS=relay_settings(HAND_OFF_ON_COMMIT=False)):
        first_created = publish(dispatcher, 1)
    second_created = publish(dispatcher, 2)  # handed off at once
    Relay().run_once(now=later(11))
    first, second = (EventRecord.objects.get(id=e.id) for e in (first_created, second_created))
    assert first_created.id < second_created.id
    assert second.sequence < first.sequence


def test_corrupted_rows_are_failed_and_the_rest_flows(dispatcher, sink):
    with override_settings(EVENTBUS=relay_settings(HAND_OFF_ON_COMMIT=False)):
        good = publish(dispatcher, 1)
        bad_payload = publish(dispatcher, 2)
        unknown_type = publish(dispatcher, 3)
    EventRecord.objects.filter(id=bad_payload.id).update(payload={"order_id": "not a number"})
    EventRecord.objects.filter(id=unknown_type.id).update(type="order.from_the_future")
    report = Relay().run_once(now=later(11))
    assert report.delivered == [good.id]
    assert sorted(report.corrupted) == sorted([bad_payload.id, unknown_type.id])
    for event_id in report.corrupted:
        row = EventRecord.objects.get(id=event_id)
        assert row.status == DeliveryStatus.FAILED and row.last_error.startswith("corrupted row:")
    assert sink.events == [good]


def picky_router(event):
    """A channel router that cannot route order 2."""
    if event.payload.order_id == 2:
        raise LookupError("no channel for order 2")
    return [f"orders.{event.payload.order_id}"]


def test_rows_that_fail_to_read_or_route_get_no_sequence_until_delivered(dispatcher, sink):
    """A sequence comes with the positions: a row failed for its payload or its router
    is left unnumbered, so once fixed and redelivered it is numbered and positioned."""
    with override_settings(
        EVENTBUS=relay_settings(HAND_OFF_ON_COMMIT=False, CHANNEL_ROUTER=f"{__name__}.picky_router")
    ):
        good = publish(dispatcher, 1)
        unroutable = publish(dispatcher, 2)
        unreadable = publish(dispatcher, 3)
        EventRecord.objects.filter(id=unreadable.id).update(payload={"order_id": "three"})
        report = Relay().run_once(now=later(11))
        assert report.delivered == [good.id]
        assert report.failed == [unroutable.id] and report.corrupted == [unreadable.id]
        rows = EventRecord.objects.in_bulk([good.id, unroutable.id, unreadable.id])
        assert rows[good.id].sequence is not None
        assert rows[unroutable.id].sequence is None and rows[unreadable.id].sequence is None
        assert not StreamEntry.objects.filter(event_id__in=[unroutable.id, unreadable.id])

        EventRecord.objects.filter(id=unreadable.id).update(payload={"order_id": 4})
        assert redeliver([unreadable.id]) == 1
        report = Relay().run_once(now=later(12))
        assert report.delivered == [unreadable.id]
        row = EventRecord.objects.get(id=unreadable.id)
        assert row.sequence > rows[good.id].sequence
        assert positions_of([unreadable.id]) == {unreadable.id: {"orders.4": 1}}


def test_thousand_events_survive_a_sink_outage(dispatcher, sink, capsys):
    """1,000 events in transactions, sink down for a while: every committed one arrives."""
    committed, rolled_back = set(), set()
    with override_settings(
        EVENTBUS=relay_settings(RELAY_BACKOFF_BASE=0.001, RELAY_BACKOFF_MAX=0.01)
    ):
        for batch in range(100):
            sink.failing = 30 <= batch < 70  # the outage
            events = []
            try:
                with transaction.atomic():
                    events = [publish(dispatcher, batch * 10 + n) for n in range(10)]
                    if batch % 7 == 3:
                        raise RuntimeError("rolled back")
            except RuntimeError:
                rolled_back.update(e.id for e in events)
            else:
                committed.update(e.id for e in events)
        pending_after_outage = EventRecord.objects.filter(status=DeliveryStatus.PENDING).count()
        relay = Relay()
        passes = 0
        deadline = time.monotonic() + 60
        while EventRecord.objects.filter(status=DeliveryStatus.PENDING).exists():
            assert time.monotonic() < deadline, "relay did not catch up in 60 s"
            relay.run_once(now=later(1))
            passes += 1
    delivered = [event.id for event in sink.events]
    print(
        f"\n[sink outage] published {len(committed) + len(rolled_back)}, committed {len(committed)}, "
        f"rolled back {len(rolled_back)}, pending after outage {pending_after_outage}, "
        f"relay passes {passes}, delivered {len(set(delivered))}, duplicates "
        f"{len(delivered) - len(set(delivered))}"
    )
    assert set(delivered) == committed
    assert not set(delivered) & rolled_back
    assert len(delivered) == len(committed)  # nothing twice
    assert pending_after_outage == 400 - len([b for b in range(30, 70) if b % 7 == 3]) * 10
    assert EventRecord.objects.filter(status=DeliveryStatus.DELIVERED).count() == len(committed)


PUBLISHER = """
import django, sys, time
django.setup()
from django.db import transaction
from eventbus import publish
from tests.testapp.events import ShopEvent
for n in range(int(sys.argv[1])):
    with transaction.atomic():
        event = publish(ShopEvent.ORDER_DELETED, {"order_id": n})
    print(event.id, flush=True)
time.sleep(60)  # wait to be killed
"""


def test_publisher_killed_after_commit_loses_nothing(sink):
    """SIGKILL right after the commits, before any hand-off: a fresh relay delivers all."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "EVENTBUS_TEST_DB_NAME": str(connection.settings_dict["NAME"]),
    }
    # No hand-off in the publisher: it dies between its commits and any delivery.
    env["EVENTBUS_TEST_SETTINGS_OVERRIDE"] = json.dumps({"HAND_OFF_ON_COMMIT": False})
    process = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, "50"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    committed: set[str] = set()
    deadline = time.monotonic() + 60
    try:
        while len(committed) < 50 and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            committed.add(line.strip())
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    assert len(committed) == 50, process.stderr.read()
    assert process.returncode == -signal.SIGKILL
    assert {str(i) for i in EventRecord.objects.values_list("id", flat=True)} == committed
    report = Relay().run_once(now=later(11))
    assert {str(i) for i in report.delivered} == committed
    assert {str(e.id) for e in sink.events} == committed


def test_events_published_by_handlers_leave_after_their_cause(dispatcher, sink):
    """Live order and sequence numbers keep cause before effect."""

    def on_deleted(event):
        if event.payload.order_id == 1:
            publish(dispatcher, 2)

    dispatcher.subscribe(ShopEvent.ORDER_DELETED, on_deleted)
    with transaction.atomic():
        cause = publish(dispatcher, 1)
    effect = EventRecord.objects.get(causation_id=cause.id)
    assert [e.payload.order_id for e in sink.events] == [1, 2]
    assert EventRecord.objects.get(id=cause.id).sequence < effect.sequence
