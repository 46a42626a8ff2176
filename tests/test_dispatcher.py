import asyncio
import dataclasses
import logging
from typing import Any
from uuid import UUID, uuid4

import pytest
from django.dispatch import receiver

from eventbus import (
    Event,
    EventDispatcher,
    EventSchemaError,
    InvalidHandlerError,
    PayloadTooLargeError,
    UnknownEventTypeError,
    event_handler,
    event_published,
    get_event_dispatcher,
)
from tests.testapp.events import NoteAdded, OrderClosed, OrderPlaced, ShopEvent

# Publishing writes the event log, and async tests reach it from worker threads.
pytestmark = pytest.mark.django_db(transaction=True)

PLACED = {"order_id": 7, "title": "Desk"}


def test_publish_reaches_handlers_in_subscription_order(dispatcher):
    calls = []
    dispatcher.subscribe(ShopEvent.ORDER_PLACED, lambda e: calls.append(("first", e)))
    dispatcher.subscribe("order.placed", lambda e: calls.append(("second", e)))
    event = dispatcher.publish(ShopEvent.ORDER_PLACED, PLACED)
    assert [name for name, _ in calls] == ["first", "second"]
    assert all(received is event for _, received in calls)
    assert event.payload == OrderPlaced(order_id=7, title="Desk")


def test_handler_annotated_with_event_gets_the_envelope(dispatcher):
    seen = []

    def on_placed(event: Event[OrderPlaced]) -> None:
        seen.append(event)

    dispatcher.subscribe(ShopEvent.ORDER_PLACED, on_placed)
    published = dispatcher.publish(ShopEvent.ORDER_PLACED, OrderPlaced(order_id=1, title="a"))
    assert seen == [published]


def test_handler_annotated_with_the_payload_model_gets_the_payload(dispatcher):
    seen = []

    def on_placed(payload: OrderPlaced) -> None:
        seen.append(payload)

    dispatcher.subscribe(ShopEvent.ORDER_PLACED, on_placed)
    dispatcher.publish(ShopEvent.ORDER_PLACED, PLACED)
    assert seen == [OrderPlaced(**PLACED)]


def test_subscribing_twice_is_a_no_op(dispatcher):
    calls = []

    def handler(event: Event[Any]) -> None:
        calls.append(event)

    dispatcher.subscribe(ShopEvent.ORDER_PLACED, handler)
    dispatcher.subscribe("order.placed", handler)
    dispatcher.publish(ShopEvent.ORDER_PLACED, PLACED)
    assert len(calls) == 1
    assert len(dispatcher.handlers(ShopEvent.ORDER_PLACED)) == 1


def test_unsubscribe(dispatcher):
    calls = []
    handler = calls.append
    dispatcher.subscribe(ShopEvent.ORDER_PLACED, handler)
    assert dispatcher.unsubscribe(ShopEvent.ORDER_PLACED, handler) is True
    assert dispatcher.unsubscribe(ShopEvent.ORDER_PLACED, handler) is False
    dispatcher.publish(ShopEvent.ORDER_PLACED, PLACED)
    assert calls == []


def test_handler_annotated_with_another_payload_model_is_refused(dispatcher):
    def on_placed(event: Event[OrderClosed]) -> None: ...

    with pytest.raises(InvalidHandlerError) as info:
        dispatcher.subscribe(ShopEvent.ORDER_PLACED, on_placed)
    message = str(info.value)
    assert "on_placed" in message and "'order.placed'" in message
    assert "tests.testapp.events.OrderPlaced" in message  # expected
    assert "tests.testapp.events.OrderClosed" in message  # found
    assert dispatcher.handlers(ShopEvent.ORDER_PLACED) == ()


