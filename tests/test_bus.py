"""The channel-layer bus over a real Redis, with both channels-redis layers.

Each test builds its layer through ``override_settings(CHANNEL_LAYERS=...)``, which also
empties Channels' cache of layer instances (``channel_layers.backends``) on the way in
and out, so no test sees another's layer or connections.
"""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.test import override_settings
from django.utils import timezone

from eventbus import Event, apublish, get_event_dispatcher, publish
from eventbus.bus import EventBus, Subscription, get_event_bus
from eventbus.models import DeliveryStatus, EventRecord
from eventbus.relay import Relay
from tests.services import RedisServer
from tests.testapp.events import NoteAdded, OrderPlaced, ShopEvent

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]

CORE = "channels_redis.core.RedisChannelLayer"
PUBSUB = "channels_redis.pubsub.RedisPubSubChannelLayer"
EVENTBUS = {
    "CATALOGS": ["tests.testapp.events.EVENT_PAYLOAD_MAP"],
    "SINK": "eventbus.sinks.ChannelLayerSink",
    "HAND_OFF_ON_COMMIT": True,
}
PROJECT_A, PROJECT_B = uuid4(), uuid4()
CHANNEL_A = EventBus.get_project_channel(PROJECT_A)
CHANNEL_B = EventBus.get_project_channel(PROJECT_B)
TIMEOUT = 5.0


@pytest.fixture(params=[CORE, PUBSUB], ids=["core", "pubsub"])
def backend(request: pytest.FixtureRequest, redis_url: str) -> Iterator[str]:
    """Layers ``default`` and ``other`` (two instances, as in two processes) on the suite's Redis."""
    config = {"BACKEND": request.param, "CONFIG": {"hosts": [redis_url]}}
    with override_settings(CHANNEL_LAYERS={"default": config, "other": config}, EVENTBUS=EVENTBUS):
        yield request.param


def order(order_id: int, project: UUID = PROJECT_A) -> Event[Any]:
    return get_event_dispatcher().build(
        ShopEvent.ORDER_PLACED,
        {"order_id": order_id, "title": f"order {order_id}"},
        project_id=project,
    )


async def next_event(events: AsyncIterator[Event[Any]], timeout: float = TIMEOUT) -> Event[Any]:
    return await asyncio.wait_for(anext(events), timeout)


def later(seconds: float):
    return timezone.now() + timedelta(seconds=seconds)


# -- send and subscribe ---------------------------------------------------------------


async def test_send_then_subscriber_receives(backend):
    bus = get_event_bus()
    event = order(1)
    async with bus.subscribe([CHANNEL_A]) as events:
        await bus.send(CHANNEL_A, event)
        assert await next_event(events) == event


async def test_publish_is_a_deprecated_alias_of_send(backend):
    bus = get_event_bus()
    event = order(1)
    async with bus.subscribe([CHANNEL_A]) as events:
        with pytest.warns(DeprecationWarning, match=r"use EventBus\.send\(\)"):
            await bus.publish(CHANNEL_A, event)
        assert await next_event(events) == event


async def test_every_subscriber_gets_each_event(backend):
    """Two subscribers on one layer instance, one on another (as in a second process)."""
    event = order(1)
    async with (
        get_event_bus().subscribe([CHANNEL_A]) as first,
        get_event_bus().subscribe([CHANNEL_A]) as second,
        EventBus("other").subscribe([CHANNEL_A]) as elsewhere,
    ):
        assert await get_event_bus().broadcast([event]) == 1
        received = await asyncio.gather(*(next_event(s) for s in (first, second, elsewhere)))
        assert received == [event, event, event]


async def test_a_project_never_sees_another_projects_events(backend):
    bus = get_event_bus()
    async with bus.subscribe([CHANNEL_A]) as a_events, bus.subscribe([CHANNEL_B]) as b_events:
        for_b, for_a = order(1, PROJECT_B), order(2, PROJECT_A)
        # B's event goes first: were it leaked to A, A would see it before its own.
        await bus.broadcast([for_b, for_a])
        assert await next_event(a_events) == for_a
        assert await next_event(b_events) == for_b
        then_a, then_b = order(3, PROJECT_A), order(4, PROJECT_B)
        await bus.broadcast([then_b, then_a])
        assert await next_event(a_events) == then_a
        assert await next_event(b_events) == then_b


