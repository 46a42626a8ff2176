"""Presence: the stores (in memory, and in a real Redis), the hook's answers, the
consumer's presence frames, and ``bus.presence()``."""

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import pytest
import redis.asyncio as aioredis
from django.test import override_settings

from eventbus.bus import EventBus, get_event_bus
from eventbus.exceptions import PresenceError, PresenceHookError
from eventbus.presence import MAX_INFO_BYTES, MemoryStore, RedisStore, info_json
from tests.test_consumers import Client
from tests.testapp.models import Membership

PROJECT = uuid4()
CHANNEL = EventBus.get_project_channel(PROJECT)
AGENT_CHANNEL = EventBus.get_agent_channel(7)
SETTINGS = {
    "CATALOGS": [],
    "AUTHORIZE": "tests.testapp.authorization.may_subscribe",
    "PRESENCE": "tests.testapp.presence.presence",
}


# -- the stores ------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield MemoryStore()
        return
    url = request.getfixturevalue("redis_url")
    client = aioredis.Redis.from_url(url)
    try:
        yield RedisStore(lambda: client)
    finally:
        await client.aclose()


def kinds(changes: list[Any]) -> list[tuple[str, str]]:
    return [(change.kind, change.key) for change in changes]


@pytest.mark.redis
async def test_a_user_with_two_connections_joins_once_and_leaves_once(store):
    info = json.dumps({"name": "ada"})
    assert kinds(await store.join(CHANNEL, [("c1", "1", info)], 30)) == [("join", "1")]
    assert kinds(await store.join(CHANNEL, [("c2", "1", info)], 30)) == []
    presence, pruned = await store.read(CHANNEL)
    assert pruned == []
    assert [(u.key, u.info, u.connections) for u in presence.users] == [("1", {"name": "ada"}, 2)]
    assert kinds(await store.leave(CHANNEL, ["c1"])) == []
    assert kinds(await store.leave(CHANNEL, ["c1"])) == []  # twice: still one leave
    assert kinds(await store.leave(CHANNEL, ["c2"])) == [("leave", "1")]
    assert (await store.read(CHANNEL))[0].users == ()


@pytest.mark.redis
async def test_versions_grow_with_every_change(store):
    joined = await store.join(CHANNEL, [("c1", "1", "{}"), ("c2", "2", "{}")], 30)
    presence, _ = await store.read(CHANNEL)
    left = await store.leave(CHANNEL, ["c1"])
    versions = [change.version for change in joined + left]
    assert versions == sorted(versions) and len(set(versions)) == 3
    # A snapshot's version is its last change's: later changes are above it.
    assert presence.version == joined[-1].version < left[0].version


@pytest.mark.redis
async def test_a_heartbeat_renews_and_an_expired_connection_leaves_once(store):
    await store.join(CHANNEL, [("kept", "1", "{}"), ("dead", "2", "{}")], 0.3)
    deadline = asyncio.get_running_loop().time() + 10
    pruned: list[Any] = []
    while not pruned:  # "kept" is renewed, as its live server does; "dead" is not
        assert asyncio.get_running_loop().time() < deadline, "the dead connection never expired"
        await asyncio.sleep(0.1)
        pruned = await store.join(CHANNEL, [("kept", "1", "{}")], 0.3)
    assert kinds(pruned) == [("leave", "2")]
    presence, again = await store.read(CHANNEL)
    assert again == [] and presence.keys == ["1"]


@pytest.mark.redis
async def test_redis_keeps_nothing_once_everyone_left(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    try:
        store = RedisStore(lambda: client)
        await store.join(CHANNEL, [("c1", "1", "{}")], 30)
        await store.leave(CHANNEL, ["c1"])
        # Only the version counter stays (an hour), so versions keep growing.
        assert [key.decode() async for key in client.scan_iter("eventbus:presence:*")] == [
            f"eventbus:presence:{{{CHANNEL}}}:version"
        ]
    finally:
        await client.aclose()


# -- the hook's answer -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (["x"], "must be a dict or None, not list"),
        ({"when": object()}, "is not JSON-safe"),
        ({"x": float("nan")}, "is not JSON-safe"),
        ({"x": "y" * MAX_INFO_BYTES}, f"over {MAX_INFO_BYTES}"),
    ],
)
def test_a_bad_hook_answer_is_an_error_naming_the_problem(answer, problem):
    with pytest.raises(PresenceHookError, match=problem) as raised:
        info_json(answer, CHANNEL)
    assert isinstance(raised.value, TypeError)
    assert CHANNEL in str(raised.value)


def test_none_means_no_presence_and_a_dict_is_stored_as_json():
    assert info_json(None, CHANNEL) is None
    assert json.loads(info_json({"name": "ada"}, CHANNEL) or "") == {"name": "ada"}


# -- the consumer (in-memory layer) ----------------------------------------------------------

pytestmark_db = pytest.mark.django_db(transaction=True)


@pytest.fixture
def members(django_user_model) -> list[Any]:
    users = []
    for name in ("ada", "bob"):
        user = django_user_model.objects.create(username=name)
        Membership.objects.create(user=user, project_id=PROJECT)
        users.append(user)
    return users


async def subscribed_with_presence(client: Client, channel: str = CHANNEL) -> dict[str, Any]:
    """Subscribe asking for presence; the snapshot (or error) frame that follows."""
    frame = await client.subscribe(channel, presence=True)
    assert frame["type"] == "subscribed"
    return await client.recv()


def user(member: Any) -> dict[str, Any]:
    return {"key": str(member.pk), "info": {"name": member.username}}


