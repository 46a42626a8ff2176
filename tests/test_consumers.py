"""The WebSocket consumer through Channels' WebsocketCommunicator (protocol, auth, resume)."""

import asyncio
import json
import time
from datetime import timedelta
from typing import Any
from unittest.mock import ANY
from uuid import uuid4

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import override_settings
from django.utils import timezone

from eventbus import access, apublish, consumers
from eventbus.access import get_access_watch
from eventbus.bus import EventBus, get_event_bus
from eventbus.consumers import EventStreamConsumer
from eventbus.fanout import get_fanout
from eventbus.models import EventRecord
from eventbus.relay import Relay
from eventbus.streams import aread, positions_of
from tests.testapp.events import ShopEvent
from tests.testapp.models import Membership

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.db_heavy]

PROJECT = uuid4()
CHANNEL = EventBus.get_project_channel(PROJECT)
SETTINGS = {
    "CATALOGS": [],
    "AUTHORIZE": "tests.testapp.authorization.may_subscribe",
    "WS_REAUTHORIZE_SECONDS": 0.2,
}
RECHECK_BY_HAND = {**SETTINGS, "WS_REAUTHORIZE_SECONDS": 3600}


@pytest.fixture
def member(django_user_model):
    user = django_user_model.objects.create(username="member")
    Membership.objects.create(user=user, project_id=PROJECT)
    return user


class Client:
    """A communicator that speaks JSON and times out instead of hanging."""

    def __init__(self, user: Any, session: Any = None) -> None:
        self.ws = WebsocketCommunicator(EventStreamConsumer.as_asgi(), "/ws/events/")
        self.ws.scope["user"] = user
        if session is not None:
            self.ws.scope["session"] = session

    async def __aenter__(self) -> "Client":
        connected, _ = await self.ws.connect(timeout=5)
        assert connected
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.ws.disconnect()

    async def send(self, frame: Any) -> None:
        await self.ws.send_to(text_data=frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self, timeout: float = 5) -> dict[str, Any]:
        return json.loads(await self.ws.receive_from(timeout=timeout))

    async def nothing(self, timeout: float = 0.2) -> bool:
        return await self.ws.receive_nothing(timeout=timeout)

    async def subscribe(self, channel: str = CHANNEL, **extra: Any) -> dict[str, Any]:
        await self.send({"action": "subscribe", "channel": channel, **extra})
        return await self.recv()


def subscribed(replayed: int = 0, position: int = 0, channel: str = CHANNEL) -> dict[str, Any]:
    return {
        "type": "subscribed",
        "channel": channel,
        "replayed": replayed,
        "epoch": ANY,
        "position": position,
    }


def reset(reason: str, position: int, channel: str = CHANNEL) -> dict[str, Any]:
    return {
        "type": "reset",
        "channel": channel,
        "reason": reason,
        "epoch": ANY,
        "position": position,
    }


async def publish_order(order_id: int, project=PROJECT, **options: Any):
    return await apublish(
        ShopEvent.ORDER_DELETED, {"order_id": order_id}, project_id=project, **options
    )


@override_settings(EVENTBUS=SETTINGS)
async def test_subscribe_then_receive_live_events(member):
    async with Client(member) as client:
        assert await client.subscribe() == subscribed()
        event = await publish_order(1)
        frame = await client.recv()
        assert frame["type"] == "event" and frame["channel"] == CHANNEL
        assert frame["position"] == 1
        assert frame["event"]["id"] == str(event.id)
        assert frame["event"]["payload"] == {"order_id": 1}
        await publish_order(2, project=uuid4())  # another project's channel
        assert await client.nothing()


@override_settings(EVENTBUS=SETTINGS)
async def test_private_fields_never_reach_the_socket(member):
    async with Client(member) as client:
        await client.subscribe()
        await apublish(
            ShopEvent.NOTE_ADDED,
            {"note_id": uuid4(), "text": "hi", "author_email": "secret@example.com"},
            project_id=PROJECT,
        )
        frame = await client.recv()
        assert frame["event"]["payload"]["text"] == "hi"
        assert "author_email" not in frame["event"]["payload"]
        assert "secret@example.com" not in json.dumps(frame)


@override_settings(EVENTBUS=SETTINGS)
async def test_types_filter(member):
    async with Client(member) as client:
        await client.subscribe(types=["order.pl*"])
        await publish_order(1)  # order.deleted: filtered out
        placed = await apublish(
            ShopEvent.ORDER_PLACED, {"order_id": 2, "title": "x"}, project_id=PROJECT
        )
        assert (await client.recv())["event"]["id"] == str(placed.id)
        assert await client.nothing()


@override_settings(EVENTBUS=SETTINGS)
async def test_unsubscribe_stops_events(member):
    async with Client(member) as client:
        await client.subscribe()
        await client.send({"action": "unsubscribe", "channel": CHANNEL})
        assert await client.recv() == {
            "type": "unsubscribed",
            "channel": CHANNEL,
            "reason": "requested",
        }
        await publish_order(1)
        assert await client.nothing()


@override_settings(EVENTBUS=SETTINGS)
async def test_ping(member):
    async with Client(member) as client:
        await client.send({"action": "ping"})
        assert await client.recv() == {"type": "pong"}


