"""Discovered at start-up through EVENTBUS['HANDLER_MODULES'] (default: 'handlers')."""

from eventbus import Event, ModelEvents, OnChange, OnCreate, OnDelete, event_handler

from .events import OrderPlaced, OrderStatus, ShopEvent
from .models import Order

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
