"""Handler failures: each one a row, written after the commit."""

from typing import Any

import pytest

from eventbus import Event
from eventbus.models import HandlerFailure
from tests.testapp.events import ShopEvent

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.db_heavy]


def test_handler_failure_is_recorded(dispatcher):
    def broken(event: Event[Any]) -> None:
        raise ValueError("no stock left")

    dispatcher.subscribe(ShopEvent.ORDER_DELETED, broken)
    event = dispatcher.publish(ShopEvent.ORDER_DELETED, {"order_id": 3})
    failure = HandlerFailure.objects.get()
    assert failure.event_id == event.id and failure.event_type == "order.deleted"
    assert failure.handler.endswith("test_handler_failure_is_recorded.<locals>.broken")
    assert failure.error == "ValueError: no stock left"
    assert "raise ValueError" in failure.traceback


def test_handler_failure_of_an_unlogged_event_is_recorded_too(dispatcher):
    dispatcher.subscribe(ShopEvent.METRIC_SAMPLED, lambda e: 1 / 0)
    dispatcher.publish(ShopEvent.METRIC_SAMPLED, {"name": "cpu", "value": 1})
    assert HandlerFailure.objects.get().error.startswith("ZeroDivisionError")


async def test_async_handler_failure_is_recorded(dispatcher):
    import asyncio

    from asgiref.sync import sync_to_async

    from eventbus import failures

    async def broken(event: Event[Any]) -> None:
        raise RuntimeError("async failure")

    dispatcher.subscribe(ShopEvent.ORDER_DELETED, broken)
    event = await dispatcher.apublish(ShopEvent.ORDER_DELETED, {"order_id": 4})
    await dispatcher.drain(timeout=5)
    await asyncio.wait_for(asyncio.gather(*failures._writes), timeout=5)
    failure = await sync_to_async(HandlerFailure.objects.get)()
    assert failure.event_id == event.id and failure.error == "RuntimeError: async failure"