BAD_FRAMES = [
    ("not json", "invalid_json", None, None),
    ("[1, 2]", "invalid_json", None, None),
    ({"action": "dance"}, "unknown_action", "dance", None),
    ({"channel": CHANNEL}, "unknown_action", None, CHANNEL),
    ({"action": "subscribe"}, "missing_field", "subscribe", None),
    (
        {"action": "subscribe", "channel": "bad channel!"},
        "invalid_channel",
        "subscribe",
        "bad channel!",
    ),
    ({"action": "subscribe", "channel": "x" * 91}, "invalid_channel", "subscribe", "x" * 91),
    ({"action": "subscribe", "channel": 42}, "invalid_channel", "subscribe", None),
    (
        {"action": "subscribe", "channel": CHANNEL, "since": "yesterday"},
        "invalid_field",
        "subscribe",
        CHANNEL,
    ),
    (
        {"action": "subscribe", "channel": CHANNEL, "types": "order.*"},
        "invalid_field",
        "subscribe",
        CHANNEL,
    ),
    (
        {"action": "subscribe", "channel": CHANNEL, "types": [1]},
        "invalid_field",
        "subscribe",
        CHANNEL,
    ),
    ({"action": "unsubscribe", "channel": CHANNEL}, "not_subscribed", "unsubscribe", CHANNEL),
    (json.dumps({"action": "ping", "pad": "x" * 5000}), "frame_too_large", None, None),
]


@override_settings(EVENTBUS=SETTINGS)
@pytest.mark.parametrize(("frame", "code", "action", "channel"), BAD_FRAMES)
async def test_bad_frames_get_an_error_and_the_connection_stays_up(
    member, frame, code, action, channel
):
    async with Client(member) as client:
        await client.send(frame)
        error = await client.recv()
        assert error["type"] == "error" and error["code"] == code and error["message"]
        assert (error["action"], error["channel"]) == (action, channel)
        await client.send({"action": "ping"})
        assert await client.recv() == {"type": "pong"}


@override_settings(EVENTBUS=SETTINGS)
async def test_binary_frames_are_refused(member):
    async with Client(member) as client:
        await client.ws.send_to(bytes_data=b"\x00\x01")
        assert (await client.recv())["code"] == "binary_not_supported"
        await client.send({"action": "ping"})
        assert await client.recv() == {"type": "pong"}


@override_settings(EVENTBUS=SETTINGS)
async def test_forbidden_channel(member):
    other = EventBus.get_project_channel(uuid4())
    async with Client(member) as client:
        error = await client.subscribe(other)
        assert (error["code"], error["channel"], error["action"]) == (
            "forbidden",
            other,
            "subscribe",
        )
        await publish_order(1, project=uuid4())
        assert await client.nothing()


@override_settings(EVENTBUS={**SETTINGS, "WS_MAX_SUBSCRIPTIONS": 2})
async def test_subscription_limit(member, django_user_model):
    await sync_to_async(django_user_model.objects.filter(pk=member.pk).update)(is_staff=True)
    member.is_staff = True
    async with Client(member) as client:
        for _ in range(2):
            assert (await client.subscribe(EventBus.get_agent_channel(uuid4())))[
                "type"
            ] == "subscribed"
        error = await client.subscribe(EventBus.get_agent_channel(uuid4()))
        assert error["code"] == "too_many_subscriptions"


@override_settings(EVENTBUS={**SETTINGS, "WS_MAX_ERRORS": 3})
async def test_abuse_closes_the_connection(member):
    async with Client(member) as client:
        for _ in range(3):
            await client.send("garbage")
            assert (await client.recv())["code"] == "invalid_json"
        closed = await client.ws.receive_output(timeout=5)
        assert (closed["type"], closed["code"]) == ("websocket.close", 4008)


@override_settings(EVENTBUS={**SETTINGS, "AUTHORIZE": None})
async def test_without_a_hook_anonymous_users_are_refused():
    from django.contrib.auth.models import AnonymousUser

    client = Client(AnonymousUser())
    connected, _ = await client.ws.connect(timeout=5)
    assert connected
    closed = await client.ws.receive_output(timeout=5)
    assert (closed["type"], closed["code"]) == ("websocket.close", 4401)


@override_settings(EVENTBUS={**SETTINGS, "AUTHORIZE": None})
async def test_without_a_hook_signed_in_users_may_subscribe(member):
    async with Client(member) as client:
        assert (await client.subscribe())["type"] == "subscribed"


@override_settings(EVENTBUS=SETTINGS)
async def test_one_bad_client_does_not_affect_another(member):
    async with Client(member) as good, Client(member) as bad:
        await good.subscribe()
        for _ in range(5):
            await bad.send("\x00garbage")
        event = await publish_order(1)
        assert (await good.recv())["event"]["id"] == str(event.id)


# -- resume ---------------------------------------------------------------------


