import enum

import pytest
from pydantic import BaseModel

from eventbus import CatalogConflictError, EventSpec, ImproperlyConfiguredCatalog
from eventbus.catalog import Catalog
from tests.testapp.events import EVENT_PAYLOAD_MAP, OrderClosed, OrderPlaced, ShopEvent


class Other(enum.StrEnum):
    ORDER_PLACED = "order.placed"
    REFUND_ISSUED = "refund.issued"


class Refund(BaseModel):
    amount: int


def test_resolve_by_member_or_string():
    catalog = Catalog()
    catalog.register(EVENT_PAYLOAD_MAP)
    assert catalog.resolve("order.placed").member is ShopEvent.ORDER_PLACED
    assert catalog.resolve(ShopEvent.ORDER_PLACED).payload_model is OrderPlaced
    assert ShopEvent.NOTE_ADDED in catalog and "nope" not in catalog and 42 not in catalog


def test_several_catalogs_can_contribute():
    catalog = Catalog()
    catalog.register(EVENT_PAYLOAD_MAP)
    catalog.register({Other.REFUND_ISSUED: Refund})
    assert len(catalog) == len(EVENT_PAYLOAD_MAP) + 1


def test_same_type_with_the_same_model_twice_is_fine():
    catalog = Catalog()
    catalog.register(EVENT_PAYLOAD_MAP)
    catalog.register({Other.ORDER_PLACED: OrderPlaced})
    assert catalog.resolve("order.placed").payload_model is OrderPlaced


def test_same_type_with_another_model_is_a_conflict_and_nothing_is_added():
    catalog = Catalog()
    catalog.register(EVENT_PAYLOAD_MAP, source="a")
    with pytest.raises(CatalogConflictError, match="'order.placed' is registered twice"):
        catalog.register({Other.REFUND_ISSUED: Refund, Other.ORDER_PLACED: OrderClosed}, source="b")
    assert "refund.issued" not in catalog  # all or nothing


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"order.placed": OrderPlaced}, "not a member of a str Enum"),
        ({Other.REFUND_ISSUED: dict}, "not a Pydantic model class"),
        ({Other.REFUND_ISSUED: EventSpec(payload=42)}, "not a Pydantic model class"),  # type: ignore[arg-type]
        ([OrderPlaced], "not a mapping"),
    ],
)
def test_malformed_catalogs_are_refused(mapping, message):
    with pytest.raises(ImproperlyConfiguredCatalog, match=message):
        Catalog().register(mapping)


def test_load_records_problems_instead_of_raising():
    catalog = Catalog()
    catalog.load(
        (
            "tests.testapp.events.EVENT_PAYLOAD_MAP",
            "tests.testapp.events.DOES_NOT_EXIST",
            "tests.test_catalog.CONFLICTING",
        )
    )
    [(missing, import_error), (conflicting, conflict)] = catalog.load_errors
    assert (missing, conflicting) == (
        "tests.testapp.events.DOES_NOT_EXIST",
        "tests.test_catalog.CONFLICTING",
    )
    assert isinstance(import_error, ImportError) and "DOES_NOT_EXIST" in str(import_error)
    assert isinstance(conflict, CatalogConflictError)


CONFLICTING = {Other.ORDER_PLACED: Refund}
