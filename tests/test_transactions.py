"""Publishing inside transactions: handlers run after the outermost commit, never on rollback."""

from typing import Any

import pytest
from django.db import transaction

from eventbus import Event
from tests.testapp.events import ShopEvent
from tests.testapp.models import Order

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.db_heavy]


class Boom(Exception):
    pass


@pytest.fixture
def seen(dispatcher):
    received: list[int] = []
    dispatcher.subscribe(ShopEvent.ORDER_DELETED, lambda e: received.append(e.payload.order_id))
    return received


def deleted(dispatcher, order_id: int, **options: Any) -> Event[Any]:
    return dispatcher.publish(ShopEvent.ORDER_DELETED, {"order_id": order_id}, **options)


def test_without_a_transaction_handlers_run_at_once(dispatcher, seen):
    deleted(dispatcher, 1)
    assert seen == [1]


def test_handlers_wait_for_the_commit(dispatcher, seen):
    with transaction.atomic():
        Order.objects.create(title="a")
        deleted(dispatcher, 1)
        assert seen == []
    assert seen == [1]


def test_rollback_dispatches_nothing(dispatcher, seen):
    with pytest.raises(Boom), transaction.atomic():
        deleted(dispatcher, 1)
        raise Boom
    assert seen == []


def test_rolled_back_savepoint_drops_only_its_events(dispatcher, seen):
    with transaction.atomic():
        deleted(dispatcher, 1)
        with pytest.raises(Boom), transaction.atomic():
            deleted(dispatcher, 2)
            raise Boom
        deleted(dispatcher, 3)
    assert seen == [1, 3]


def test_inner_commit_then_outer_rollback_dispatches_nothing(dispatcher, seen):
    with pytest.raises(Boom), transaction.atomic():
        with transaction.atomic():
            deleted(dispatcher, 1)
        assert seen == []
        raise Boom
    assert seen == []


def test_deep_nesting_waits_for_the_outermost_commit(dispatcher, seen):
    with transaction.atomic():
        with transaction.atomic():
            with transaction.atomic():
                with transaction.atomic():
                    deleted(dispatcher, 4)
                deleted(dispatcher, 3)
                assert seen == []
            with pytest.raises(Boom), transaction.atomic():
                deleted(dispatcher, 99)
                raise Boom
        deleted(dispatcher, 1)
        assert seen == []
    assert seen == [4, 3, 1]


def test_immediate_dispatches_inside_the_transaction(dispatcher, seen):
    with pytest.raises(Boom), transaction.atomic():
        deleted(dispatcher, 1, immediate=True)
        assert seen == [1]
        raise Boom
    assert seen == [1]


def test_failing_handler_during_commit_does_not_stop_later_events(dispatcher, seen, caplog):
    def broken(event: Event[Any]) -> None:
        if event.payload.order_id == 1:
            raise RuntimeError("fails on the first event")

    dispatcher.subscribe(ShopEvent.ORDER_DELETED, broken)
    with transaction.atomic():
        deleted(dispatcher, 1)
        deleted(dispatcher, 2)
        deleted(dispatcher, 3)
    assert seen == [1, 2, 3]
    assert any("fails on the first event" in r.getMessage() for r in caplog.records)


def test_handler_data_written_on_commit_is_visible(dispatcher):
    """Handlers run after commit, so they see the publisher's rows."""
    titles = []

    def read_back(event: Event[Any]) -> None:
        titles.append(Order.objects.get(pk=event.payload.order_id).title)

    dispatcher.subscribe(ShopEvent.ORDER_DELETED, read_back)
    with transaction.atomic():
        order = Order.objects.create(title="committed")
        deleted(dispatcher, order.pk)
    assert titles == ["committed"]