@override_settings(EVENTBUS=SETTINGS)
async def test_resume_replays_missed_events_in_order_then_live(member):
    seen = await publish_order(0)
    missed = [await publish_order(n) for n in range(1, 4)]
    async with Client(member) as client:
        assert (await client.subscribe(since=str(seen.id)))["replayed"] == 3
        assert [(await client.recv())["event"]["id"] for _ in missed] == [str(e.id) for e in missed]
        live = await publish_order(9)
        assert (await client.recv())["event"]["id"] == str(live.id)
        assert await client.nothing()


@override_settings(EVENTBUS=SETTINGS)
async def test_resume_sends_nothing_twice_at_the_seam(member):
    """An event both replayed and then relayed live again reaches the client once."""
    seen = await publish_order(0)
    missed = await publish_order(1)
    async with Client(member) as client:
        await client.subscribe(since=str(seen.id))
        assert (await client.recv())["event"]["id"] == str(missed.id)
        # The relay sending it again, at its position.
        positions = await aread(positions_of, [missed.id])
        await get_event_bus().broadcast([missed], positions)
        assert await client.nothing()


@override_settings(EVENTBUS=SETTINGS)
async def test_resume_does_not_skip_events_committed_out_of_id_order(member):
    """A transaction that began first but committed last is replayed after `since`."""
    with override_settings(EVENTBUS={**SETTINGS, "HAND_OFF_ON_COMMIT": False}):
        slow = await publish_order(1)  # created first, handed off late
    fast = await publish_order(2)  # created second, handed off at once
    await sync_to_async(Relay().run_once)(timezone.now() + timedelta(seconds=60))
    assert slow.id < fast.id
    async with Client(member) as client:
        # The client saw `fast` live and disconnected before `slow` arrived.
        assert (await client.subscribe(since=str(fast.id)))["replayed"] == 1
        assert (await client.recv())["event"]["id"] == str(slow.id)


@override_settings(EVENTBUS=SETTINGS)
async def test_resume_from_an_unknown_event_says_reset(member):
    async with Client(member) as client:
        await client.subscribe(since=str(uuid4()))
        assert await client.recv() == reset("since_unknown", position=0)
        live = await publish_order(1)
        assert (await client.recv())["event"]["id"] == str(live.id)


@override_settings(EVENTBUS=SETTINGS)
async def test_resume_from_a_pruned_event_says_reset(member):
    seen = await publish_order(0)
    await publish_order(1)
    await sync_to_async(EventRecord.objects.filter(id=seen.id).delete)()
    async with Client(member) as client:
        await client.subscribe(since=str(seen.id))
        assert (await client.recv())["reason"] == "since_unknown"


@override_settings(EVENTBUS={**SETTINGS, "RESUME_MAX_EVENTS": 3})
async def test_too_many_missed_events_says_reset(member):
    seen = await publish_order(0)
    for n in range(4):
        await publish_order(n)
    async with Client(member) as client:
        assert (await client.subscribe(since=str(seen.id)))["replayed"] == 0
        assert await client.recv() == reset("too_many_missed", position=5)


# -- access that ends while the socket is open ------------------------------------


@override_settings(EVENTBUS=SETTINGS)
async def test_lost_membership_unsubscribes_within_the_reauthorize_interval(member):
    async with Client(member) as client:
        await client.subscribe()
        await sync_to_async(Membership.objects.filter(user=member).delete)()
        frame = await client.recv(timeout=2)
        assert frame == {"type": "unsubscribed", "channel": CHANNEL, "reason": "forbidden"}
        await publish_order(1)
        assert await client.nothing()