async def test_payload_model_is_restored_and_private_fields_never_cross(backend):
    bus = get_event_bus()
    note = get_event_dispatcher().build(
        ShopEvent.NOTE_ADDED,
        {"note_id": uuid4(), "text": "hello", "author_email": "secret@example.com"},
        project_id=PROJECT_A,
    )
    placed = order(7)
    layer = get_channel_layer()
    raw_channel = await layer.new_channel("test.raw.")
    await layer.group_add(CHANNEL_A, raw_channel)
    async with bus.subscribe([CHANNEL_A]) as events:
        await bus.broadcast([note, placed])
        got_note, got_placed = await next_event(events), await next_event(events)
        raw = await asyncio.wait_for(layer.receive(raw_channel), TIMEOUT)
    await layer.group_discard(CHANNEL_A, raw_channel)

    assert "secret@example.com" not in json.dumps(raw) and "author_email" not in raw["event"]
    assert isinstance(got_note.payload, NoteAdded)
    assert (got_note.id, got_note.type, got_note.project_id) == (note.id, note.type, PROJECT_A)
    assert got_note.payload.note_id == note.payload.note_id  # a UUID again, not a str
    assert got_note.payload.text == "hello"
    assert not hasattr(got_note.payload, "author_email")
    assert got_note.timestamp == note.timestamp and got_note.correlation_id == note.correlation_id
    assert isinstance(got_placed.payload, OrderPlaced) and got_placed == placed


def group_members(server: RedisServer, backend: str, channel: str) -> int:
    """How many subscribers Redis knows for ``channel``'s group."""
    client = server.client()
    try:
        if backend == CORE:
            return int(client.zcard(f"asgi:group:{channel}"))
        return int(
            dict(client.pubsub_numsub(f"asgi__group__{channel}"))[
                f"asgi__group__{channel}".encode()
            ]
        )
    finally:
        client.close()


def queued_messages(server: RedisServer, backend: str) -> int:
    """Messages waiting in Redis for some subscriber (pub/sub never queues)."""
    if backend != CORE:
        return 0
    client = server.client()
    try:
        return sum(int(client.zcard(key)) for key in client.scan_iter("asgi*!"))
    finally:
        client.close()


async def test_leaving_removes_the_group_membership(backend, redis_server):
    bus = get_event_bus()
    async with bus.subscribe([CHANNEL_A, CHANNEL_B]) as events:
        assert group_members(redis_server, backend, CHANNEL_A) == 1
        await bus.send(CHANNEL_A, order(1))
        await next_event(events)
    assert group_members(redis_server, backend, CHANNEL_A) == 0
    assert group_members(redis_server, backend, CHANNEL_B) == 0

    # Explicit close() after a plain `async for` + break leaves too.
    subscription = bus.subscribe([CHANNEL_A])
    await subscription.start()
    await bus.send(CHANNEL_A, order(2))
    async for _ in subscription:
        break
    await subscription.close()
    assert group_members(redis_server, backend, CHANNEL_A) == 0
    await bus.send(CHANNEL_A, order(3))
    assert queued_messages(redis_server, backend) == 0  # delivered to nobody

    # A later event reaches the subscriber still there, and nobody else is queued for it.
    async with bus.subscribe([CHANNEL_A]) as staying:
        assert group_members(redis_server, backend, CHANNEL_A) == 1
        later_event = order(4)
        await bus.send(CHANNEL_A, later_event)
        assert await next_event(staying) == later_event


async def test_publish_hands_off_through_the_log_and_the_sink(backend):
    """publish() -> log row -> commit -> hand-off -> ChannelLayerSink -> Redis -> subscriber."""
    async with get_event_bus().subscribe([CHANNEL_A]) as events:
        event = await sync_to_async(publish)(
            ShopEvent.ORDER_PLACED, {"order_id": 5, "title": "five"}, project_id=PROJECT_A
        )
        assert await next_event(events) == event
        also = await apublish(
            ShopEvent.ORDER_PLACED, {"order_id": 6, "title": "six"}, project_id=PROJECT_A
        )
        assert await next_event(events) == also
    rows = EventRecord.objects.filter(id__in=[event.id, also.id]).values_list("status", flat=True)
    assert await sync_to_async(list)(rows) == [DeliveryStatus.DELIVERED] * 2


# -- Redis restarting -------------------------------------------------------------------


