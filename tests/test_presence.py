"""Presence: the stores (in memory, and in a real Redis), the hook's answers, the
consumer's presence frames, and ``bus.presence()``."""

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any
from uuid import uuid4

import pytest
import redis
import redis.asyncio as aioredis
from django.test import override_settings
from django.utils.module_loading import import_string
from redis.backoff import NoBackoff
from redis.retry import Retry

from eventbus.bus import EventBus, get_event_bus
from eventbus.exceptions import PresenceError, PresenceHookError
from eventbus.layers import group_host
from eventbus.presence import (
    MAX_INFO_BYTES,
    MemoryStore,
    PresenceTracker,
    RedisStore,
    info_json,
    store_for,
)
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
        yield RedisStore(lambda channel: 0, lambda host: client)
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
        store = RedisStore(lambda channel: 0, lambda host: client)
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


def db_tests(test: Any) -> Any:
    """Tests that read the database (users, memberships): run on PostgreSQL too."""
    return pytest.mark.db_heavy(pytest.mark.django_db(transaction=True)(test))


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


@db_tests
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


@db_tests
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


@db_tests
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


@db_tests
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


@db_tests
@override_settings(EVENTBUS=SETTINGS)
async def test_a_socket_not_allowed_on_the_channel_gets_no_presence(members, django_user_model):
    stranger = await django_user_model.objects.acreate(username="stranger")
    async with Client(members[0]) as member, Client(stranger) as client:
        await subscribed_with_presence(member)
        frame = await client.subscribe(CHANNEL, presence=True)
        assert (frame["type"], frame["code"]) == ("error", "forbidden")
        assert await client.nothing()
        assert (await get_event_bus().presence(CHANNEL)).keys == [str(members[0].pk)]


@db_tests
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


@db_tests
@override_settings(EVENTBUS=SETTINGS)
@pytest.mark.parametrize("value", ["yes", 1, None])
async def test_presence_must_be_true_or_false(members, value):
    async with Client(members[0]) as client:
        frame = await client.subscribe(CHANNEL, presence=value)
        assert (frame["type"], frame["code"]) == ("error", "invalid_field")
        assert "'presence'" in frame["message"]


@db_tests
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


# -- across server processes: a real Redis, real uvicorn processes -----------------------------

# Short on purpose: a SIGKILLed server's users must be gone within TTL + one heartbeat.
FAST = {
    "PRESENCE": "tests.testapp.presence.presence",
    "PRESENCE_HEARTBEAT_SECONDS": 0.3,
    "PRESENCE_TTL_SECONDS": 1.5,
}


async def two_uvicorns(factory: Any, redis_url: str) -> tuple[Any, Any]:
    from tests.test_e2e import server_env

    env = server_env(redis_url, **FAST)
    return await asyncio.gather(
        asyncio.to_thread(factory, env=env, server="uvicorn"),
        asyncio.to_thread(factory, env=env, server="uvicorn"),
    )


async def watch(server: Any, session: str, channel: str) -> Any:
    """A socket subscribed to ``channel`` with presence; returns it and the snapshot."""
    from tests.test_e2e import Ws

    ws = await Ws.open(server, session)
    await ws.send({"action": "subscribe", "channel": channel, "presence": True})
    assert (await ws.recv())["type"] == "subscribed"
    snapshot = await ws.recv()
    assert snapshot["kind"] == "snapshot"
    return ws, snapshot


async def quiet(ws: Any, seconds: float) -> bool:
    """Whether ``ws`` gets no frame for ``seconds``."""
    try:
        frame = await ws.recv(timeout=seconds)
    except TimeoutError:
        return True
    raise AssertionError(f"unexpected frame {frame}")


@pytest.fixture
def presence_layer(redis_url: str) -> Iterator[str]:
    """The test process on the servers' Redis, with presence on (for bus.presence)."""
    from tests.test_e2e import LAYER

    layers = {"default": {"BACKEND": LAYER, "CONFIG": {"hosts": [redis_url]}}}
    with override_settings(CHANNEL_LAYERS=layers, EVENTBUS={**SETTINGS, **FAST}):
        yield redis_url


