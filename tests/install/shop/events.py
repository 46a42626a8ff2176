"""The catalog of the README's Quick start."""

import enum
from uuid import UUID

from pydantic import BaseModel, ConfigDict


class ShopEvent(enum.StrEnum):
    ORDER_PLACED = "order.placed"


class OrderPlaced(BaseModel):
    model_config = ConfigDict(frozen=True)
    order_id: UUID
    total_cents: int


EVENT_PAYLOAD_MAP = {ShopEvent.ORDER_PLACED: OrderPlaced}
