from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID, uuid4

import pytest
from pydantic import BaseModel, ValidationError

from eventbus import ActorType, Event, UnknownEventTypeError
from tests.testapp.events import NoteAdded, OrderPlaced, ShopEvent


def test_minimal_event_gets_defaults():
    event = Event(type=ShopEvent.ORDER_PLACED, payload={"order_id": 1, "title": "Desk"})
    assert isinstance(event.id, UUID) and event.id.version == 7
    assert event.timestamp.tzinfo is not None and event.timestamp.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - event.timestamp) < timedelta(seconds=5)
    assert event.actor_type is ActorType.SYSTEM
    assert event.correlation_id == event.id  # a root event correlates with itself
    assert event.causation_id is None
    assert event.payload == OrderPlaced(order_id=1, title="Desk")


def test_type_accepts_member_or_string_and_holds_the_member():
    event = Event(type="order.placed", payload={"order_id": 1, "title": "Desk"})
    assert event.type is ShopEvent.ORDER_PLACED


def test_unknown_type_is_refused():
    with pytest.raises(UnknownEventTypeError, match="'order.teleported'"):
        Event(type="order.teleported", payload={})


def test_payload_is_validated_against_the_catalog_model():
    with pytest.raises(ValidationError, match="title"):
        Event(type=ShopEvent.ORDER_PLACED, payload={"order_id": 1})


def test_payload_of_another_model_is_refused():
    with pytest.raises(ValidationError, match="must be OrderPlaced, not NoteAdded"):
        Event(
            type=ShopEvent.ORDER_PLACED,
            payload=NoteAdded(note_id=uuid4(), text="x", author_email="a@b.c"),
        )


def test_parametrized_event_checks_the_model():
    event = Event[OrderPlaced](type=ShopEvent.ORDER_PLACED, payload={"order_id": 1, "title": "a"})
    assert isinstance(event.payload, OrderPlaced)
    with pytest.raises(ValidationError, match="expects payload model NoteAdded"):
        Event[NoteAdded](type=ShopEvent.ORDER_PLACED, payload={"order_id": 1, "title": "a"})


def test_json_round_trip_restores_payload_model():
    event = Event(
        type=ShopEvent.NOTE_ADDED,
        payload={"note_id": uuid4(), "text": "hello", "author_email": "a@example.com"},
        project_id=uuid4(),
        actor_id=uuid4(),
        actor_type="agent",
    )
    restored = Event.model_validate_json(event.model_dump_json())
    assert restored == event
    assert type(restored.payload) is NoteAdded
    assert restored.type is ShopEvent.NOTE_ADDED


def test_timestamp_is_normalised_to_utc():
    plus_two = timezone(timedelta(hours=2))
    event = Event(
        type=ShopEvent.ORDER_PLACED,
        payload={"order_id": 1, "title": "a"},
        timestamp=datetime(2026, 1, 1, 12, tzinfo=plus_two),
    )
    assert event.timestamp == datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert event.timestamp.utcoffset() == timedelta(0)


def test_naive_timestamp_is_refused():
    with pytest.raises(ValidationError, match="timezone"):
        Event(
            type=ShopEvent.ORDER_PLACED,
            payload={"order_id": 1, "title": "a"},
            timestamp=datetime(2026, 1, 1),
        )


def test_bad_actor_type_is_refused():
    with pytest.raises(ValidationError, match="actor_type"):
        Event(type=ShopEvent.ORDER_PLACED, payload={"order_id": 1, "title": "a"}, actor_type="bot")


def test_event_is_frozen():
    event = Event(type=ShopEvent.ORDER_PLACED, payload={"order_id": 1, "title": "a"})
    with pytest.raises(ValidationError):
        event.project_id = uuid4()


def test_an_event_rebuilt_inside_a_handler_keeps_its_own_chain():
    """Parsing a stored or received event is not publishing one: it does not join the
    chain of the event being handled (a null causation stays null)."""
    from eventbus.envelope import _current_event
    from eventbus.wire import parse_event, public_json

    handled = Event(type=ShopEvent.ORDER_DELETED, payload={"order_id": 1})
    received = Event(type=ShopEvent.ORDER_DELETED, payload={"order_id": 2})
    assert received.causation_id is None
    token = _current_event.set(handled)
    try:
        rebuilt = parse_event(public_json(received))
        new = Event(type=ShopEvent.ORDER_DELETED, payload={"order_id": 3})
    finally:
        _current_event.reset(token)
    assert rebuilt == received and rebuilt.causation_id is None
    assert rebuilt.correlation_id == received.correlation_id
    # A new event made while handling still joins the chain.
    assert (new.causation_id, new.correlation_id) == (handled.id, handled.correlation_id)


def test_a_private_field_serialized_under_an_alias_stays_private():
    import enum

    from pydantic import ConfigDict, Field

    from eventbus.catalog import EventSpec, catalog
    from eventbus.wire import public_json

    class Secret(enum.StrEnum):
        SHARED = "secret.shared"

    class Shared(BaseModel):
        model_config = ConfigDict(frozen=True, serialize_by_alias=True)
        text: str
        author_email: str = Field(alias="authorEmail")

    catalog.register(
        {Secret.SHARED: EventSpec(Shared, private_fields=frozenset({"author_email"}))},
        source="tests.test_envelope",
    )
    try:
        event = Event(
            type=Secret.SHARED, payload={"text": "hi", "authorEmail": "secret@example.com"}
        )
        assert "secret@example.com" in event.model_dump_json()  # the alias is what is sent
        public = public_json(event)
        assert "secret@example.com" not in public and '"text":"hi"' in public
    finally:
        catalog._entries.pop(Secret.SHARED.value, None)