async def reach(
    received: "asyncio.Queue[Event[Any]]",
    bus: EventBus,
    channel: str,
    seconds: float = 15.0,
    others: list[Event[Any]] | None = None,
) -> int:
    """Send live probes until one comes back through ``received``; return how many it took.

    A probe is sent with ``EventBus.send``, live only and at most once, so probes sent
    before the subscriber is back in its group are lost, which is what this waits out.
    Events other than probes that arrive meanwhile are kept in ``others``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    probes: set[UUID] = set()
    while loop.time() < deadline:
        probe = order(0)
        probes.add(probe.id)
        with contextlib.suppress(Exception):  # still reconnecting
            await bus.send(channel, probe)
        try:
            while True:
                got = await asyncio.wait_for(received.get(), 0.3)
                if got.id in probes:
                    return len(probes)
                if others is not None:
                    others.append(got)
        except TimeoutError:
            continue
    raise AssertionError(f"the subscriber was not back within {seconds} s")


async def drain_into(events: Subscription, received: "asyncio.Queue[Event[Any]]") -> None:
    async for event in events:
        received.put_nowait(event)


async def test_subscriber_keeps_iterating_across_a_redis_restart_and_the_log_fills_the_gap(
    backend, redis_server
):
    """Events published while Redis was down reach the subscriber from the log once it is
    back, in order and before anything newer; the relay sending them later adds nothing."""
    bus = get_event_bus()
    received: asyncio.Queue[Event[Any]] = asyncio.Queue()
    async with bus.subscribe([CHANNEL_A]) as events:
        # RedisPubSubChannelLayer reconnects without telling: the periodic check of the log
        # is what finds the gap there, within refresh_seconds.
        events.refresh_seconds = 1.0
        reader = asyncio.create_task(drain_into(events, received))
        try:
            before = await apublish(
                ShopEvent.ORDER_PLACED, {"order_id": 1, "title": "before"}, project_id=PROJECT_A
            )
            assert (await asyncio.wait_for(received.get(), TIMEOUT)).id == before.id

            await asyncio.to_thread(redis_server.stop)
            missed = [
                await apublish(
                    ShopEvent.ORDER_PLACED, {"order_id": n, "title": "down"}, project_id=PROJECT_A
                )
                for n in (2, 3, 4)
            ]
            rows = await sync_to_async(list)(
                EventRecord.objects.filter(id__in=[e.id for e in missed]).values_list(
                    "status", "last_error"
                )
            )
            assert [status for status, _ in rows] == [DeliveryStatus.PENDING] * 3
            assert all("ConnectionError" in error for _, error in rows)

            await asyncio.to_thread(redis_server.start)
            got: list[Event[Any]] = []
            probes = await reach(received, bus, CHANNEL_A, others=got)
            assert not reader.done(), "the subscriber stopped iterating"
            while len(got) < len(missed):
                got.append(await asyncio.wait_for(received.get(), TIMEOUT))
            assert [e.id for e in got] == [e.id for e in missed]  # from the log, in order

            # The relay's first send may meet a pooled connection the restart closed.
            delivered: list[UUID] = []
            for attempt in range(1, 6):
                delivered += (await Relay().arun_once(now=later(60 * attempt))).delivered
                if len(delivered) == len(missed):
                    break
            assert delivered == [e.id for e in missed]
            after = await apublish(
                ShopEvent.ORDER_PLACED, {"order_id": 5, "title": "after"}, project_id=PROJECT_A
            )
            # The relay's repeats are dropped: the next thing through is the new event.
            assert (await asyncio.wait_for(received.get(), TIMEOUT)).id == after.id
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
    print(f"{backend}: subscriber back after {probes} probe(s)")


async def test_subscriber_idle_during_a_restart_joins_again(backend, redis_server):
    """A restart between two reads goes unnoticed by RedisChannelLayer: the refresh heals it."""
    bus = get_event_bus()
    async with bus.subscribe([CHANNEL_A]) as events:
        events.refresh_seconds = 0.3
        await bus.send(CHANNEL_A, order(1))
        await next_event(events)
        await asyncio.to_thread(redis_server.restart)  # nobody is reading right now
        received: asyncio.Queue[Event[Any]] = asyncio.Queue()
        reader = asyncio.create_task(drain_into(events, received))
        try:
            await reach(received, bus, CHANNEL_A, seconds=10.0)
            event = order(2)
            await bus.send(CHANNEL_A, event)
            while (got := await asyncio.wait_for(received.get(), TIMEOUT)).id != event.id:
                assert got.payload.order_id == 0  # a late probe
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