@override_settings(EVENTBUS=SETTINGS)
async def test_logout_closes_the_socket_within_the_reauthorize_interval(member):
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    def login() -> SessionStore:
        session = SessionStore()
        session[SESSION_KEY] = str(member.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = member.get_session_auth_hash()
        session.save()
        return session

    session = await sync_to_async(login)()
    async with Client(member, session=session) as client:
        await client.subscribe()
        await asyncio.sleep(0.4)
        assert await client.nothing()  # still signed in: stays open
        await sync_to_async(SessionStore(session_key=session.session_key).flush)()  # logout
        closed = await client.ws.receive_output(timeout=2)
        assert (closed["type"], closed["code"]) == ("websocket.close", 4401)


def signed_in_session(user: Any) -> Any:
    """A real session of ``user``, as ``login()`` leaves it (the hash of its password)."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    return session


def change_password(user: Any) -> None:
    fresh = get_user_model().objects.get(pk=user.pk)
    fresh.set_password("a new password")
    fresh.save()


def deactivate(user: Any) -> None:
    get_user_model().objects.filter(pk=user.pk).update(is_active=False)


def delete(user: Any) -> None:
    get_user_model().objects.filter(pk=user.pk).delete()


@override_settings(EVENTBUS=SETTINGS)
@pytest.mark.parametrize("change", [change_password, deactivate, delete])
async def test_account_changes_close_the_socket_within_the_reauthorize_interval(member, change):
    """The scope's user is the one loaded at connect; the recheck must load it again."""
    session = await sync_to_async(signed_in_session)(member)
    async with Client(member, session=session) as client:
        await client.subscribe()
        await asyncio.sleep(0.4)
        assert await client.nothing()  # unchanged: stays open
        started = time.monotonic()
        await sync_to_async(change)(member)
        closed = await client.ws.receive_output(timeout=2)
        assert (closed["type"], closed["code"]) == ("websocket.close", 4401)
        assert time.monotonic() - started <= SETTINGS["WS_REAUTHORIZE_SECONDS"] + 1


@override_settings(EVENTBUS=SETTINGS)
@pytest.mark.parametrize("change", [deactivate, delete])
async def test_account_changes_close_sockets_without_a_session_too(member, change):
    async with Client(member) as client:
        await client.subscribe()
        await sync_to_async(change)(member)
        closed = await client.ws.receive_output(timeout=2)
        assert (closed["type"], closed["code"]) == ("websocket.close", 4401)


@override_settings(EVENTBUS=RECHECK_BY_HAND)
async def test_the_recheck_loads_each_user_once(member):
    sessions = [await sync_to_async(signed_in_session)(member) for _ in range(3)]
    from django.db import connection

    queries: list[str] = []

    def count(execute: Any, sql: str, *args: Any) -> Any:
        queries.append(sql)
        return execute(sql, *args)

    def check() -> list[access.Verdict]:
        with connection.execute_wrapper(count):
            return access._verdicts(
                [(s, member, (CHANNEL,)) for s in sessions], access.authorize_hook()
            )

    verdicts = await sync_to_async(check)()
    assert verdicts == [access.Verdict()] * 3
    user_table = get_user_model()._meta.db_table
    assert sum(f'FROM "{user_table}"' in q for q in queries) == 1


@override_settings(EVENTBUS=SETTINGS)
async def test_users_other_than_members_are_refused(django_user_model):
    stranger = await sync_to_async(get_user_model().objects.create)(username="stranger")
    async with Client(stranger) as client:
        assert (await client.subscribe())["code"] == "forbidden"


# -- one process, many sockets ------------------------------------------------------


@override_settings(EVENTBUS=SETTINGS)
async def test_many_sockets_share_one_group_membership(member):
    layer = get_event_bus().layer
    async with Client(member) as a, Client(member) as b, Client(member) as c:
        for client in (a, b, c):
            await client.subscribe()
        fanout = get_fanout(layer)
        assert list(layer.groups[CHANNEL]) == [fanout.channel_name]
        assert len(fanout.members(CHANNEL)) == 3
        event = await publish_order(1)
        for client in (a, b, c):
            assert (await client.recv())["event"]["id"] == str(event.id)
        await b.send({"action": "unsubscribe", "channel": CHANNEL})
        await b.recv()
        assert len(fanout.members(CHANNEL)) == 2
    assert fanout.members(CHANNEL) == []
    assert not layer.groups.get(CHANNEL)


def replay_with_live_events(monkeypatch, before: list[int], after: list[int]) -> None:
    """Publish live events while the consumer reads its replay from the log."""
    original = consumers.load_replay

    def load(*args: Any) -> Any:
        for n in before:
            async_to_sync(publish_order)(n)
        found = original(*args)
        for n in after:
            async_to_sync(publish_order)(n)
        time.sleep(0.2)  # the fan-out hands them to the subscribing socket meanwhile
        return found

    monkeypatch.setattr(consumers, "load_replay", load)


@override_settings(EVENTBUS=SETTINGS)
async def test_live_events_during_the_replay_follow_it_each_once(member, monkeypatch):
    seen = await publish_order(0)
    missed = await publish_order(1)
    replay_with_live_events(monkeypatch, before=[2], after=[3])
    async with Client(member) as client:
        assert (await client.subscribe(since=str(seen.id)))["replayed"] == 2
        got = [(await client.recv())["event"]["payload"]["order_id"] for _ in range(3)]
        assert got == [1, 2, 3]  # replay (1, 2), then live (2 again is dropped, 3)
        assert await client.nothing()
    assert missed.payload.order_id == 1


@override_settings(EVENTBUS={**SETTINGS, "RESUME_MAX_EVENTS": 2})
async def test_too_many_live_events_during_the_replay_says_reset(member, monkeypatch):
    seen = await publish_order(0)
    replay_with_live_events(monkeypatch, before=[], after=[1, 2, 3])
    async with Client(member) as client:
        assert await client.subscribe(since=str(seen.id)) == subscribed(position=1)
        assert await client.recv() == reset("too_many_missed", position=4)
        assert await client.nothing()
        live = await publish_order(4)
        assert (await client.recv())["event"]["id"] == str(live.id)


@override_settings(EVENTBUS=SETTINGS)
async def test_a_consumer_that_crashes_leaves_its_groups(member, monkeypatch):
    def broken(*args: Any) -> Any:
        raise RuntimeError("the log is unreadable")

    monkeypatch.setattr(consumers, "load_replay", broken)
    seen = await publish_order(0)
    client = Client(member)
    await client.__aenter__()
    await client.send({"action": "subscribe", "channel": CHANNEL, "since": str(seen.id)})
    with pytest.raises(RuntimeError, match="the log is unreadable"):
        await client.ws.receive_output(timeout=5)
    assert get_fanout(get_event_bus().layer).members(CHANNEL) == []


# -- rechecking access, once per process ----------------------------------------------

hook_calls: list[tuple[Any, str]] = []


def counting_hook(user: Any, channel: str) -> bool:
    hook_calls.append((user.pk, channel))
    return True


def failing_hook(user: Any, channel: str) -> bool:
    if hook_calls:
        raise RuntimeError("the membership table is locked")
    hook_calls.append((user.pk, channel))
    return True


@override_settings(EVENTBUS={**RECHECK_BY_HAND, "AUTHORIZE": "tests.test_consumers.counting_hook"})
async def test_the_recheck_asks_once_per_user_and_channel_and_reads_each_session_once(
    member, django_user_model, monkeypatch
):
    other = await sync_to_async(django_user_model.objects.create)(username="other")
    sessions_read: list[Any] = []
    original = access.session_still_valid

    def counting_session_check(session: Any, user: Any, users: Any = None) -> bool:
        sessions_read.append(session)
        return original(session, user, users)

    monkeypatch.setattr(access, "session_still_valid", counting_session_check)
    second = uuid4()
    async with (
        Client(member) as a,
        Client(member) as b,
        Client(member) as c,
        Client(other) as d,
    ):
        for client in (a, b, c):
            await client.subscribe()
            await client.subscribe(EventBus.get_project_channel(second))
        await d.subscribe()
        hook_calls.clear()
        await get_access_watch().check_now()
        # 4 sockets, 7 subscriptions: 3 distinct (user, channel) pairs, 2 users.
        assert sorted(hook_calls, key=str) == sorted(
            [
                (member.pk, CHANNEL),
                (member.pk, EventBus.get_project_channel(second)),
                (other.pk, CHANNEL),
            ],
            key=str,
        )
        assert len(sessions_read) == 2
    hook_calls.clear()


@override_settings(EVENTBUS={**RECHECK_BY_HAND, "AUTHORIZE": "tests.test_consumers.failing_hook"})
async def test_a_hook_that_fails_during_the_recheck_changes_nothing(member, caplog):
    hook_calls.clear()
    async with Client(member) as client:
        await client.subscribe()  # the first call says yes; later ones raise
        with caplog.at_level("ERROR", logger="eventbus.ws"):
            await get_access_watch().check_now()
        assert "The AUTHORIZE hook failed" in caplog.text
        assert await client.nothing()  # no `unsubscribed`
        event = await publish_order(1)
        assert (await client.recv())["event"]["id"] == str(event.id)
    hook_calls.clear()


@override_settings(EVENTBUS={**SETTINGS, "RESUME_MAX_EVENTS": 2})
async def test_too_many_live_events_while_the_replay_goes_out_says_reset(member, monkeypatch):
    seen = await publish_order(0)
    original = EventStreamConsumer._send_text

    async def send_text(self: EventStreamConsumer, text: str) -> None:
        await original(self, text)
        if '"type":"subscribed"' in text:  # live events arrive while it is being sent
            for n in range(3):
                self.on_message(
                    {
                        "channel": CHANNEL,
                        "id": str(uuid4()),
                        "event_type": "order.deleted",
                        "event": json.dumps({"order_id": 100 + n}),
                    }
                )

    monkeypatch.setattr(EventStreamConsumer, "_send_text", send_text)
    async with Client(member) as client:
        assert (await client.subscribe(since=str(seen.id)))["type"] == "subscribed"
        assert await client.recv() == reset("too_many_missed", position=1)
        assert await client.nothing()


@override_settings(EVENTBUS=SETTINGS)
async def test_a_subscription_ended_while_joining_does_not_stay_in_the_group(member, monkeypatch):
    from eventbus.fanout import LocalFanout

    original = LocalFanout.join

    async def join(self: LocalFanout, group: str, joiner: Any) -> None:
        joiner.subscriptions.pop(group, None)  # e.g. access revoked meanwhile
        await original(self, group, joiner)

    monkeypatch.setattr(LocalFanout, "join", join)
    async with Client(member) as client:
        await client.send({"action": "subscribe", "channel": CHANNEL})
        assert await client.nothing()
        assert get_fanout(get_event_bus().layer).members(CHANNEL) == []


# -- hostile clients ------------------------------------------------------------------


async def expect_close(client: Client, code: int, timeout: float = 5) -> None:
    """Skip the frames before the close (error frames), then check its code."""
    deadline = time.monotonic() + timeout
    while True:
        output = await client.ws.receive_output(timeout=max(0.1, deadline - time.monotonic()))
        if output["type"] == "websocket.close":
            assert output["code"] == code
            return


DEEP = [
    "[" * 2000 + "]" * 2000,
    '{"":[' * 580 + "]}" * 580,  # 1,160 levels in 4,060 bytes
    "[" * 4000,  # unterminated as well
]


@override_settings(EVENTBUS=SETTINGS)
@pytest.mark.parametrize("frame", DEEP, ids=["lists", "objects", "unterminated"])
async def test_deeply_nested_json_is_invalid_json_and_the_connection_stays_up(member, frame):
    assert len(frame.encode()) <= 4096
    async with Client(member) as client:
        await client.send(frame)
        error = await client.recv()
        assert (error["type"], error["code"]) == ("error", "invalid_json")
        await client.send({"action": "ping"})
        assert await client.recv() == {"type": "pong"}


@override_settings(EVENTBUS={**SETTINGS, "WS_FRAMES_PER_MINUTE": 5, "WS_MAX_ERRORS": 4})
async def test_frames_over_the_rate_get_rate_limited_then_a_close(member):
    async with Client(member) as client:
        for _ in range(5):
            await client.send({"action": "ping"})
            assert await client.recv() == {"type": "pong"}
        for _ in range(3):
            await client.send({"action": "ping"})
            error = await client.recv()
            assert (error["code"], error["action"]) == ("rate_limited", None)
        await client.send({"action": "ping"})
        await expect_close(client, 4429)


@override_settings(EVENTBUS={**SETTINGS, "WS_SUBSCRIBES_PER_MINUTE": 2})
async def test_subscribes_over_the_rate_get_rate_limited(member):
    async with Client(member) as client:
        for _ in range(2):
            assert (await client.subscribe())["type"] == "subscribed"
        error = await client.subscribe()
        assert (error["code"], error["action"], error["channel"]) == (
            "rate_limited",
            "subscribe",
            CHANNEL,
        )
        await client.send({"action": "ping"})  # other frames still pass
        assert await client.recv() == {"type": "pong"}


@override_settings(EVENTBUS={**SETTINGS, "WS_MAX_CONNECTIONS_PER_USER": 2})
async def test_connections_per_user_are_capped(member, django_user_model):
    other = await sync_to_async(django_user_model.objects.create)(username="other")
    async with Client(member) as a, Client(member) as b:
        third = Client(member)
        connected, _ = await third.ws.connect(timeout=5)
        assert connected
        await expect_close(third, 4429)
        async with Client(other) as c:  # another user is not affected
            await c.send({"action": "ping"})
            assert await c.recv() == {"type": "pong"}
        for client in (a, b):
            await client.send({"action": "ping"})
            assert await client.recv() == {"type": "pong"}
    async with Client(member) as again:  # a closed socket frees its place
        await again.send({"action": "ping"})
        assert await again.recv() == {"type": "pong"}


def anonymous_client(ip: str) -> Client:
    from django.contrib.auth.models import AnonymousUser

    client = Client(AnonymousUser())
    client.ws.scope["client"] = (ip, 50000)
    return client


@override_settings(EVENTBUS={**SETTINGS, "WS_MAX_CONNECTIONS_PER_IP": 2})
async def test_anonymous_connections_per_ip_are_capped():
    async with anonymous_client("10.0.0.1"), anonymous_client("10.0.0.1"):
        third = anonymous_client("10.0.0.1")
        assert (await third.ws.connect(timeout=5))[0]
        await expect_close(third, 4429)
        async with anonymous_client("10.0.0.2") as elsewhere:
            await elsewhere.send({"action": "ping"})
            assert await elsewhere.recv() == {"type": "pong"}


@override_settings(EVENTBUS={**SETTINGS, "WS_CONNECTS_PER_MINUTE": 3})
async def test_reconnect_storms_are_throttled(member):
    for _ in range(3):
        async with Client(member) as client:
            await client.send({"action": "ping"})
            assert await client.recv() == {"type": "pong"}
    storm = Client(member)
    assert (await storm.ws.connect(timeout=5))[0]
    await expect_close(storm, 4429)


@override_settings(EVENTBUS={**SETTINGS, "WS_ANONYMOUS_MAX_FORBIDDEN": 2})
async def test_anonymous_sockets_with_nothing_allowed_are_closed():
    async with anonymous_client("10.0.0.1") as client:
        for _ in range(2):
            assert (await client.subscribe())["code"] == "forbidden"
        await expect_close(client, 4403)


@override_settings(EVENTBUS={**SETTINGS, "WS_ANONYMOUS_MAX_FORBIDDEN": 2})
async def test_signed_in_users_are_not_closed_for_forbidden_channels(member):
    async with Client(member) as client:
        for _ in range(3):
            assert (await client.subscribe(EventBus.get_project_channel(uuid4())))[
                "code"
            ] == "forbidden"
        assert (await client.subscribe())["type"] == "subscribed"


@override_settings(EVENTBUS={**SETTINGS, "WS_SUBSCRIBE_TIMEOUT": 0.3})
async def test_sockets_that_never_subscribe_are_closed(member):
    async with Client(member) as idle, Client(member) as busy:
        await busy.subscribe()
        await idle.send({"action": "ping"})  # pings alone do not count
        assert await idle.recv() == {"type": "pong"}
        await expect_close(idle, 4410, timeout=2)
        await asyncio.sleep(0.3)
        await busy.send({"action": "ping"})
        assert await busy.recv() == {"type": "pong"}


@override_settings(EVENTBUS=SETTINGS)
async def test_brackets_inside_strings_do_not_count_as_nesting(member):
    async with Client(member) as client:
        frame = await client.subscribe(types=["[[[[[[[[[[" * 2, "{{{{{{{{{{" * 2, '\\"[[[[[[[[[['])
        assert frame["type"] == "subscribed"
        deeper = {"action": "ping", "x": [[[[[[[[[[[[[[[[["too deep"]]]]]]]]]]]]]]]]]}
        await client.send(deeper)
        assert (await client.recv())["code"] == "invalid_json"
        await client.send({"action": "ping", "x": [[[[[[[[[[[[[[["fine"]]]]]]]]]]]]]]]})
        assert await client.recv() == {"type": "pong"}


# -- resuming by position -------------------------------------------------------------


@override_settings(EVENTBUS=SETTINGS)
async def test_resume_by_position_sends_exactly_the_events_after_it_then_live(member):
    events = [await publish_order(n) for n in range(1, 6)]  # positions 1..5
    async with Client(member) as client:
        first = await client.subscribe()
        assert first == subscribed(position=5)
        epoch = first["epoch"]
        assert epoch  # the channel has events: its stream has an epoch
    async with Client(member) as client:
        assert await client.subscribe(position=2, epoch=epoch) == subscribed(replayed=3, position=2)
        frames = [await client.recv() for _ in range(3)]
        assert [(f["position"], f["event"]["id"]) for f in frames] == [
            (n, str(events[n - 1].id)) for n in (3, 4, 5)
        ]
        live = await publish_order(6)
        frame = await client.recv()
        assert (frame["position"], frame["event"]["id"]) == (6, str(live.id))
        assert await client.nothing()


@override_settings(EVENTBUS=SETTINGS)
async def test_resume_from_the_head_replays_nothing_and_misses_nothing(member):
    await publish_order(1)
    async with Client(member) as client:
        assert await client.subscribe(position=1) == subscribed(replayed=0, position=1)
        live = await publish_order(2)
        assert (await client.recv())["event"]["id"] == str(live.id)


@pytest.mark.parametrize(
    ("resume", "reason"),
    [
        ({"position": 7}, "position_unknown"),  # past the head: nothing vouches for it
        ({"position": 1, "epoch": "0000dead"}, "epoch_changed"),  # another stream
    ],
)
@override_settings(EVENTBUS=SETTINGS)
async def test_a_resume_point_the_server_cannot_vouch_for_says_reset(member, resume, reason):
    await publish_order(1)
    await publish_order(2)
    async with Client(member) as client:
        assert await client.subscribe(**resume) == subscribed(position=2)
        assert await client.recv() == reset(reason, position=2)
        live = await publish_order(3)
        frame = await client.recv()
        assert (frame["position"], frame["event"]["id"]) == (3, str(live.id))


@override_settings(EVENTBUS=SETTINGS)
async def test_a_resume_across_pruned_events_says_reset(member):
    events = [await publish_order(n) for n in range(1, 5)]
    await sync_to_async(EventRecord.objects.filter(id=events[1].id).delete)()  # position 2
    async with Client(member) as client:
        await client.subscribe(position=1)
        assert await client.recv() == reset("pruned", position=4)
        assert await client.nothing()


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ({"position": -1}, "'position' must be a whole number"),
        ({"position": "3"}, "'position' must be a whole number"),
        ({"position": True}, "'position' must be a whole number"),
        ({"position": 2**63}, "'position' must be a whole number"),
        ({"position": 1.5}, "'position' must be a whole number"),
        ({"epoch": 12}, "'epoch' must be the epoch"),
        ({"epoch": "x" * 17}, "'epoch' must be the epoch"),
        ({"position": 1, "since": str(uuid4())}, "Give 'position' or 'since', not both"),
    ],
)
@override_settings(EVENTBUS=SETTINGS)
async def test_bad_resume_points_get_an_error_naming_the_field(member, frame, message):
    async with Client(member) as client:
        answer = await client.subscribe(**frame)
        assert (answer["type"], answer["code"]) == ("error", "invalid_field")
        assert message in answer["message"]
        assert CHANNEL not in get_fanout(get_event_bus().layer).cursor.channels