def test_bare_payload_annotation_of_another_model_is_refused(dispatcher):
    def on_placed(payload: NoteAdded) -> None: ...

    with pytest.raises(InvalidHandlerError, match="NoteAdded"):
        dispatcher.subscribe(ShopEvent.ORDER_PLACED, on_placed)


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (lambda: None, "exactly one positional argument"),
        (lambda a, b: None, "exactly one positional argument"),
        ("not callable", "is not callable"),
    ],
)
def test_handlers_that_cannot_take_an_event_are_refused(dispatcher, handler, message):
    with pytest.raises(InvalidHandlerError, match=message):
        dispatcher.subscribe(ShopEvent.ORDER_PLACED, handler)


def test_annotation_that_is_not_a_model_is_refused(dispatcher):
    def handler(event: dict) -> None: ...

    with pytest.raises(InvalidHandlerError, match="annotates its argument as"):
        dispatcher.subscribe(ShopEvent.ORDER_PLACED, handler)


def test_subscribing_to_an_unknown_type_is_refused(dispatcher):
    with pytest.raises(UnknownEventTypeError, match="'order.vanished'"):
        dispatcher.subscribe("order.vanished", print)


def test_publishing_an_unknown_type_is_refused(dispatcher, captured_events):
    with pytest.raises(UnknownEventTypeError):
        dispatcher.publish("order.vanished", {})
    assert captured_events == []


def test_invalid_payload_names_every_bad_field_and_dispatches_nothing(dispatcher, captured_events):
    calls = []
    dispatcher.subscribe(ShopEvent.ORDER_PLACED, calls.append)
    with pytest.raises(EventSchemaError) as info:
        dispatcher.publish(ShopEvent.ORDER_PLACED, {"order_id": "seven", "quantity": "x"})
    error = info.value
    assert error.event_type == "order.placed"
    assert [path for path, _ in error.errors] == ["order_id", "title", "quantity"]
    assert "order.placed" in str(error) and "title: Field required" in str(error)
    assert isinstance(error, ValueError)
    assert calls == [] and captured_events == []


def test_nested_field_paths_are_reported():
    from eventbus.exceptions import EventSchemaError as Error

    error = Error("x.y", [("items.0.sku", "Field required")])
    assert "items.0.sku: Field required" in str(error)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (
            NoteAdded(note_id=uuid4(), text="t", author_email="a@b.c"),
            "expected OrderPlaced, got NoteAdded",
        ),
        (["order_id", 1], "expected OrderPlaced or a dict, got list"),
        (None, "expected OrderPlaced or a dict, got NoneType"),
    ],
)
def test_payload_of_the_wrong_kind_is_refused(dispatcher, payload, message):
    with pytest.raises(EventSchemaError, match=message):
        dispatcher.publish(ShopEvent.ORDER_PLACED, payload)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"project_id": "not a key"}, "project_id: 'not a key' is not a valid key"),
        ({"project_id": "x" * 65}, "project_id"),
        ({"project_id": 1.5}, "project_id"),
        ({"project_id": True}, "project_id"),
        ({"project_id": 2**64}, "project_id: .* integers must fit in 64 bits"),
        ({"actor_id": "a.b"}, "actor_id"),
        ({"actor_id": b"bytes"}, "actor_id"),
        ({"actor_type": "robot"}, "actor_type"),
        ({"actor_type": ["user"]}, "actor_type"),
        ({"correlation_id": "zzz"}, "correlation_id"),
    ],
)
def test_bad_envelope_fields_are_refused(dispatcher, options, field):
    with pytest.raises(EventSchemaError, match=field):
        dispatcher.publish(ShopEvent.ORDER_PLACED, PLACED, **options)


@pytest.mark.parametrize(
    ("given", "held"),
    [
        (42, 42),
        ("42", 42),
        ("042", "042"),
        ("team-7", "team-7"),
        ("B3A2E4A4-6A1B-4D0E-9C2A-0A7C4E1B2D3F", UUID("b3a2e4a4-6a1b-4d0e-9c2a-0a7c4e1b2d3f")),
    ],
)
def test_integer_and_string_keys_are_held_in_one_canonical_form(dispatcher, given, held):
    event = dispatcher.publish(ShopEvent.ORDER_PLACED, PLACED, project_id=given, actor_id=given)
    assert (event.project_id, event.actor_id) == (held, held)
    assert type(event.project_id) is type(held)
    assert Event.model_validate_json(event.model_dump_json()) == event


