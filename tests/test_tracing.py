"""Spans along an event's path, linked by the traceparent it carries (eventbus.tracing).

Spans go to the OpenTelemetry SDK's in-memory exporter, through a tracer provider of the
test's own (the global one is left alone: it can be set once per process).
"""

import asyncio
import builtins
import json
import sys
from dataclasses import replace
from typing import Any
from uuid import uuid4

import pytest
from django.db import transaction
from django.test import override_settings
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from eventbus import Event, event_published, get_event_dispatcher, tracing
from eventbus.bus import EventBus
from eventbus.durable import execute
from eventbus.envelope import parse_traceparent
from eventbus.export import from_cloudevent, to_cloudevent
from eventbus.fanout import LocalFanout
from eventbus.models import EventRecord, HandlerRun
from eventbus.relay import Relay
from eventbus.sinks import load_sink
from eventbus.wire import layer_message, parse_event, public_json
from tests.testapp.events import ShopEvent

FLAKY = "tests.sinks.FlakySink"
SETTINGS = {"CATALOGS": [], "SINK": FLAKY}


class Spans:
    def __init__(self, exporter: InMemorySpanExporter, provider: TracerProvider) -> None:
        self.exporter = exporter
        self.provider = provider
        self.tracer = provider.get_tracer("tests")

    def finished(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.finished() if span.name == name]

    def one(self, name: str) -> ReadableSpan:
        [span] = self.named(name)
        return span


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    traced = tracing.Tracing(provider)
    dispatcher = get_event_dispatcher()
    saved = dispatcher.stages, tracing.get_tracing()
    dispatcher.stages = replace(dispatcher.stages, tracing=traced)
    tracing.set_tracing(traced)
    try:
        yield Spans(exporter, provider)
    finally:
        dispatcher.stages = saved[0]
        tracing.set_tracing(saved[1])


@pytest.fixture
def sink():
    flaky = load_sink(FLAKY)
    flaky.clear()
    flaky.failing = False
    with override_settings(EVENTBUS=SETTINGS):
        yield flaky
    flaky.failing = False


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def traceparent_of(span: ReadableSpan) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


@pytest.mark.django_db(transaction=True)
def test_publish_store_handlers_and_the_hand_off_are_one_trace(dispatcher, spans, sink):
    handled: list[Event[Any]] = []
    dispatcher.subscribe(ShopEvent.ORDER_DELETED, handled.append)

    def fails(event: Event[Any]) -> None:
        raise ValueError("no")

    dispatcher.subscribe(ShopEvent.ORDER_DELETED, fails)
    with spans.tracer.start_as_current_span("request") as request, transaction.atomic():
        event = dispatcher.publish(ShopEvent.ORDER_DELETED, {"order_id": 1})

    publish = spans.one("publish order.deleted")
    store = spans.one("store order.deleted")
    send = spans.one("send order.deleted")
    handle = spans.named("handle order.deleted")
    trace_id = request.get_span_context().trace_id
    assert {s.context.trace_id for s in [publish, store, send, *handle]} == {trace_id}
    # publish is the request's child; the rest are publish's, even after the commit.
    assert parent_of(publish) == request.get_span_context().span_id
    assert {parent_of(s) for s in [store, send, *handle]} == {publish.context.span_id}
    # The event carries the publish span's context, in its row and its public JSON.
    assert event.traceparent == traceparent_of(publish)
    assert EventRecord.objects.get(id=event.id).traceparent == event.traceparent
    assert json.loads(public_json(event))["traceparent"] == event.traceparent
    assert handled[0].traceparent == event.traceparent
    # The event's ids and its chain are attributes of each span.
    for span in [publish, store, send, *handle]:
        assert span.attributes["messaging.message.id"] == str(event.id)
        assert span.attributes["eventbus.correlation_id"] == str(event.correlation_id)
        assert span.attributes["eventbus.event.type"] == "order.deleted"
    assert publish.kind == trace.SpanKind.PRODUCER
    names = {s.attributes["eventbus.handler"]: s for s in handle}
    failed = names[
        f"{__name__}.test_publish_store_handlers_and_the_hand_off_are_one_trace.<locals>.fails"
    ]
    assert failed.status.status_code == trace.StatusCode.ERROR
    assert [e.name for e in failed.events] == ["exception"]