@override_settings(EVENTBUS=SETTINGS)
async def test_an_event_whose_hand_off_failed_is_not_overtaken_by_a_newer_one(member, monkeypatch):
    """Issue 11, defects 2 and 3: the older event's send fails and the relay retries it
    later; the newer one goes out at once. The socket still sends them in position
    order (the gap is filled from the log), once each, and a resume from the newer one's
    position skips nothing."""
    from eventbus import layers

    real = layers.group_send_many
    fail_next = [True]

    async def flaky(layer: Any, sends: Any) -> None:
        if fail_next and fail_next.pop():
            raise ConnectionError("Redis is restarting")
        await real(layer, sends)

    monkeypatch.setattr("eventbus.bus.group_send_many", flaky)
    async with Client(member) as client:
        await client.subscribe()
        older = await publish_order(1)  # position 1: its hand-off fails
        newer = await publish_order(2)  # position 2: sent at once
        frames = [await client.recv(), await client.recv()]
        assert [(f["position"], f["event"]["id"]) for f in frames] == [
            (1, str(older.id)),
            (2, str(newer.id)),
        ]
        report = await Relay().arun_once(timezone.now() + timedelta(seconds=60))
        assert report.delivered == [older.id]  # the retry reaches Redis...
        assert await client.nothing()  # ...and the socket, past it already, drops it
    async with Client(member) as client:
        assert await client.subscribe(position=1) == subscribed(replayed=1, position=1)
        assert (await client.recv())["event"]["id"] == str(newer.id)