def test_envelope_options_are_carried(dispatcher):
    project, actor = uuid4(), uuid4()
    event = dispatcher.publish(
        ShopEvent.ORDER_PLACED, PLACED, project_id=str(project), actor_id=actor, actor_type="user"
    )
    assert (event.project_id, event.actor_id, event.actor_type) == (project, actor, "user")


def test_failing_handler_is_logged_and_isolated(dispatcher, caplog):
    calls = []

    def broken(event: Event[OrderPlaced]) -> None:
        raise RuntimeError("boom")

    dispatcher.subscribe(ShopEvent.ORDER_PLACED, lambda e: calls.append("before"))
    dispatcher.subscribe(ShopEvent.ORDER_PLACED, broken)
    dispatcher.subscribe(ShopEvent.ORDER_PLACED, lambda e: calls.append("after"))
    with caplog.at_level(logging.ERROR, logger="eventbus"):
        event = dispatcher.publish(ShopEvent.ORDER_PLACED, PLACED)
    assert calls == ["before", "after"]
    [record] = [r for r in caplog.records if r.name == "eventbus"]
    assert record.event_id == str(event.id)
    assert record.event_type == "order.placed"
    assert (
        record.handler
        == "tests.test_dispatcher.test_failing_handler_is_logged_and_isolated.<locals>.broken"
    )
    assert record.exc_info[0] is RuntimeError


def test_several_failing_handlers_are_each_logged(dispatcher, caplog):
    def make(n):
        def handler(event: Event[Any]) -> None:
            raise ValueError(f"handler {n}")

        return handler

    for n in range(3):
        dispatcher.subscribe(ShopEvent.ORDER_PLACED, make(n))
    failures = []

    def listener(event, name, exc):
        failures.append(str(exc))

    saved = dispatcher.stages
    dispatcher.stages = dataclasses.replace(saved, record_failure=listener)
    try:
        dispatcher.publish(ShopEvent.ORDER_PLACED, PLACED)
    finally:
        dispatcher.stages = saved
    assert failures == ["handler 0", "handler 1", "handler 2"]


def test_async_handler_from_sync_publish_is_awaited(dispatcher):
    seen = []

    async def on_placed(event: Event[OrderPlaced]) -> None:
        await asyncio.sleep(0)
        seen.append(event.id)

    dispatcher.subscribe(ShopEvent.ORDER_PLACED, on_placed)
    event = dispatcher.publish(ShopEvent.ORDER_PLACED, PLACED)
    assert seen == [event.id]


def test_failing_async_handler_from_sync_publish_is_isolated(dispatcher, caplog):
    async def broken(event: Event[OrderPlaced]) -> None:
        raise RuntimeError("async boom")

    dispatcher.subscribe(ShopEvent.ORDER_PLACED, broken)
    with caplog.at_level(logging.ERROR, logger="eventbus"):
        dispatcher.publish(ShopEvent.ORDER_PLACED, PLACED)
    assert any(r.handler.endswith("broken") for r in caplog.records if r.name == "eventbus")


async def test_apublish_does_not_wait_for_async_handlers(dispatcher):
    release = asyncio.Event()
    finished = []

    async def slow(event: Event[OrderPlaced]) -> None:
        await release.wait()
        finished.append(event.id)

    dispatcher.subscribe(ShopEvent.ORDER_PLACED, slow)
    event = await dispatcher.apublish(ShopEvent.ORDER_PLACED, PLACED)
    assert finished == [] and dispatcher.pending_tasks == 1
    release.set()
    await dispatcher.drain(timeout=5)
    assert finished == [event.id] and dispatcher.pending_tasks == 0


async def test_apublish_runs_sync_handlers_before_returning(dispatcher):
    seen = []
    dispatcher.subscribe(ShopEvent.ORDER_PLACED, seen.append)
    event = await dispatcher.apublish(ShopEvent.ORDER_PLACED, PLACED)
    assert seen == [event]


