"""The test suite's own catalog: small, and independent of the demo's."""

import enum
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from eventbus import EventSpec


class OrderStatus(enum.StrEnum):
    OPEN = "open"
    SHIPPED = "shipped"
    CLOSED = "closed"


class ShopEvent(enum.StrEnum):
    ORDER_PLACED = "order.placed"
    ORDER_STATUS_CHANGED = "order.status_changed"
    ORDER_OWNER_CHANGED = "order.owner_changed"
    ORDER_CLOSED = "order.closed"
    ORDER_DELETED = "order.deleted"
    NOTE_ADDED = "note.added"
    METRIC_SAMPLED = "metric.sampled"
    FILE_ATTACHED = "file.attached"
    PAYMENT_RECEIVED = "payment.received"
    PAYMENT_SETTLED = "payment.settled"


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class OrderPlaced(Frozen):
    order_id: int
    title: str
    quantity: int = 1


class OrderStatusChanged(Frozen):
    order_id: int
    old_status: OrderStatus
    new_status: OrderStatus


class OrderOwnerChanged(Frozen):
    order_id: int
    old_owner_id: int | None
    new_owner_id: int | None


class OrderClosed(Frozen):
    order_id: int
    title: str


class OrderDeleted(Frozen):
    order_id: int


class NoteAdded(Frozen):
    note_id: UUID
    text: str
    author_email: str


class MetricSampled(Frozen):
    name: str
    value: float


class FileAttached(Frozen):
    name: str
    content: bytes  # JSON can only hold it when it is valid UTF-8


class PaymentReceived(Frozen):
    """Drives the durable handlers of tests/testapp/handlers.py and their faults."""

    payment_id: int
    amount: int = 1
    # The first ``fail_times`` attempts of notify_payment raise.
    fail_times: int = 0
    # Seconds record_payment waits, on its first attempt only, after its writes inside its
    # transaction; then after its commit, before the task returns to the worker (where
    # faults are injected).
    hold: float = 0.0
    hold_after_commit: float = 0.0


class PaymentSettled(Frozen):
    payment_id: int


EVENT_PAYLOAD_MAP = {
    ShopEvent.ORDER_PLACED: OrderPlaced,
    ShopEvent.ORDER_STATUS_CHANGED: OrderStatusChanged,
    ShopEvent.ORDER_OWNER_CHANGED: OrderOwnerChanged,
    ShopEvent.ORDER_CLOSED: OrderClosed,
    ShopEvent.ORDER_DELETED: OrderDeleted,
    ShopEvent.NOTE_ADDED: EventSpec(NoteAdded, private_fields=frozenset({"author_email"})),
    ShopEvent.METRIC_SAMPLED: EventSpec(MetricSampled, log=False, broadcast=False),
    ShopEvent.FILE_ATTACHED: FileAttached,
    ShopEvent.PAYMENT_RECEIVED: PaymentReceived,
    ShopEvent.PAYMENT_SETTLED: PaymentSettled,
}