@pytest.mark.once
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
async def test_two_servers_share_presence_and_a_killed_servers_users_leave(
    asgi_server_factory, presence_layer
):
    """Users on two uvicorn processes see each other; a user with tabs on both leaves once,
    when the last closes; SIGKILL one server and its users leave (pruned by the other
    server's heartbeat within TTL + one heartbeat), with no ghost left in Redis."""
    from asgiref.sync import sync_to_async

    from tests.test_e2e import Ws, member_session

    project = uuid4()
    channel = EventBus.get_project_channel(project)
    server_a, server_b = await two_uvicorns(asgi_server_factory, presence_layer)
    ada, bob, cyd = [await sync_to_async(member_session)(project) for _ in range(3)]
    watcher, snapshot = await watch(server_a, ada, channel)
    (ada_key,) = [u["key"] for u in snapshot["users"]]
    bob_on_b, bob_snapshot = await watch(server_b, bob, channel)
    assert [u["connections"] for u in bob_snapshot["users"]] == [1, 1]
    bob_key = (await watcher.recv())["user"]["key"]  # bob's join, from the other server
    assert bob_key != ada_key
    # Bob's second tab, on server A: present twice, joined once.
    bob_on_a = await Ws.open(server_a, bob)
    await bob_on_a.subscribe(channel)
    cyd_on_b = await Ws.open(server_b, cyd)
    await cyd_on_b.subscribe(channel)
    frame = await watcher.recv()
    cyd_key = frame["user"]["key"]
    assert frame["kind"] == "join" and cyd_key not in (ada_key, bob_key)
    presence = await get_event_bus().presence(channel)
    assert {u.key: u.connections for u in presence.users} == {ada_key: 1, bob_key: 2, cyd_key: 1}
    assert presence.users[0].info["name"].startswith("member-")

    server_b.kill()  # no goodbye from B: its connections expire
    frame = await watcher.recv(timeout=10)
    assert (frame["kind"], frame["user"]["key"]) == ("leave", cyd_key)
    presence = await get_event_bus().presence(channel)  # bob is still here, on A
    assert {u.key: u.connections for u in presence.users} == {ada_key: 1, bob_key: 1}
    await bob_on_a.close()  # bob's last tab
    frame = await watcher.recv()
    assert (frame["kind"], frame["user"]["key"]) == ("leave", bob_key)
    assert await quiet(watcher, 3 * FAST["PRESENCE_TTL_SECONDS"])  # every leave exactly once
    assert (await get_event_bus().presence(channel)).keys == [ada_key]
    await watcher.close()
    for client in (bob_on_b, cyd_on_b):
        await client.close()
    assert "Traceback" not in server_a.log_text()


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "backend",
    ["channels_redis.core.RedisChannelLayer", "channels_redis.pubsub.RedisPubSubChannelLayer"],
)
async def test_after_redis_loses_everything_the_next_heartbeat_brings_users_back(
    presence_layer, redis_server, backend
):
    """A Redis restarted without its data (or flushed): each server process's next
    heartbeat joins its connections again. Both channels_redis layers keep presence."""
    layers = {"default": {"BACKEND": backend, "CONFIG": {"hosts": [presence_layer]}}}
    with override_settings(CHANNEL_LAYERS=layers):
        assert backend.endswith(type(get_event_bus().layer).__name__)
        await _heartbeat_after_flush(redis_server)


async def _heartbeat_after_flush(redis_server: Any) -> None:
    from eventbus.presence import get_presence_tracker

    layer = get_event_bus().layer
    tracker = get_presence_tracker(layer)
    await tracker.join(CHANNEL, "conn-1", "1", '{"name": "ada"}')
    try:
        assert (await get_event_bus().presence(CHANNEL)).keys == ["1"]
        redis_server.flush()
        assert (await get_event_bus().presence(CHANNEL)).keys == []
        await tracker.heartbeat()
        presence = await get_event_bus().presence(CHANNEL)
        assert [(u.key, u.info) for u in presence.users] == [("1", {"name": "ada"})]
    finally:
        await tracker.leave(CHANNEL, "conn-1")
    assert (await get_event_bus().presence(CHANNEL)).keys == []


@db_tests
@override_settings(EVENTBUS={**SETTINGS, "WS_REAUTHORIZE_SECONDS": 0.2})
async def test_a_user_who_loses_access_leaves_the_presence(members):
    ada, bob = members
    async with Client(ada) as watcher, Client(bob) as other:
        await subscribed_with_presence(watcher)
        await other.subscribe(CHANNEL)
        assert (await watcher.recv())["kind"] == "join"
        await Membership.objects.filter(user=bob).adelete()
        assert (await other.recv())["reason"] == "forbidden"  # within the recheck
        frame = await watcher.recv()
        assert (frame["kind"], frame["user"]["key"]) == ("leave", str(bob.pk))
        assert (await get_event_bus().presence(CHANNEL)).keys == [str(ada.pk)]


@db_tests
@override_settings(EVENTBUS={**SETTINGS, "CATALOGS": ["tests.testapp.events.EVENT_PAYLOAD_MAP"]})
async def test_a_python_subscription_passes_over_presence_messages():
    from eventbus import Event
    from eventbus.presence import get_presence_tracker

    bus = get_event_bus()
    async with bus.subscribe([CHANNEL]) as events:
        tracker = get_presence_tracker(bus.layer)
        await tracker.join(CHANNEL, "py-1", "1", "{}")  # an eventbus.presence message
        try:
            event = Event(type="order.deleted", payload={"order_id": 5}, project_id=PROJECT)
            await bus.send(CHANNEL, event)
            assert (await asyncio.wait_for(anext(events), 5)).id == event.id
        finally:
            await tracker.leave(CHANNEL, "py-1")