async def test_failing_async_handler_is_isolated_from_the_others(dispatcher, caplog):
    seen = []

    async def broken(event: Event[Any]) -> None:
        raise RuntimeError("nope")

    async def fine(event: Event[Any]) -> None:
        seen.append(event)

    dispatcher.subscribe(ShopEvent.ORDER_PLACED, broken)
    dispatcher.subscribe(ShopEvent.ORDER_PLACED, fine)
    with caplog.at_level(logging.ERROR, logger="eventbus"):
        event = await dispatcher.apublish(ShopEvent.ORDER_PLACED, PLACED)
        await dispatcher.drain(timeout=5)
    assert seen == [event]
    assert [r.handler.rsplit(".", 1)[-1] for r in caplog.records if r.name == "eventbus"] == [
        "broken"
    ]


async def test_drain_times_out_on_a_stuck_handler(dispatcher):
    never = asyncio.Event()

    async def stuck(event: Event[Any]) -> None:
        await never.wait()

    dispatcher.subscribe(ShopEvent.ORDER_PLACED, stuck)
    await dispatcher.apublish(ShopEvent.ORDER_PLACED, PLACED)
    with pytest.raises(TimeoutError, match="1 event handler task"):
        await dispatcher.drain(timeout=0.05)
    never.set()
    await dispatcher.drain(timeout=5)


async def test_sync_publish_inside_an_event_loop_is_refused_clearly(dispatcher, captured_events):
    from django.core.exceptions import SynchronousOnlyOperation

    with pytest.raises(SynchronousOnlyOperation, match="use 'await apublish"):
        dispatcher.publish(ShopEvent.ORDER_PLACED, PLACED)
    assert captured_events == []


async def test_dispatch_called_from_a_running_loop_schedules_async_handlers(dispatcher):
    seen = []

    async def on_placed(event: Event[Any]) -> None:
        await asyncio.sleep(0)
        seen.append(event)

    dispatcher.subscribe(ShopEvent.ORDER_PLACED, on_placed)
    event = dispatcher.build(ShopEvent.ORDER_PLACED, PLACED)
    dispatcher.dispatch(event)
    assert seen == []  # started as a task, not awaited
    await dispatcher.drain(timeout=5)
    assert seen == [event]


def test_causation_chain_across_handlers(dispatcher):
    chain = []

    def on_placed(event: Event[OrderPlaced]) -> None:
        chain.append(event)
        dispatcher.publish(ShopEvent.ORDER_CLOSED, {"order_id": 7, "title": "Desk"})

    def on_closed(event: Event[OrderClosed]) -> None:
        chain.append(event)
        dispatcher.publish(ShopEvent.ORDER_DELETED, {"order_id": 7})

    dispatcher.subscribe(ShopEvent.ORDER_PLACED, on_placed)
    dispatcher.subscribe(ShopEvent.ORDER_CLOSED, on_closed)
    dispatcher.subscribe(ShopEvent.ORDER_DELETED, chain.append)
    root = dispatcher.publish(ShopEvent.ORDER_PLACED, PLACED)
    placed, closed, deleted = chain
    assert placed is root and root.correlation_id == root.id and root.causation_id is None
    assert closed.causation_id == root.id and closed.correlation_id == root.id
    assert deleted.causation_id == closed.id and deleted.correlation_id == root.id
    # Outside a handler, chains start afresh.
    fresh = dispatcher.publish(ShopEvent.ORDER_DELETED, {"order_id": 8})
    assert fresh.causation_id is None and fresh.correlation_id == fresh.id


async def test_causation_chain_across_async_tasks(dispatcher):
    chain = []

    async def on_placed(event: Event[OrderPlaced]) -> None:
        await asyncio.sleep(0)
        chain.append(await dispatcher.apublish(ShopEvent.ORDER_DELETED, {"order_id": 1}))

    dispatcher.subscribe(ShopEvent.ORDER_PLACED, on_placed)
    root = await dispatcher.apublish(ShopEvent.ORDER_PLACED, PLACED)
    await dispatcher.drain(timeout=5)
    [child] = chain
    assert child.causation_id == root.id and child.correlation_id == root.id


