"""The event log: rows written in the publisher's transaction, and refusals."""

import io
from typing import Any
from uuid import uuid4

import pytest
from django.core.management import call_command
from django.db import transaction
from django.test import override_settings

from eventbus import Event, EventSchemaError, PayloadTooLargeError, get_event_dispatcher
from eventbus.models import DeliveryStatus, EventRecord
from tests.testapp.events import ShopEvent
from tests.testapp.models import Order

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.db_heavy]

NOTE = {"note_id": uuid4(), "text": "hello", "author_email": "a@example.com"}


def test_row_is_written_with_every_envelope_field(dispatcher):
    project, actor = uuid4(), uuid4()
    event = dispatcher.publish(
        ShopEvent.NOTE_ADDED, NOTE, project_id=project, actor_id=actor, actor_type="user"
    )
    row = EventRecord.objects.get(id=event.id)
    assert row.type == "note.added"
    assert row.timestamp == event.timestamp
    assert (row.project_id, row.actor_id, row.actor_type) == (str(project), str(actor), "user")
    assert row.payload == {
        "note_id": str(NOTE["note_id"]),
        "text": "hello",
        "author_email": "a@example.com",
    }
    assert (row.correlation_id, row.causation_id) == (event.id, None)
    assert row.to_event() == event


def test_row_commits_with_the_publishers_data():
    with transaction.atomic():
        order = Order.objects.create(title="Desk")  # the bridge publishes order.placed
        assert EventRecord.objects.filter(type="order.placed").count() == 1  # same transaction
    assert EventRecord.objects.get(type="order.placed").payload["order_id"] == order.pk


def test_rolled_back_work_leaves_no_row():
    with pytest.raises(RuntimeError), transaction.atomic():
        Order.objects.create(title="Desk")
        raise RuntimeError
    assert not Order.objects.exists()
    assert not EventRecord.objects.exists()


def test_rolled_back_savepoint_drops_only_its_rows(dispatcher):
    with transaction.atomic():
        kept = dispatcher.publish(ShopEvent.ORDER_DELETED, {"order_id": 1})
        with pytest.raises(RuntimeError), transaction.atomic():
            dispatcher.publish(ShopEvent.ORDER_DELETED, {"order_id": 2})
            raise RuntimeError
    assert list(EventRecord.objects.values_list("id", flat=True)) == [kept.id]


def test_type_can_opt_out_of_the_log(dispatcher):
    seen = []
    dispatcher.subscribe(ShopEvent.METRIC_SAMPLED, seen.append)
    dispatcher.publish(ShopEvent.METRIC_SAMPLED, {"name": "cpu", "value": 0.5})
    assert seen and not EventRecord.objects.exists()


@override_settings(EVENTBUS={"CATALOGS": [], "LOG": False})
def test_log_can_be_turned_off(dispatcher):
    dispatcher.publish(ShopEvent.ORDER_DELETED, {"order_id": 1})
    assert not EventRecord.objects.exists()


def test_non_json_payload_is_refused_and_nothing_is_stored_or_dispatched(
    dispatcher, captured_events
):
    seen = []
    dispatcher.subscribe(ShopEvent.FILE_ATTACHED, seen.append)
    with pytest.raises(EventSchemaError, match="payload: is not JSON-serializable"):
        dispatcher.publish(ShopEvent.FILE_ATTACHED, {"name": "x.bin", "content": b"\xff\xfe"})
    assert seen == [] and captured_events == [] and not EventRecord.objects.exists()
    dispatcher.publish(ShopEvent.FILE_ATTACHED, {"name": "x.txt", "content": b"fine"})
    assert len(seen) == 1 and EventRecord.objects.count() == 1  # the log keeps flowing


@override_settings(EVENTBUS={"CATALOGS": [], "MAX_PAYLOAD_BYTES": 200})
def test_oversize_payload_is_refused_with_its_size(dispatcher, captured_events):
    seen = []
    dispatcher.subscribe(ShopEvent.NOTE_ADDED, seen.append)
    with transaction.atomic():
        with pytest.raises(
            PayloadTooLargeError, match=r"is \d+ bytes of JSON, over the limit of 200"
        ):
            dispatcher.publish(ShopEvent.NOTE_ADDED, {**NOTE, "text": "x" * 500})
        dispatcher.publish(ShopEvent.NOTE_ADDED, NOTE)  # the transaction goes on
    assert len(seen) == 1 and EventRecord.objects.count() == 1
    assert captured_events.types() == ["note.added"]


def test_chain_ids_are_stored(dispatcher):
    def on_placed(event: Event[Any]) -> None:
        dispatcher.publish(ShopEvent.ORDER_DELETED, {"order_id": 1})

    dispatcher.subscribe(ShopEvent.ORDER_PLACED, on_placed)
    root = dispatcher.publish(ShopEvent.ORDER_PLACED, {"order_id": 1, "title": "a"})
    child = EventRecord.objects.get(type="order.deleted")
    assert (child.correlation_id, child.causation_id) == (root.id, root.id)


def test_migrations_are_in_sync():
    """Every installed app's models match its migrations (tests/demo checks the demo's)."""
    out = io.StringIO()
    try:
        call_command("makemigrations", "--check", "--dry-run", stdout=out)
    except SystemExit:
        pytest.fail(f"models and migrations differ:\n{out.getvalue()}")


def test_default_delivery_state():
    from eventbus.log import EventLog
    from eventbus.wire import payload_json

    event = get_event_dispatcher().build(ShopEvent.ORDER_DELETED, {"order_id": 1})
    entry = get_event_dispatcher().catalog.resolve(event.type)
    with override_settings(EVENTBUS={"CATALOGS": [], "SINK": None}):
        EventLog().store(event, entry, payload_json(event), None)
    row = EventRecord.objects.get()
    assert (row.status, row.attempts, row.delivered_at, row.sequence) == (
        DeliveryStatus.PENDING,
        0,
        None,
        None,
    )
