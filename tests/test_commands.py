"""Management commands: eventbus_prune and eventbus_relay."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.utils import timezone

from eventbus.ids import uuid7
from eventbus.models import DeliveryStatus, EventRecord

pytestmark = pytest.mark.django_db(transaction=True)


def make(status: str, age: timedelta) -> EventRecord:
    return EventRecord.objects.create(
        id=uuid7(),
        type="order.deleted",
        timestamp=timezone.now() - age,
        payload={"order_id": 1},
        correlation_id=uuid7(),
        status=status,
    )


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_prune_deletes_only_old_delivered_rows_in_batches():
    old_delivered = [make(DeliveryStatus.DELIVERED, timedelta(days=40)) for _ in range(7)]
    young = make(DeliveryStatus.DELIVERED, timedelta(days=3))
    old_pending = make(DeliveryStatus.PENDING, timedelta(days=40))
    old_failed = make(DeliveryStatus.FAILED, timedelta(days=40))
    assert "would delete 7" in run("eventbus_prune", "--older-than", "30d", "--dry-run")
    assert EventRecord.objects.count() == 10
    assert "deleted 7" in run("eventbus_prune", "--older-than", "30d", "--batch-size", "3")
    assert set(EventRecord.objects.values_list("id", flat=True)) == {
        young.id,
        old_pending.id,
        old_failed.id,
    }
    assert not EventRecord.objects.filter(id__in=[r.id for r in old_delivered]).exists()


def test_prune_keeps_events_whose_durable_runs_have_not_finished():
    from eventbus.models import HandlerRun, RunStatus

    events = [make(DeliveryStatus.DELIVERED, timedelta(days=40)) for _ in range(4)]
    for event, status in zip(events, RunStatus.values, strict=True):
        HandlerRun.objects.create(
            id=uuid7(),
            event_id=event.id,
            event_type=event.type,
            handler="tests.testapp.handlers.audit_payment",
            status=status,
            max_attempts=3,
            created_at=event.timestamp,
            due_at=event.timestamp,
        )
    assert "deleted 2" in run("eventbus_prune", "--older-than", "30d")
    kept = {RunStatus.PENDING, RunStatus.RUNNING}
    assert set(EventRecord.objects.values_list("handler_runs__status", flat=True)) == kept


@pytest.mark.parametrize(
    ("span", "kept"), [("2w", 1), ("72h", 0), ("4320m", 0), ("5d", 1), ("500000s", 1)]
)
def test_prune_spans(span, kept):
    make(DeliveryStatus.DELIVERED, timedelta(days=4))
    run("eventbus_prune", "--older-than", span)
    assert EventRecord.objects.count() == kept


@pytest.mark.parametrize("span", ["30", "thirty days", "0d", "-3d", "3y", "", "1.5d"])
def test_prune_refuses_bad_spans(span):
    make(DeliveryStatus.DELIVERED, timedelta(days=40))
    with pytest.raises(CommandError, match="is not a span"):
        run("eventbus_prune", f"--older-than={span}")
    assert EventRecord.objects.count() == 1


def test_prune_refuses_a_bad_batch_size():
    with pytest.raises(CommandError, match="--batch-size must be at least 1"):
        run("eventbus_prune", "--older-than", "1d", "--batch-size", "0")


@override_settings(
    EVENTBUS={"CATALOGS": [], "RELAY_SWEEP_AFTER": 0, "SINK": "eventbus.sinks.InMemorySink"}
)
def test_relay_once_delivers_the_backlog():
    from eventbus.sinks import load_sink

    sink = load_sink("eventbus.sinks.InMemorySink")
    sink.clear()
    row = make(DeliveryStatus.PENDING, timedelta(minutes=1))
    assert "delivered 1, retrying 0, failed 0, corrupted 0" in run("eventbus_relay", "--once")
    assert [e.id for e in sink.events] == [row.id]


@override_settings(EVENTBUS={"CATALOGS": [], "RELAY_SWEEP_AFTER": 0, "RELAY_POLL_INTERVAL": 0.01})
def test_relay_worker_stops_after_max_seconds():
    make(DeliveryStatus.PENDING, timedelta(minutes=1))
    out = run("eventbus_relay", "--max-seconds", "0.5")
    assert "relay stopped; delivered 1 event(s)" in out
