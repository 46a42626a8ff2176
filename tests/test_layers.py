"""Batched group sends against a real redis-server, for both channels_redis layers."""

import asyncio

import pytest
from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer

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