def test_explicit_chain_ids_win(dispatcher):
    correlation, causation = uuid4(), uuid4()
    event = dispatcher.publish(
        ShopEvent.ORDER_PLACED, PLACED, correlation_id=correlation, causation_id=str(causation)
    )
    assert (event.correlation_id, event.causation_id) == (correlation, causation)


def test_every_event_is_also_a_django_signal(dispatcher):
    received = []

    @receiver(event_published, sender=ShopEvent.ORDER_PLACED)
    def on_signal(sender, event, **kwargs):
        received.append((sender, event))

    try:
        event = dispatcher.publish(ShopEvent.ORDER_PLACED, PLACED)
        dispatcher.publish(ShopEvent.ORDER_DELETED, {"order_id": 1})  # other sender: not received
    finally:
        event_published.disconnect(on_signal, sender=ShopEvent.ORDER_PLACED)
    assert received == [(ShopEvent.ORDER_PLACED, event)]


async def test_signal_receivers_run_for_apublish(dispatcher):
    received = []

    def on_signal(sender, event, **kwargs):
        received.append(event)

    event_published.connect(on_signal)
    try:
        event = await dispatcher.apublish(ShopEvent.ORDER_PLACED, PLACED)
    finally:
        event_published.disconnect(on_signal)
    assert received == [event]


def test_failing_signal_receiver_is_logged_and_isolated(dispatcher, caplog):
    def broken(sender, event, **kwargs):
        raise RuntimeError("receiver boom")

    event_published.connect(broken)
    try:
        with caplog.at_level(logging.ERROR, logger="eventbus"):
            event = dispatcher.publish(ShopEvent.ORDER_PLACED, PLACED)
    finally:
        event_published.disconnect(broken)
    [record] = [r for r in caplog.records if r.name == "eventbus"]
    assert record.event_id == str(event.id) and record.handler.endswith("broken")


def test_handlers_module_is_discovered_at_start_up():
    from tests.testapp.handlers import discovered_calls, remember_order

    subscribed = get_event_dispatcher().handlers(ShopEvent.ORDER_PLACED)
    assert remember_order in [sub.func for sub in subscribed]
    discovered_calls.clear()
    event = get_event_dispatcher().publish(ShopEvent.ORDER_PLACED, PLACED)
    assert discovered_calls == [event]


def test_decorator_after_start_up_raises_at_once():
    with pytest.raises(UnknownEventTypeError):

        @event_handler("order.unheard_of")
        def handler(event: Event[Any]) -> None: ...

    with pytest.raises(InvalidHandlerError):

        @event_handler(ShopEvent.ORDER_PLACED)
        def wrong(event: Event[OrderClosed]) -> None: ...


def test_decorator_needs_an_event_type():
    with pytest.raises(TypeError, match="at least one event type"):
        event_handler()


def test_published_event_equals_its_validated_twin(dispatcher):
    """The dispatcher skips Pydantic's second pass; the result must be the same model."""
    event = dispatcher.publish(
        ShopEvent.ORDER_PLACED, PLACED, project_id=uuid4(), actor_type="agent"
    )
    assert Event.model_validate(event.model_dump()) == event
    assert Event.model_validate_json(event.model_dump_json()) == event
    assert event.model_fields_set == set(Event.model_fields)
    assert event.id.version == 7 and event.timestamp.tzinfo is not None


# -- the publish pipeline ------------------------------------------------------------