# -- a sharded layer (several hosts) -----------------------------------------------------------


def _holders(servers: list[Any], channels: list[str], names: Any) -> dict[str, int]:
    """The index of the server whose ``names(client)`` mention each channel."""
    held: dict[str, int] = {}
    for index, server in enumerate(servers):
        client = server.client()
        try:
            found = [name.decode() for name in names(client)]
        finally:
            client.close()
        for channel in channels:
            if any(channel in name for name in found):
                assert channel not in held, f"{channel} on two hosts"
                held[channel] = index
    return held


def presence_hosts(servers: list[Any], channels: list[str]) -> dict[str, int]:
    return _holders(servers, channels, lambda c: list(c.scan_iter("eventbus:presence:*:conns")))


def group_hosts(servers: list[Any], channels: list[str]) -> dict[str, int]:
    """Where channels_redis keeps each channel's group, asked of the servers: the core
    layer's member set, or the pub/sub layer's subscribed channel."""
    return _holders(
        servers,
        channels,
        lambda c: [*c.scan_iter("asgi:group:*"), *c.pubsub_channels("asgi__group__*")],
    )


def channels_on_every_host(layer: Any, hosts: int, per_host: int) -> list[str]:
    """Project channels, at least ``per_host`` of them on each host by the layer's hash."""
    channels: list[str] = []
    counts = [0] * hosts
    while min(counts) < per_host:
        channel = EventBus.get_project_channel(uuid4())
        counts[group_host(layer, channel)] += 1
        channels.append(channel)
    return channels


@pytest.mark.redis
@pytest.mark.parametrize(
    "backend",
    ["channels_redis.core.RedisChannelLayer", "channels_redis.pubsub.RedisPubSubChannelLayer"],
)
async def test_a_sharded_layer_keeps_each_channels_presence_on_its_groups_host(
    shard_urls, redis_shards, backend
):
    """Presence of a channel lives where the layer keeps the channel's group: spread over
    the hosts, a dead host costs only its own channels' presence (their delivery is gone
    with it anyway), and when it comes back empty the next heartbeat fills it again."""
    layer_class = import_string(backend)
    layer, reader = layer_class(hosts=shard_urls), layer_class(hosts=shard_urls)
    channels = channels_on_every_host(layer, len(shard_urls), per_host=4)
    tracker = PresenceTracker(layer)
    inbox = await reader.new_channel()
    dead: int | None = None
    try:
        for n, channel in enumerate(channels):
            await reader.group_add(channel, inbox)
            await tracker.join(channel, f"conn-{n}", "1", '{"name": "ada"}')
        await asyncio.sleep(0.05)  # pub/sub subscriptions settle
        where = presence_hosts(redis_shards, channels)
        assert where == group_hosts(redis_shards, channels)
        assert len(set(where.values())) == len(redis_shards)  # spread over every host
        # Each join went to its channel's watchers.
        joins = [await asyncio.wait_for(reader.receive(inbox), 5) for _ in channels]
        assert sorted(m["channel"] for m in joins) == sorted(channels)

        dead = where[channels[0]]
        redis_shards[dead].stop()
        for channel in channels:
            if where[channel] == dead:
                with pytest.raises(redis.ConnectionError):
                    await store_for(layer).read(channel)
            else:
                presence, _ = await store_for(layer).read(channel)
                assert presence.keys == ["1"]
        redis_shards[dead].start()  # empty: it keeps nothing on disk
        await tracker.heartbeat()
        for channel in channels:
            presence, _ = await store_for(layer).read(channel)
            assert [(u.key, u.info) for u in presence.users] == [("1", {"name": "ada"})]
        assert presence_hosts(redis_shards, channels) == where
    finally:
        if dead is not None and not redis_shards[dead].running:
            redis_shards[dead].start()
        for n, channel in enumerate(channels):
            with contextlib.suppress(redis.ConnectionError):
                await tracker.leave(channel, f"conn-{n}")
        for each in (layer, reader):
            with contextlib.suppress(redis.ConnectionError):  # pooled before the restart
                await each.flush()


