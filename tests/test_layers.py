"""Batched group sends against a real redis-server, for both channels_redis layers."""

import asyncio
import contextlib
import socket

import pytest
import redis
from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer
from channels_redis.utils import _consistent_hash
from redis.backoff import NoBackoff
from redis.retry import Retry

from eventbus.layers import group_send_many

pytestmark = pytest.mark.redis

LAYERS = [RedisChannelLayer, RedisPubSubChannelLayer]


async def receive(layer, channel, count):
    return [await asyncio.wait_for(layer.receive(channel), 5) for _ in range(count)]


@pytest.mark.parametrize("layer_class", LAYERS)
async def test_every_member_of_every_group_gets_its_messages_in_order(redis_url, layer_class):
    layer = layer_class(hosts=[redis_url])
    try:
        a1, a2, b1 = [await layer.new_channel() for _ in range(3)]
        await layer.group_add("group.a", a1)
        await layer.group_add("group.a", a2)
        await layer.group_add("group.b", b1)
        await asyncio.sleep(0.05)  # pub/sub subscriptions settle
        sends = [("group.a" if n % 2 else "group.b", {"type": "m", "n": n}) for n in range(20)]
        await group_send_many(layer, sends)
        odd = [n for n in range(20) if n % 2]
        even = [n for n in range(20) if not n % 2]
        assert [m["n"] for m in await receive(layer, a1, 10)] == odd
        assert [m["n"] for m in await receive(layer, a2, 10)] == odd
        assert [m["n"] for m in await receive(layer, b1, 10)] == even
    finally:
        await layer.flush()


async def test_core_layer_keeps_channel_capacity(redis_url):
    layer = RedisChannelLayer(hosts=[redis_url], capacity=5)
    try:
        channel = await layer.new_channel()
        await layer.group_add("group.full", channel)
        await group_send_many(layer, [("group.full", {"type": "m", "n": n}) for n in range(12)])
        received = await receive(layer, channel, 5)
        assert [m["n"] for m in received] == [0, 1, 2, 3, 4]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(layer.receive(channel), 0.2)
    finally:
        await layer.flush()


async def test_groups_without_members_are_fine(redis_url):
    layer = RedisChannelLayer(hosts=[redis_url])
    try:
        await group_send_many(layer, [("group.empty", {"type": "m"})])
    finally:
        await layer.flush()


async def test_falls_back_to_group_send_when_internals_change(redis_url, monkeypatch):
    layer = RedisChannelLayer(hosts=[redis_url])

    async def internals_gone(layer, sends):
        raise AttributeError("'RedisChannelLayer' object has no attribute '_group_key'")

    monkeypatch.setattr("eventbus.layers._core_group_send_many", internals_gone)
    try:
        channel = await layer.new_channel()
        await layer.group_add("group.a", channel)
        await group_send_many(layer, [("group.a", {"type": "m", "n": n}) for n in range(3)])
        assert sorted(m["n"] for m in await receive(layer, channel, 3)) == [0, 1, 2]
    finally:
        await layer.flush()


async def test_other_layers_use_group_send():
    from channels.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    channel = await layer.new_channel()
    await layer.group_add("group.a", channel)
    await group_send_many(layer, [("group.a", {"type": "m", "n": 1})])
    assert (await receive(layer, channel, 1))[0]["n"] == 1


# -- several hosts (shards) ---------------------------------------------------------------

GROUPS = [f"group.{n}" for n in range(24)]


def group_shard(layer, group: str) -> int:
    """The host channels_redis keeps ``group`` on (its members, or its pub/sub channel)."""
    if isinstance(layer, RedisChannelLayer):
        return layer.consistent_hash(group)
    loop_layer = layer._get_layer()
    return _consistent_hash(loop_layer._get_group_channel_name(group), len(loop_layer._shards))


def channel_shard(layer, channel: str) -> int:
    """The host a channel's messages wait on (RedisChannelLayer) or are published to."""
    if isinstance(layer, RedisChannelLayer):
        return layer.consistent_hash(layer.non_local_name(channel))
    return _consistent_hash(channel, len(layer._get_layer()._shards))


def evals(servers) -> list[int]:
    """How many scripts each server has run (the batched sends are scripts)."""
    counts = []
    for server in servers:
        client = server.client()
        try:
            counts.append(int(client.info("commandstats").get("cmdstat_eval", {}).get("calls", 0)))
        finally:
            client.close()
    return counts