@pytest.mark.django_db(transaction=True)
def test_an_event_published_by_a_handler_is_a_child_of_its_handlers_span(dispatcher, spans, sink):
    def react(event: Event[Any]) -> None:
        dispatcher.publish(ShopEvent.ORDER_CLOSED, {"order_id": 1, "title": "done"})

    dispatcher.subscribe(ShopEvent.ORDER_DELETED, react)
    with spans.tracer.start_as_current_span("request"):
        cause = dispatcher.publish(ShopEvent.ORDER_DELETED, {"order_id": 1})
    handle = spans.one("handle order.deleted")
    effect = spans.one("publish order.closed")
    assert parent_of(effect) == handle.context.span_id
    assert effect.attributes["eventbus.causation_id"] == str(cause.id)
    assert effect.attributes["eventbus.correlation_id"] == str(cause.correlation_id)


@pytest.mark.django_db(transaction=True)
async def test_apublish_is_traced_as_publish(dispatcher, spans, sink):
    done = asyncio.Event()

    async def handler(event: Event[Any]) -> None:
        done.set()

    dispatcher.subscribe(ShopEvent.ORDER_DELETED, handler)
    with spans.tracer.start_as_current_span("task"):
        event = await dispatcher.apublish(ShopEvent.ORDER_DELETED, {"order_id": 2})
    await asyncio.wait_for(done.wait(), 5)
    await dispatcher.drain()
    publish = spans.one("publish order.deleted")
    assert event.traceparent == traceparent_of(publish)
    assert parent_of(spans.one("handle order.deleted")) == publish.context.span_id
    assert parent_of(spans.one("store order.deleted")) == publish.context.span_id
    assert parent_of(spans.one("send order.deleted")) == publish.context.span_id


@pytest.mark.django_db(transaction=True)
async def test_an_async_handler_runs_in_its_span_and_its_failure_is_recorded(
    dispatcher, spans, sink
):
    inside: list[Any] = []

    async def fails(event: Event[Any]) -> None:
        await asyncio.sleep(0)  # the span stays current across an await
        inside.append(trace.get_current_span().get_span_context().span_id)
        raise ValueError("no")

    dispatcher.subscribe(ShopEvent.ORDER_DELETED, fails)
    with spans.tracer.start_as_current_span("task"):
        await dispatcher.apublish(ShopEvent.ORDER_DELETED, {"order_id": 3})
        await dispatcher.drain()
    handle = spans.one("handle order.deleted")
    assert inside == [handle.context.span_id]
    assert handle.status.status_code == trace.StatusCode.ERROR
    assert handle.status.description == "ValueError: no"
    assert [e.name for e in handle.events] == ["exception"]
    assert handle.end_time is not None


@pytest.mark.django_db(transaction=True)
def test_a_sync_handler_runs_in_its_span_which_is_no_longer_current_after(dispatcher, spans, sink):
    """Outside a transaction sync handlers run inside publish(): each one's span is current
    while it runs and detached after, even when it raises, so what runs after them in the
    publish (the signal's receivers) is in the publish span again."""
    inside: list[Any] = []
    after: list[Any] = []

    def first(event: Event[Any]) -> None:
        inside.append(trace.get_current_span().get_span_context().span_id)
        raise ValueError("no")

    def second(event: Event[Any]) -> None:
        inside.append(trace.get_current_span().get_span_context().span_id)

    def receiver(sender: Any, event: Event[Any], **kwargs: Any) -> None:
        after.append(trace.get_current_span().get_span_context().span_id)

    dispatcher.subscribe(ShopEvent.ORDER_DELETED, first)
    dispatcher.subscribe(ShopEvent.ORDER_DELETED, second)
    event_published.connect(receiver, weak=False)
    try:
        with spans.tracer.start_as_current_span("request") as request:
            dispatcher.publish(ShopEvent.ORDER_DELETED, {"order_id": 4})
            assert trace.get_current_span() is request
    finally:
        event_published.disconnect(receiver)
    handles = spans.named("handle order.deleted")
    assert sorted(inside) == sorted(s.context.span_id for s in handles)
    assert len(set(inside)) == 2
    assert after == [spans.one("publish order.deleted").context.span_id]


@pytest.mark.asyncio
async def test_a_cancelled_async_handler_is_not_a_failure(spans):
    """As with start_as_current_span: a cancellation ends the span without an error."""
    from eventbus.inspection import Handler
    from eventbus.tracing import Tracing, context_of

    started = asyncio.Event()

    async def waits(event: Any) -> None:
        started.set()
        await asyncio.sleep(60)

    tracing = Tracing(spans.provider)
    with spans.tracer.start_as_current_span("task") as task:
        parent = context_of(traceparent_of(task))
        [traced] = [
            tracing._traced(
                Handler(waits, "waits", True, False, False, None), "handle x", {}, parent
            )
        ]
        running = asyncio.ensure_future(traced.func(None))
        await started.wait()
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    span = spans.one("handle x")
    assert span.status.status_code == trace.StatusCode.UNSET
    assert span.events == ()
    assert span.end_time is not None


