"""Batched group sends for the channels_redis layers: one round trip per batch, not per event.

``channel_layer.group_send`` sends one message at a time (RedisChannelLayer pays four
round trips each; RedisPubSubChannelLayer serializes publishes behind a lock). The
relay sends hundreds at once, so for these two layers it pipelines the same Redis
commands they would issue. This leans on channels_redis internals (pinned <5 in
pyproject): if they are missing, :func:`group_send_many` falls back to concurrent
``group_send`` calls, slower but equally correct.

Both layers shard over several ``hosts`` by the same hash as channels_redis (a group's
members, a channel's messages, a pub/sub channel each live on one shard), and a host may
be a Sentinel entry whose master the pool finds again after a failover. Each shard's
share of a batch is sent on its own: a dead shard fails its share, the others still get
theirs, and then the first failure is raised so the relay retries the batch (what the
live shards get again, readers drop by position).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from typing import Any

from .metrics import get_metrics
from .reconnect import is_connection_error

logger = logging.getLogger("eventbus.layers")

# Past this many messages, split the Lua call: Redis holds the whole argument list.
_LUA_CHUNK = 1000
_CONCURRENCY = 64

# A server process's fan-out channel (eventbus.fanout) carries every group its sockets
# watch, and its reader takes one message at a time while it hands each to a thousand
# sockets: a relay batch must not meet the capacity meant for one socket's channel
# (RedisChannelLayer's default is 100, and what is over it is dropped).
FANOUT_CHANNEL_PREFIX = "eventbus.fanout."
FANOUT_CAPACITY = 10_000

# The script channels_redis runs in RedisChannelLayer.group_send, but for many messages:
# each gets a score 10 µs after the one before, so a channel receives them in order.
_GROUP_SEND_LUA = """
    local over_capacity = 0
    local current_time = tonumber(ARGV[#ARGV - 1])
    local expiry = ARGV[#ARGV]
    for i=1,#KEYS do
        if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[i + #KEYS]) then
            redis.call('ZADD', KEYS[i], current_time + i * 0.00001, ARGV[i])
            redis.call('EXPIRE', KEYS[i], expiry)
        else
            over_capacity = over_capacity + 1
        end
    end
    return over_capacity
"""


# RedisPubSubChannelLayer.group_send is one PUBLISH; many of them in one script cost one
# command to write and one reply to parse instead of one each.
_PUBLISH_LUA = """
    for i=1,#KEYS do
        redis.call('PUBLISH', KEYS[i], ARGV[i])
    end
    return #KEYS
"""


async def group_send_many(layer: Any, sends: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """``await layer.group_send(group, message)`` for every pair, batched where possible."""
    if not sends:
        return
    kind = type(layer).__module__ + "." + type(layer).__qualname__
    try:
        if kind == "channels_redis.core.RedisChannelLayer":
            await _core_group_send_many(layer, sends)
            return
        if kind == "channels_redis.pubsub.RedisPubSubChannelLayer":
            await _pubsub_group_send_many(layer, sends)
            return
    except AttributeError:  # channels_redis changed inside: take the public road
        pass
    await _concurrent_group_send(layer, sends)


async def _concurrent_group_send(layer: Any, sends: Sequence[tuple[str, dict[str, Any]]]) -> None:
    for start in range(0, len(sends), _CONCURRENCY):
        results = await asyncio.gather(
            *(
                layer.group_send(group, message)
                for group, message in sends[start : start + _CONCURRENCY]
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result


async def _core_group_send_many(layer: Any, sends: Sequence[tuple[str, dict[str, Any]]]) -> None:
    now = int(time.time())
    # 1. Every group's members, one pipeline per Redis host.
    groups_by_host: dict[int, list[str]] = defaultdict(list)
    for group in dict.fromkeys(group for group, _ in sends):
        layer.require_valid_group_name(group)
        groups_by_host[layer.consistent_hash(group)].append(group)
    members: dict[str, list[str]] = {}
    failures = _ShardFailures(layer.ring_size)
    for index, groups in groups_by_host.items():
        async with failures.isolated(index):
            pipe = layer.connection(index).pipeline(transaction=False)
            for group in groups:
                key = layer._group_key(group)
                pipe.zremrangebyscore(key, min=0, max=now - layer.group_expiry)
                pipe.zrange(key, 0, -1)
            results = await pipe.execute()
            for group, names in zip(groups, results[1::2], strict=True):
                members[group] = [name.decode("utf8") for name in names]
    # 2. The messages per channel key, as group_send would build them (a group whose
    # shard did not answer has no known members: its messages wait for the retry).
    keys_by_host: dict[int, list[tuple[str, bytes, int]]] = defaultdict(list)
    fanout_key = layer.prefix + FANOUT_CHANNEL_PREFIX
    for group, message in sends:
        if group not in members:
            continue
        by_host, key_to_message, key_to_capacity = layer._map_channel_keys_to_connection(
            members[group], message
        )
        for key in key_to_capacity:
            if key.startswith(fanout_key):
                key_to_capacity[key] = max(key_to_capacity[key], FANOUT_CAPACITY)
        for index, keys in by_host.items():
            keys_by_host[index].extend(
                (key, key_to_message[key], key_to_capacity[key]) for key in keys
            )
    # 3. One pipeline per host: expire old messages, then the capacity-checked adds,
    # scored after one another so each channel keeps the order of ``sends``.
    for index, entries in keys_by_host.items():
        async with failures.isolated(index):
            await _core_add_messages(layer, index, entries, now)
    failures.raise_first()


async def _core_add_messages(
    layer: Any, index: int, entries: list[tuple[str, bytes, int]], now: int
) -> None:
    pipe = layer.connection(index).pipeline(transaction=False)
    for key in dict.fromkeys(key for key, _, _ in entries):
        pipe.zremrangebyscore(key, min=0, max=now - int(layer.expiry))
    scripts = 0
    for start in range(0, len(entries), _LUA_CHUNK):
        chunk = entries[start : start + _LUA_CHUNK]
        keys = [key for key, _, _ in chunk]
        args = [message for _, message, _ in chunk] + [capacity for _, _, capacity in chunk]
        first_score = time.time() + start * 0.00001
        pipe.eval(_GROUP_SEND_LUA, len(keys), *keys, *args, first_score, layer.expiry)
        scripts += 1
    results = await pipe.execute()
    # What the scripts return: how many messages met a channel at capacity.
    if dropped := sum(int(result) for result in results[-scripts:]):
        get_metrics().layer_dropped(dropped)
        logger.warning(
            "%d message(s) dropped: their channel was at capacity (its reader is behind)",
            dropped,
        )


async def _pubsub_group_send_many(layer: Any, sends: Sequence[tuple[str, dict[str, Any]]]) -> None:
    loop_layer = layer._get_layer()
    by_shard: dict[Any, list[tuple[str, bytes]]] = defaultdict(list)
    for group, message in sends:
        group_channel = loop_layer._get_group_channel_name(group)
        by_shard[loop_layer._get_shard(group_channel)].append(
            (group_channel, layer.serialize(message))
        )
    failures = _ShardFailures(len(loop_layer._shards))
    for shard, messages in by_shard.items():
        async with failures.isolated(loop_layer._shards.index(shard)), shard._lock:
            shard._ensure_redis()
            pipe = shard._redis.pipeline(transaction=False)
            for start in range(0, len(messages), _LUA_CHUNK):
                chunk = messages[start : start + _LUA_CHUNK]
                channels = [group_channel for group_channel, _ in chunk]
                payloads = [payload for _, payload in chunk]
                pipe.eval(_PUBLISH_LUA, len(chunk), *channels, *payloads)
            await pipe.execute()
    failures.raise_first()


class _ShardFailures:
    """A batch's shards each sent on their own: the connection errors, raised at the end.

    Only a lost connection is held back (the shard is away, the others are not); any
    other error is a bug and goes up at once.
    """

    def __init__(self, hosts: int) -> None:
        self.hosts = hosts
        self.errors: list[Exception] = []

    @contextlib.asynccontextmanager
    async def isolated(self, shard: int) -> AsyncIterator[None]:
        try:
            yield
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            if self.hosts > 1:  # with one, the caller's own report says it all
                logger.warning("Redis host %d did not take its share of a batch: %s", shard, exc)
            self.errors.append(exc)

    def raise_first(self) -> None:
        if self.errors:
            raise self.errors[0]