@override_settings(EVENTBUS=SETTINGS)
async def test_a_subscribe_while_redis_is_away_gets_an_error_and_the_socket_stays_up(
    member, monkeypatch
):
    """Found by the chaos suite: joining the group raised a connection error, which ended
    the socket without a close frame (a traceback under uvicorn)."""
    from eventbus.fanout import LocalFanout

    real_join = LocalFanout.join
    away = [True]

    async def join(self: LocalFanout, group: str, member: Any) -> Any:
        if away and away.pop():
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379")
        return await real_join(self, group, member)

    monkeypatch.setattr(LocalFanout, "join", join)
    async with Client(member) as client:
        answer = await client.subscribe()
        assert (answer["type"], answer["code"], answer["action"]) == (
            "error",
            "unavailable",
            "subscribe",
        )
        assert await client.subscribe() == subscribed()  # Redis is back: it works
        event = await publish_order(1)
        assert (await client.recv())["event"]["id"] == str(event.id)


# -- the send path of frames ------------------------------------------------------------


class SessionSends:
    """Channels' session wrapper, recording the types of the messages it is given."""

    def __init__(self, monkeypatch) -> None:
        from channels.sessions import InstanceSessionWrapper

        self.types: list[str] = []
        real = InstanceSessionWrapper.send

        async def send(wrapper: Any, message: dict[str, Any]) -> None:
            self.types.append(message["type"])
            await real(wrapper, message)

        monkeypatch.setattr(InstanceSessionWrapper, "send", send)


