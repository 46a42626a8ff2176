"""Model signals become catalog events through ModelEvents declarations."""

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction

from eventbus import ModelEvents, OnChange, OnCreate
from eventbus.bridge import registry
from tests.testapp.events import ShopEvent
from tests.testapp.handlers import OrderEvents
from tests.testapp.models import Order

pytestmark = pytest.mark.django_db


def test_create_publishes_with_payload_from_fields(captured_events):
    order = Order.objects.create(title="Desk", quantity=3)
    [event] = captured_events
    assert event.type is ShopEvent.ORDER_PLACED
    assert event.payload.model_dump() == {"order_id": order.pk, "title": "Desk", "quantity": 3}


def test_project_id_comes_from_the_declared_attribute(captured_events):
    import uuid

    project = uuid.uuid4()
    Order.objects.create(title="Desk", project_id=project)
    assert captured_events[0].project_id == project


def test_field_change_publishes_old_and_new(captured_events):
    order = Order.objects.create(title="Desk")
    order.status = "shipped"
    order.save()
    assert captured_events.types() == ["order.placed", "order.status_changed"]
    change = captured_events[1].payload
    assert (change.order_id, change.old_status, change.new_status) == (order.pk, "open", "shipped")


def test_conditional_rule_fires_only_on_its_transition(captured_events):
    order = Order.objects.create(title="Desk")
    order.status = "closed"
    order.save()
    assert captured_events.types() == ["order.placed", "order.status_changed", "order.closed"]
    assert captured_events.of_type(ShopEvent.ORDER_CLOSED)[0].payload.title == "Desk"


def test_save_without_changes_publishes_nothing(captured_events):
    order = Order.objects.create(title="Desk")
    order.title = "Chair"  # not a watched field
    order.save()
    assert captured_events.types() == ["order.placed"]


def test_changes_are_detected_on_instances_loaded_from_the_database(captured_events):
    created = Order.objects.create(title="Desk")
    loaded = Order.objects.get(pk=created.pk)
    loaded.status = "shipped"
    loaded.save()
    loaded.status = "closed"
    loaded.save()  # compared against the previous save, not the load
    changes = [
        (e.payload.old_status, e.payload.new_status)
        for e in captured_events.of_type(ShopEvent.ORDER_STATUS_CHANGED)
    ]
    assert changes == [("open", "shipped"), ("shipped", "closed")]


def test_foreign_key_changes_use_ids(captured_events):
    owner = get_user_model().objects.create(username="ann")
    order = Order.objects.create(title="Desk")
    order.owner = owner
    order.save()
    [change] = captured_events.of_type(ShopEvent.ORDER_OWNER_CHANGED)
    assert (change.payload.old_owner_id, change.payload.new_owner_id) == (None, owner.pk)


def test_update_fields_limits_what_is_compared(captured_events):
    order = Order.objects.create(title="Desk")
    order.status = "shipped"
    order.save(update_fields=["title"])  # status not written, so not changed
    assert captured_events.types() == ["order.placed"]


def test_deferred_field_is_not_reported_without_a_known_old_value(captured_events):
    Order.objects.create(title="Desk")
    loaded = Order.objects.defer("status").get()
    loaded.title = "Chair"
    loaded.save()
    assert captured_events.types() == ["order.placed"]


def test_delete_publishes(captured_events):
    order = Order.objects.create(title="Desk")
    pk = order.pk
    order.delete()
    assert captured_events.of_type(ShopEvent.ORDER_DELETED)[0].payload.order_id == pk


def test_fixture_loading_publishes_nothing(captured_events):
    from django.db.models.signals import post_save

    order = Order(pk=999, title="raw")
    post_save.send(sender=Order, instance=order, created=True, raw=True)
    assert captured_events == []


@pytest.mark.django_db(transaction=True)
def test_bridge_events_follow_the_save_transaction(dispatcher):
    seen = []
    dispatcher.subscribe(ShopEvent.ORDER_PLACED, seen.append)
    with pytest.raises(RuntimeError), transaction.atomic():
        Order.objects.create(title="rolled back")
        raise RuntimeError
    assert seen == []
    with transaction.atomic():
        Order.objects.create(title="kept")
        assert seen == []
    assert [e.payload.title for e in seen] == ["kept"]


def test_declaring_a_class_connects_and_disconnect_undoes_it(captured_events):
    class Extra(ModelEvents):
        model = Order
        again = OnCreate(ShopEvent.ORDER_DELETED, payload=lambda order: {"order_id": order.pk})

    try:
        assert Extra in registry
        Order.objects.create(title="x")
    finally:
        Extra.disconnect()
    Order.objects.create(title="y")
    assert captured_events.types() == ["order.placed", "order.deleted", "order.placed"]
    assert Extra not in registry


def test_rule_problems_are_reported():
    class Broken(ModelEvents):
        model = Order
        unknown = OnCreate("order.unheard_of")
        unbuildable = OnChange("title", ShopEvent.NOTE_ADDED)

    from eventbus.checks import model_events_messages

    try:
        problems = model_events_messages(Broken)
    finally:
        Broken.disconnect()
    assert [p.id for p in problems] == ["eventbus.E007", "eventbus.E008"]
    assert "author_email, note_id, text" in problems[1].msg
    assert model_events_messages(OrderEvents) == []