@pytest.mark.django_db(transaction=True)
def test_outside_a_recorded_trace_nothing_is_traced(dispatcher, spans, sink):
    dispatcher.subscribe(ShopEvent.ORDER_DELETED, lambda event: None)
    event = dispatcher.publish(ShopEvent.ORDER_DELETED, {"order_id": 1})
    sampled_out = trace.NonRecordingSpan(
        trace.SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=trace.TraceFlags(0))
    )
    with trace.use_span(sampled_out):
        inside = dispatcher.publish(ShopEvent.ORDER_DELETED, {"order_id": 2})
    assert spans.finished() == []
    assert event.traceparent is None and inside.traceparent is None
    assert "traceparent" not in json.loads(public_json(event))
    assert EventRecord.objects.get(id=event.id).traceparent == ""


@pytest.mark.django_db(transaction=True)
def test_the_relays_retry_links_to_each_events_trace(dispatcher, spans, sink):
    from datetime import timedelta

    from django.utils import timezone

    sink.failing = True
    with spans.tracer.start_as_current_span("request"):
        first = dispatcher.publish(ShopEvent.ORDER_DELETED, {"order_id": 1})
        second = dispatcher.publish(ShopEvent.ORDER_DELETED, {"order_id": 2})
    failed_sends = spans.named("send order.deleted")
    assert len(failed_sends) == 2
    assert {s.status.status_code for s in failed_sends} == {trace.StatusCode.ERROR}
    sink.failing = False
    report = Relay().run_once(now=timezone.now() + timedelta(seconds=60))
    assert sorted(report.delivered) == sorted([first.id, second.id])
    batch = spans.one("send 2 events")
    assert batch.attributes["eventbus.relay.path"] == "relay"
    linked = {(link.context.trace_id, link.context.span_id) for link in batch.links}
    publishes = spans.named("publish order.deleted")
    assert linked == {(s.context.trace_id, s.context.span_id) for s in publishes}


@pytest.mark.db_heavy
@pytest.mark.django_db
def test_a_durable_run_in_a_worker_joins_the_publishers_trace(
    spans, django_capture_on_commit_callbacks
):
    with (
        spans.tracer.start_as_current_span("request") as request,
        django_capture_on_commit_callbacks(execute=True),
    ):
        event = get_event_dispatcher().publish(ShopEvent.PAYMENT_RECEIVED, {"payment_id": 5})
    publish = spans.one("publish payment.received")
    # A worker reads the event from its row: only the traceparent links the two.
    spans.exporter.clear()
    for run in HandlerRun.objects.filter(event_id=event.id):
        assert execute(str(run.id)) == "done"
    runs = spans.named("handle payment.received")
    assert len(runs) == 3
    for span in runs:
        assert span.context.trace_id == request.get_span_context().trace_id
        assert parent_of(span) == publish.context.span_id
        assert span.parent.is_remote
        assert span.kind == trace.SpanKind.CONSUMER
        assert span.attributes["eventbus.run.attempt"] == 1
    # What the handler publishes joins the run's span.
    settled = spans.one("publish payment.settled")
    record = next(s for s in runs if s.attributes["eventbus.handler"].endswith("record_payment"))
    assert parent_of(settled) == record.context.span_id


@pytest.mark.django_db
def test_a_failed_durable_run_says_so_on_its_span(spans, django_capture_on_commit_callbacks):
    with (
        spans.tracer.start_as_current_span("request"),
        django_capture_on_commit_callbacks(execute=True),
    ):
        event = get_event_dispatcher().publish(
            ShopEvent.PAYMENT_RECEIVED, {"payment_id": 6, "fail_times": 1}
        )
    run = HandlerRun.objects.get(event_id=event.id, handler="tests.testapp.handlers.notify_payment")
    assert execute(str(run.id)) == "retrying"
    span = spans.one("handle payment.received")
    assert span.status.status_code == trace.StatusCode.ERROR
    assert "notify failed on attempt 1" in span.status.description