async def behind_session_middleware(consumer: Any, user: Any) -> WebsocketCommunicator:
    """A communicator to ``consumer`` behind Channels' session middleware, signed in."""
    from channels.sessions import CookieMiddleware, SessionMiddleware
    from django.test import Client as HttpClient

    def sign_in() -> str:
        http = HttpClient()
        http.force_login(user)
        return f"sessionid={http.cookies['sessionid'].value}"

    cookie = await sync_to_async(sign_in)()
    ws = WebsocketCommunicator(
        CookieMiddleware(SessionMiddleware(consumer)),
        "/ws/events/",
        headers=[(b"cookie", cookie.encode())],
    )
    ws.scope["user"] = user
    return ws


@override_settings(EVENTBUS=SETTINGS)
async def test_frames_go_past_the_session_wrapper_which_passes_them_through(member, monkeypatch):
    seen = SessionSends(monkeypatch)
    client = Client(member)
    client.ws = await behind_session_middleware(EventStreamConsumer.as_asgi(), member)
    async with client:
        assert await client.subscribe() == subscribed()
        event = await publish_order(1)
        frame = await client.recv()
        assert (frame["type"], frame["event"]["id"]) == ("event", str(event.id))
    # The handshake still goes through it (where it saves the session); frames do not.
    assert seen.types == ["websocket.accept"]