@pytest.mark.redis
@pytest.mark.parametrize(
    "backend",
    ["channels_redis.core.RedisChannelLayer", "channels_redis.pubsub.RedisPubSubChannelLayer"],
)
async def test_a_shard_that_does_not_answer_holds_back_only_its_own_channels_renewal(
    shard_urls, redis_shards, backend, monkeypatch
):
    """A frozen host (SIGSTOP: it accepts connections and never answers, as a hung machine
    does) fails its own channels' renewals at its socket timeout; every other host's
    channels are renewed before that, however many channels the heartbeat has to cover
    (it renews 64 at once) and in whatever order they came."""
    hosts = [
        {"address": url, "socket_timeout": 1, "retry": Retry(NoBackoff(), 0)} for url in shard_urls
    ]
    layer = import_string(backend)(hosts=hosts)
    tracker = PresenceTracker(layer)
    frozen = 0
    # The frozen host's channels first: the order in which one batch would hold the rest.
    channels = sorted(
        channels_on_every_host(layer, len(hosts), per_host=70),
        key=lambda channel: group_host(layer, channel) != frozen,
    )
    for n, channel in enumerate(channels):
        await tracker.join(channel, f"conn-{n}", "1", "{}")
    ended: list[tuple[str, bool]] = []  # each renewal, as it ended: (channel, succeeded)
    join = tracker.store.join

    async def recorded(channel: str, entries: Any, ttl: float) -> Any:
        try:
            changes = await join(channel, entries, ttl)
        except Exception:
            ended.append((channel, False))
            raise
        ended.append((channel, True))
        return changes

    monkeypatch.setattr(tracker.store, "join", recorded)
    os.kill(redis_shards[frozen].pid, signal.SIGSTOP)
    try:
        await tracker.heartbeat()
    finally:
        os.kill(redis_shards[frozen].pid, signal.SIGCONT)
        monkeypatch.undo()
        for n, channel in enumerate(channels):
            with contextlib.suppress(redis.RedisError):
                await tracker.leave(channel, f"conn-{n}")
        with contextlib.suppress(redis.RedisError):
            await layer.flush()
    on_frozen = {channel for channel in channels if group_host(layer, channel) == frozen}
    first_failure = [succeeded for _, succeeded in ended].index(False)
    assert {channel for channel, _ in ended[:first_failure]} == set(channels) - on_frozen
    assert {channel for channel, succeeded in ended[first_failure:]} == on_frozen
    assert not any(succeeded for _, succeeded in ended[first_failure:])


@pytest.mark.redis
async def test_the_pub_sub_store_finds_hosts_given_positionally(shard_urls, redis_shards):
    """``RedisPubSubChannelLayer(hosts)`` without the keyword: the store connects where the
    layer's shards do, not to the default host."""
    from channels_redis.pubsub import RedisPubSubChannelLayer

    layer = RedisPubSubChannelLayer(shard_urls)
    store = store_for(layer)
    channels = channels_on_every_host(layer, len(shard_urls), per_host=2)
    try:
        for n, channel in enumerate(channels):
            await store.join(channel, [(f"conn-{n}", "1", "{}")], 30)
            presence, _ = await store.read(channel)
            assert presence.keys == ["1"]
        assert presence_hosts(redis_shards, channels) == {
            channel: group_host(layer, channel) for channel in channels
        }
    finally:
        await layer.flush()


@pytest.mark.redis
async def test_a_hung_shard_never_lets_the_live_shards_users_expire(shard_urls, redis_shards):
    """Beat after beat: the timer does not wait for a host's renewals before the next
    beat, so while a frozen host spends a socket timeout on each batch of its channels
    (longer than the TTL in all), the live hosts' users are renewed every beat."""
    from channels_redis.core import RedisChannelLayer

    hosts = [{"address": url, "socket_timeout": 1} for url in shard_urls]
    layer = RedisChannelLayer(hosts=hosts)
    frozen = 0
    channels = channels_on_every_host(layer, len(hosts), per_host=130)  # 3 batches frozen
    live = [channel for channel in channels if group_host(layer, channel) != frozen]
    settings = {**SETTINGS, "PRESENCE_HEARTBEAT_SECONDS": 0.3, "PRESENCE_TTL_SECONDS": 1.5}
    with override_settings(EVENTBUS=settings):
        tracker = PresenceTracker(layer)  # its timer starts with the first join
        for n, channel in enumerate(channels):
            await tracker.join(channel, f"conn-{n}", "1", "{}")
        os.kill(redis_shards[frozen].pid, signal.SIGSTOP)
        gone: set[str] = set()
        try:
            deadline = asyncio.get_running_loop().time() + 4.0  # past two TTLs
            while asyncio.get_running_loop().time() < deadline:
                for channel in live:
                    presence, _ = await tracker.store.read(channel)
                    if presence.keys != ["1"]:
                        gone.add(channel)
                await asyncio.sleep(0.2)
        finally:
            os.kill(redis_shards[frozen].pid, signal.SIGCONT)
            for n, channel in enumerate(channels):
                with contextlib.suppress(redis.RedisError):
                    await tracker.leave(channel, f"conn-{n}")
            with contextlib.suppress(redis.RedisError):
                await layer.flush()
    assert gone == set()