@pytestmark_db
@override_settings(EVENTBUS=SETTINGS)
async def test_watchers_get_a_snapshot_then_joins_and_leaves(members):
    ada, bob = members
    async with Client(ada) as watcher:
        snapshot = await subscribed_with_presence(watcher)
        assert snapshot == {
            "type": "presence",
            "channel": CHANNEL,
            "kind": "snapshot",
            "users": [{**user(ada), "connections": 1}],
        }
        async with Client(bob) as other:
            frame = await other.subscribe(CHANNEL)
            assert frame["type"] == "subscribed", frame  # present, no frames
            assert await watcher.recv() == {
                "type": "presence",
                "channel": CHANNEL,
                "kind": "join",
                "user": user(bob),
            }
            assert await other.nothing()
            presence = await get_event_bus().presence(CHANNEL)
            assert [(u.key, u.info, u.connections) for u in presence.users] == sorted(
                [(str(ada.pk), {"name": "ada"}, 1), (str(bob.pk), {"name": "bob"}, 1)]
            )
        assert await watcher.recv() == {
            "type": "presence",
            "channel": CHANNEL,
            "kind": "leave",
            "user": user(bob),
        }
    assert (await get_event_bus().presence(CHANNEL)).users == ()


@pytestmark_db
@override_settings(EVENTBUS=SETTINGS)
async def test_a_user_with_two_tabs_joins_once_and_leaves_when_the_last_closes(members):
    ada, bob = members
    async with Client(ada) as watcher:
        await subscribed_with_presence(watcher)
        tab1, tab2 = Client(bob), Client(bob)
        await tab1.__aenter__()
        await tab2.__aenter__()
        await tab1.subscribe(CHANNEL)
        assert (await watcher.recv())["kind"] == "join"
        await tab2.subscribe(CHANNEL)
        presence = await get_event_bus().presence(CHANNEL)
        assert [u.connections for u in presence.users if u.key == str(bob.pk)] == [2]
        await tab1.__aexit__()
        assert await watcher.nothing()  # one tab left: bob is still here
        await tab2.__aexit__()
        frame = await watcher.recv()
        assert (frame["kind"], frame["user"]["key"]) == ("leave", str(bob.pk))
        assert await watcher.nothing()


@pytestmark_db
@override_settings(EVENTBUS=SETTINGS)
async def test_unsubscribing_leaves_the_presence(members):
    ada, bob = members
    async with Client(ada) as watcher, Client(bob) as other:
        await subscribed_with_presence(watcher)
        await other.subscribe(CHANNEL)
        assert (await watcher.recv())["kind"] == "join"
        await other.send({"action": "unsubscribe", "channel": CHANNEL})
        assert (await other.recv())["type"] == "unsubscribed"
        assert (await watcher.recv())["kind"] == "leave"


@pytestmark_db
@override_settings(EVENTBUS=SETTINGS)
async def test_a_channel_without_presence_says_so_and_has_nobody(django_user_model):
    staff = await django_user_model.objects.acreate(username="staff", is_staff=True)
    async with Client(staff) as client:
        frame = await subscribed_with_presence(client, AGENT_CHANNEL)
        assert (frame["type"], frame["code"], frame["channel"]) == (
            "error",
            "no_presence",
            AGENT_CHANNEL,
        )
        assert (await get_event_bus().presence(AGENT_CHANNEL)).users == ()


@pytestmark_db
@override_settings(EVENTBUS=SETTINGS)
async def test_a_socket_not_allowed_on_the_channel_gets_no_presence(members, django_user_model):
    stranger = await django_user_model.objects.acreate(username="stranger")
    async with Client(members[0]) as member, Client(stranger) as client:
        await subscribed_with_presence(member)
        frame = await client.subscribe(CHANNEL, presence=True)
        assert (frame["type"], frame["code"]) == ("error", "forbidden")
        assert await client.nothing()
        assert (await get_event_bus().presence(CHANNEL)).keys == [str(members[0].pk)]


@pytestmark_db
@pytest.mark.parametrize(
    ("hook", "problem"),
    [("wrong_type", "must be a dict or None, not list"), ("not_json", "is not JSON-safe")],
)
async def test_a_bad_hook_answer_is_logged_and_the_socket_told(members, caplog, hook, problem):
    settings = {**SETTINGS, "PRESENCE": f"tests.testapp.presence.{hook}"}
    with override_settings(EVENTBUS=settings), caplog.at_level(logging.ERROR, "eventbus"):
        async with Client(members[0]) as client:
            frame = await subscribed_with_presence(client)
            assert (frame["type"], frame["code"]) == ("error", "presence_unavailable")
    assert any(problem in str(record.exc_info[1]) for record in caplog.records if record.exc_info)


@pytestmark_db
@override_settings(EVENTBUS=SETTINGS)
@pytest.mark.parametrize("value", ["yes", 1, None])
async def test_presence_must_be_true_or_false(members, value):
    async with Client(members[0]) as client:
        frame = await client.subscribe(CHANNEL, presence=value)
        assert (frame["type"], frame["code"]) == ("error", "invalid_field")
        assert "'presence'" in frame["message"]


@pytestmark_db
@override_settings(EVENTBUS={**SETTINGS, "PRESENCE": None})
async def test_with_presence_off_bus_presence_raises_and_sockets_are_told(members):
    with pytest.raises(PresenceError, match=r"EVENTBUS\['PRESENCE'\]"):
        await get_event_bus().presence(CHANNEL)
    async with Client(members[0]) as client:
        frame = await subscribed_with_presence(client)
        assert (frame["type"], frame["code"]) == ("error", "no_presence")


def test_bus_presence_validates_the_channel() -> None:
    from eventbus.exceptions import InvalidChannelError

    with override_settings(EVENTBUS=SETTINGS), pytest.raises(InvalidChannelError):
        asyncio.run(get_event_bus().presence("no spaces allowed"))