class RecordingStages:
    """Stages that write down when each runs, to check the pipeline's order."""

    def __init__(self, steps: list[str]) -> None:
        self.steps = steps

    def store(self, event: Event[Any], entry: Any, payload: bytes, using: str | None) -> None:
        self.steps.append(f"store {payload.decode()}")

    async def astore(
        self, event: Event[Any], entry: Any, payload: bytes, using: str | None
    ) -> None:
        self.store(event, entry, payload, using)

    def hand_off(self, event: Event[Any], entry: Any) -> None:
        self.steps.append("hand off")

    async def ahand_off(self, event: Event[Any], entry: Any) -> None:
        self.hand_off(event, entry)


def test_publish_runs_its_stages_in_order_with_the_commit_between_store_and_hand_off():
    from django.db import transaction

    from eventbus.dispatcher import Stages

    steps: list[str] = []
    recording = RecordingStages(steps)
    bare = EventDispatcher(stages=Stages(store=recording, hand_off=recording))
    bare.subscribe(ShopEvent.ORDER_PLACED, lambda event: steps.append("handler"))
    bare.connect_observer(lambda event: steps.append("observer"))

    def signal_receiver(sender: Any, event: Event[Any], **kwargs: Any) -> None:
        steps.append("signal")

    event_published.connect(signal_receiver)
    try:
        with transaction.atomic():
            bare.publish(ShopEvent.ORDER_PLACED, PLACED)
            steps.append("commit")
    finally:
        event_published.disconnect(signal_receiver)
    assert steps == [
        'store {"order_id":7,"title":"Desk","quantity":1}',
        "observer",
        "commit",
        "hand off",
        "handler",
        "signal",
    ]


async def test_apublish_runs_the_same_stages_through_their_async_twins():
    from eventbus.dispatcher import Stages

    steps: list[str] = []
    recording = RecordingStages(steps)
    bare = EventDispatcher(stages=Stages(store=recording, hand_off=recording))
    bare.subscribe(ShopEvent.ORDER_PLACED, lambda event: steps.append("handler"))
    bare.connect_observer(lambda event: steps.append("observer"))
    await bare.apublish(ShopEvent.ORDER_PLACED, PLACED)
    assert steps == [
        'store {"order_id":7,"title":"Desk","quantity":1}',
        "observer",
        "hand off",
        "handler",
    ]


def test_a_bare_dispatcher_enforces_the_payload_limits_too(settings):
    """Validation is the dispatcher's own stage: no log or relay needs to be wired for it."""
    from eventbus.dispatcher import Stages

    settings.EVENTBUS = {**settings.EVENTBUS, "MAX_PAYLOAD_BYTES": 64}
    steps: list[str] = []
    bare = EventDispatcher(stages=Stages(store=RecordingStages(steps)))
    bare.subscribe(ShopEvent.ORDER_PLACED, lambda event: steps.append("handler"))
    with pytest.raises(PayloadTooLargeError, match="over the limit of 64"):
        bare.publish(ShopEvent.ORDER_PLACED, {**PLACED, "title": "x" * 100})
    assert steps == []
    bare.publish(ShopEvent.ORDER_PLACED, PLACED)
    assert steps == ['store {"order_id":7,"title":"Desk","quantity":1}', "handler"]


def test_observers_connect_and_disconnect():
    bare = EventDispatcher()
    seen: list[str] = []

    def observer(event: Event[Any]) -> None:
        seen.append(str(event.type.value))

    bare.connect_observer(observer)
    bare.connect_observer(observer)  # twice is once
    bare.publish(ShopEvent.ORDER_PLACED, PLACED)
    assert bare.disconnect_observer(observer) is True
    assert bare.disconnect_observer(observer) is False
    bare.publish(ShopEvent.ORDER_PLACED, PLACED)
    assert seen == ["order.placed"]


def test_subscriptions_is_a_deprecated_alias_of_handlers(dispatcher):
    def handler(event: Event[Any]) -> None: ...

    dispatcher.subscribe(ShopEvent.ORDER_PLACED, handler)
    with pytest.warns(DeprecationWarning, match=r"use handlers\(\)"):
        found = dispatcher.subscriptions(ShopEvent.ORDER_PLACED)
    assert [known.func for known in found] == [handler]