class SendingConsumer(EventStreamConsumer):
    async def send(self, text_data: Any = None, bytes_data: Any = None, close: Any = False) -> Any:
        self.sent = [*getattr(self, "sent", []), json.loads(text_data)["type"]]
        await super().send(text_data=text_data, bytes_data=bytes_data, close=close)


@override_settings(EVENTBUS=SETTINGS)
async def test_a_subclass_that_overrides_send_gets_every_frame(member, monkeypatch):
    seen = SessionSends(monkeypatch)
    client = Client(member)
    client.ws = await behind_session_middleware(SendingConsumer.as_asgi(), member)
    async with client:
        await client.subscribe()
        await publish_order(1)
        assert (await client.recv())["type"] == "event"
    assert seen.types == ["websocket.accept", "websocket.send", "websocket.send"]


def test_a_session_wrapper_that_acts_on_frames_is_not_skipped():
    from channels.sessions import InstanceSessionWrapper

    async def server_send(message: dict[str, Any]) -> None: ...

    class SavingOnFrames(InstanceSessionWrapper):
        save_message_types = ["http.response.start", "websocket.send"]

    scope = {"type": "websocket", "cookies": {}}
    plain = InstanceSessionWrapper(scope, server_send)
    assert consumers._past_session_wrappers(plain.send) is server_send
    saving = SavingOnFrames(scope, plain.send)
    assert consumers._past_session_wrappers(saving.send) == saving.send


@override_settings(EVENTBUS=SETTINGS)
async def test_a_subscribed_socket_runs_in_one_task(member):
    """Each message is received and dispatched in the socket's own task: no task more per
    socket waiting on ``receive()``, as Channels' consumers hold (memory per idle socket)."""
    async with Client(member) as first:
        await first.subscribe()  # the process's shared tasks (fan-out, recheck) are up
        before = len(asyncio.all_tasks())
        async with Client(member) as a, Client(member) as b:
            await a.subscribe()
            await b.subscribe()
            assert len(asyncio.all_tasks()) - before == 2  # the communicators' app tasks
            event = await publish_order(1)
            for client in (first, a, b):
                assert (await client.recv())["event"]["id"] == str(event.id)