def test_the_fan_out_delivers_in_the_events_trace(spans):
    class Member:
        def __init__(self) -> None:
            self.messages: list[dict[str, Any]] = []

        def on_message(self, message: dict[str, Any]) -> None:
            self.messages.append(message)

        def on_reset(self, message: dict[str, Any]) -> None:
            raise AssertionError

    with spans.tracer.start_as_current_span("publish") as publisher:
        traceparent = tracing.traceparent_of(publisher)
    channel = EventBus.get_project_channel(uuid4())
    event = Event(type=ShopEvent.ORDER_DELETED, payload={"order_id": 1}, traceparent=traceparent)
    message = layer_message(event, channel, position=1)
    assert message["traceparent"] == traceparent
    fanout = LocalFanout.__new__(LocalFanout)
    members = [Member(), Member()]
    fanout._members = {channel: dict.fromkeys(members)}
    fanout.distribute(message)
    assert all(member.messages == [message] for member in members)
    deliver = spans.one("deliver order.deleted")
    assert parent_of(deliver) == publisher.get_span_context().span_id
    assert deliver.attributes["eventbus.sockets"] == 2
    assert deliver.attributes["messaging.destination.name"] == channel
    # A message without a trace is handed on without a span.
    spans.exporter.clear()
    fanout.distribute(
        layer_message(Event(type=ShopEvent.ORDER_DELETED, payload={"order_id": 2}), channel)
    )
    assert spans.finished() == []


# -- the traceparent on the wire --------------------------------------------------------

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_frames_without_a_traceparent_still_parse_and_bad_ones_are_ignored():
    event = Event(type=ShopEvent.ORDER_DELETED, payload={"order_id": 1})
    old = public_json(event)
    assert "traceparent" not in old
    assert parse_event(old) == event
    data = json.loads(old)
    for bad in ["", "nope", "01-" + TRACEPARENT[3:], "00-" + "0" * 32 + TRACEPARENT[35:], 42]:
        assert parse_event(json.dumps({**data, "traceparent": bad})).traceparent is None
    assert parse_event(json.dumps({**data, "traceparent": TRACEPARENT})).traceparent == TRACEPARENT
    assert parse_traceparent(TRACEPARENT.upper()) is None  # W3C: lowercase hex only


@pytest.mark.django_db
def test_a_row_keeps_its_traceparent_and_one_edited_by_hand_is_ignored(dispatcher):
    with override_settings(EVENTBUS={"CATALOGS": [], "SINK": None}):
        event = dispatcher.publish(ShopEvent.ORDER_DELETED, {"order_id": 1})
    row = EventRecord.objects.get(id=event.id)
    EventRecord.objects.filter(id=event.id).update(traceparent=TRACEPARENT)
    row.refresh_from_db()
    assert row.to_event().traceparent == TRACEPARENT
    EventRecord.objects.filter(id=event.id).update(traceparent="not a trace")
    row.refresh_from_db()
    assert row.to_event().traceparent is None


def test_cloudevents_carry_the_traceparent_of_the_tracing_extension():
    event = Event(type=ShopEvent.ORDER_DELETED, payload={"order_id": 1}, traceparent=TRACEPARENT)
    cloudevent = to_cloudevent(event)
    assert cloudevent["traceparent"] == TRACEPARENT
    assert from_cloudevent(cloudevent) == event
    untraced = to_cloudevent(Event(type=ShopEvent.ORDER_DELETED, payload={"order_id": 1}))
    assert "traceparent" not in untraced


# -- without OpenTelemetry ----------------------------------------------------------------


@pytest.fixture
def without_opentelemetry(monkeypatch):
    """Importing opentelemetry fails, as when the extra is not installed."""
    for name in list(sys.modules):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            monkeypatch.setitem(sys.modules, name, None)
    real_import = builtins.__import__

    def blocked(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ImportError(f"No module named {name!r} (blocked by the test)")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", blocked)


@pytest.mark.django_db(transaction=True)
def test_without_opentelemetry_tracing_is_off_and_nothing_breaks(
    without_opentelemetry, dispatcher, sink
):
    # What AppConfig.ready() decides at start-up (a whole process without the package,
    # metrics' too, is test_metrics.py's test_without_the_extras_...).
    assert tracing.load() is None
    wired, process_wide = dispatcher.stages, tracing.get_tracing()
    dispatcher.stages = replace(wired, tracing=None)
    tracing.set_tracing(None)
    try:
        dispatcher.subscribe(ShopEvent.ORDER_DELETED, lambda event: None)
        event = dispatcher.publish(ShopEvent.ORDER_DELETED, {"order_id": 1})
        assert sink.events == [event] and event.traceparent is None
    finally:
        dispatcher.stages = wired
        tracing.set_tracing(process_wide)


@override_settings(EVENTBUS={"CATALOGS": [], "TRACING": False})
def test_the_setting_turns_tracing_off():
    assert tracing.load() is None
