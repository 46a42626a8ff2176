"""Discovered at start-up through EVENTBUS['HANDLER_MODULES'] (default: 'handlers')."""

import os
import time

from django.db import transaction

from eventbus import (
    Event,
    ModelEvents,
    OnChange,
    OnCreate,
    OnDelete,
    current_run,
    event_handler,
    publish,
)

from .events import OrderPlaced, OrderStatus, PaymentReceived, ShopEvent
from .models import Effect, Order

discovered_calls: list[Event[OrderPlaced]] = []


@event_handler(ShopEvent.ORDER_PLACED)
def remember_order(event: Event[OrderPlaced]) -> None:
    discovered_calls.append(event)


class OrderEvents(ModelEvents):
    model = Order
    project = "project_id"
    placed = OnCreate(ShopEvent.ORDER_PLACED)
    status = OnChange("status", ShopEvent.ORDER_STATUS_CHANGED)
    owner = OnChange("owner", ShopEvent.ORDER_OWNER_CHANGED)
    closed = OnChange(
        "status", ShopEvent.ORDER_CLOSED, when=lambda old, new: new == OrderStatus.CLOSED
    )
    deleted = OnDelete(ShopEvent.ORDER_DELETED)


def _effect(event: Event[PaymentReceived], handler: str) -> None:
    run = current_run()
    assert run is not None
    Effect.objects.create(event_id=event.id, handler=handler, attempt=run.attempts, pid=os.getpid())


# Three durable handlers of one type: the fault tests count their effects.
@event_handler(ShopEvent.PAYMENT_RECEIVED, durable=True)
def record_payment(event: Event[PaymentReceived]) -> None:
    _effect(event, "record")
    publish(ShopEvent.PAYMENT_SETTLED, {"payment_id": event.payload.payment_id})
    run = current_run()
    if run is None or run.attempts > 1:  # where faults are injected; a retry runs through
        return
    if event.payload.hold:
        time.sleep(event.payload.hold)  # a worker killed here has written, not committed
    if event.payload.hold_after_commit:
        # Runs once the run's transaction commits, before the task returns to the worker.
        transaction.on_commit(lambda: time.sleep(event.payload.hold_after_commit))


@event_handler(ShopEvent.PAYMENT_RECEIVED, durable=True, max_attempts=3)
def notify_payment(event: Event[PaymentReceived]) -> None:
    run = current_run()
    assert run is not None
    if run.attempts <= event.payload.fail_times:
        raise RuntimeError(f"notify failed on attempt {run.attempts}")
    _effect(event, "notify")


@event_handler(ShopEvent.PAYMENT_RECEIVED, durable=True)
def audit_payment(event: Event[PaymentReceived]) -> None:
    _effect(event, "audit")