@pytest.mark.parametrize("layer_class", LAYERS)
async def test_sharded_batches_go_where_channels_redis_reads_them(
    shard_urls, redis_shards, layer_class
):
    """Groups spread over three hosts by channels_redis's own hash; every member gets its
    messages, in order, through the layer's own receive (which picks the host itself)."""
    senders = layer_class(hosts=shard_urls)
    # Readers on their own layer instances, as in other processes. With RedisChannelLayer
    # all of an instance's channels live on one host: take instances until each host
    # holds one reader's messages.
    readers, channels, homes = [], [], set()
    for _ in range(100):
        reader = layer_class(hosts=shard_urls)
        channel = await reader.new_channel()
        home = channel_shard(reader, channel)
        if home in homes:
            await reader.flush()
            continue
        readers.append(reader)
        channels.append(channel)
        homes.add(home)
        if len(homes) == len(shard_urls):
            break
    try:
        assert homes == {0, 1, 2}
        for n, group in enumerate(GROUPS):
            await readers[n % 3].group_add(group, channels[n % 3])
        await asyncio.sleep(0.05)  # pub/sub subscriptions settle
        assert {group_shard(senders, group) for group in GROUPS} == {0, 1, 2}
        before = evals(redis_shards)
        sends = [(GROUPS[n % len(GROUPS)], {"type": "m", "n": n}) for n in range(96)]
        await group_send_many(senders, sends)
        after = evals(redis_shards)
        assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)
        for r, (reader, channel) in enumerate(zip(readers, channels, strict=True)):
            expected = [n for n in range(96) if (n % len(GROUPS)) % 3 == r]
            got = [m["n"] for m in await receive(reader, channel, len(expected))]
            # In order per group (across hosts the pub/sub layer's connections race).
            for group in range(r, len(GROUPS), 3):
                per_group = [n for n in got if n % len(GROUPS) == group]
                assert per_group == [n for n in expected if n % len(GROUPS) == group]
            assert sorted(got) == expected
    finally:
        for layer in (senders, *readers):
            await layer.flush()


@pytest.mark.parametrize("layer_class", LAYERS)
async def test_a_dead_shard_fails_its_share_and_the_others_still_get_theirs(
    shard_urls, redis_shards, layer_class
):
    sender = layer_class(hosts=shard_urls)
    reader = layer_class(hosts=shard_urls)
    try:
        channel = await reader.new_channel()
        for group in GROUPS:
            await reader.group_add(group, channel)
        await asyncio.sleep(0.05)
        home = channel_shard(reader, channel)
        dead = (home + 1) % len(shard_urls)
        redis_shards[dead].stop()
        # The dead host's groups first: its failure must not keep the others' share back.
        first = sorted(GROUPS, key=lambda group: group_shard(sender, group) != dead)
        sends = [(group, {"type": "m", "group": group}) for group in first]
        with pytest.raises(redis.ConnectionError):
            await group_send_many(sender, sends)
        live = [group for group in GROUPS if group_shard(sender, group) != dead]
        assert 0 < len(live) < len(GROUPS)
        got = [m["group"] for m in await receive(reader, channel, len(live))]
        assert sorted(got) == sorted(live)
    finally:
        redis_shards[dead].start()
        for layer in (sender, reader):
            with contextlib.suppress(redis.ConnectionError):  # pooled before the restart
                await layer.flush()


@pytest.mark.parametrize("layer_class", LAYERS)
async def test_a_host_that_never_answers_does_not_delay_the_others(shard_urls, layer_class):
    """Each shard's share goes at once: a host that accepts and then says nothing (a
    machine gone without a reset) holds back only its own groups, until its timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes connections; nobody ever reads them
        address = f"redis://127.0.0.1:{silent.getsockname()[1]}"
        # The sender's third host is the silent one; the reader's is the real third shard.
        silent_host = {"address": address, "socket_timeout": 2, "retry": Retry(NoBackoff(), 0)}
        sender = layer_class(hosts=[*shard_urls[:2], silent_host])
        for _ in range(100):  # RedisChannelLayer: a reader whose messages wait on a live host
            reader = layer_class(hosts=shard_urls)
            channel = await reader.new_channel()
            if layer_class is RedisPubSubChannelLayer or channel_shard(reader, channel) != 2:
                break
        try:
            live = [group for group in GROUPS if group_shard(sender, group) != 2]
            for group in live:
                await reader.group_add(group, channel)
            await asyncio.sleep(0.05)
            silent_first = sorted(GROUPS, key=lambda group: group_shard(sender, group) != 2)
            sends = [(group, {"type": "m", "group": group}) for group in silent_first]
            send = asyncio.create_task(group_send_many(sender, sends))
            got = [m["group"] for m in await receive(reader, channel, len(live))]
            assert sorted(got) == sorted(live)
            assert not send.done()  # still waiting for the silent host
            with pytest.raises(redis.TimeoutError):
                await send
        finally:
            await reader.flush()
            with contextlib.suppress(redis.TimeoutError):
                await sender.flush()
