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
share of a batch is sent on its own, all shards at once: a dead shard fails its share,
the others still get theirs, and then the first failure is raised so the relay retries
the batch (what the live shards get again, readers drop by position).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Coroutine, Sequence
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


def group_host(layer: Any, group: str) -> int:
    """The index, in the layer's ``hosts``, of the host channels_redis keeps ``group`` on
    (its members, or its pub/sub channel): what else belongs to the group goes there too."""
    if hasattr(layer, "consistent_hash"):  # RedisChannelLayer
        return int(layer.consistent_hash(group))
    return _pubsub_shard(layer._get_layer(), group)[0]  # RedisPubSubChannelLayer


def _pubsub_shard(loop_layer: Any, group: str) -> tuple[int, str]:
    """The index of ``group``'s shard in a pub/sub loop layer, and its pub/sub channel."""
    group_channel = loop_layer._get_group_channel_name(group)
    return int(loop_layer._shards.index(loop_layer._get_shard(group_channel))), group_channel


async def _core_group_send_many(layer: Any, sends: Sequence[tuple[str, dict[str, Any]]]) -> None:
    now = int(time.time())
    host_of: dict[str, int] = {}
    for group in dict.fromkeys(group for group, _ in sends):
        layer.require_valid_group_name(group)
        host_of[group] = group_host(layer, group)
    sends_by_host: dict[int, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for group, message in sends:
        sends_by_host[host_of[group]].append((group, message))
    failures = _ShardFailures(layer.ring_size)

    async def send_groups_of(index: int, sends: list[tuple[str, dict[str, Any]]]) -> None:
        """The sends whose groups live on host ``index``, in order."""
        # 1. Their groups' members, one pipeline.
        groups = list(dict.fromkeys(group for group, _ in sends))
        pipe = layer.connection(index).pipeline(transaction=False)
        for group in groups:
            key = layer._group_key(group)
            pipe.zremrangebyscore(key, min=0, max=now - layer.group_expiry)
            pipe.zrange(key, 0, -1)
        results = await pipe.execute()
        members = {
            group: [name.decode("utf8") for name in names]
            for group, names in zip(groups, results[1::2], strict=True)
        }
        # 2. The messages per channel key, as group_send would build them.
        keys_by_host: dict[int, list[tuple[str, bytes, int]]] = defaultdict(list)
        fanout_key = layer.prefix + FANOUT_CHANNEL_PREFIX
        for group, message in sends:
            by_host, key_to_message, key_to_capacity = layer._map_channel_keys_to_connection(
                members[group], message
            )
            for key in key_to_capacity:
                if key.startswith(fanout_key):
                    key_to_capacity[key] = max(key_to_capacity[key], FANOUT_CAPACITY)
            for host, keys in by_host.items():
                keys_by_host[host].extend(
                    (key, key_to_message[key], key_to_capacity[key]) for key in keys
                )
        # 3. One pipeline per host the channels' messages wait on.
        await failures.gather(
            {
                host: _core_add_messages(layer, host, entries, now)
                for host, entries in keys_by_host.items()
            }
        )

    # Each host's groups on their own and at once: a host that is away (or silent until
    # its timeout) holds back only the groups that live on it, and the channels whose
    # messages wait on it.
    await failures.gather(
        {index: send_groups_of(index, host_sends) for index, host_sends in sends_by_host.items()}
    )
    failures.raise_first()


async def _core_add_messages(
    layer: Any, index: int, entries: list[tuple[str, bytes, int]], now: int
) -> None:
    """Expire old messages, then the capacity-checked adds, scored after one another so
    each channel (whose messages all wait on one host) keeps the order of ``entries``."""
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
    shard_of: dict[str, tuple[int, str]] = {}
    for group in dict.fromkeys(group for group, _ in sends):
        shard_of[group] = _pubsub_shard(loop_layer, group)
    by_shard: dict[int, list[tuple[str, bytes]]] = defaultdict(list)
    for group, message in sends:
        index, group_channel = shard_of[group]
        by_shard[index].append((group_channel, layer.serialize(message)))

    async def publish(shard: Any, messages: list[tuple[str, bytes]]) -> None:
        async with shard._lock:
            shard._ensure_redis()
            pipe = shard._redis.pipeline(transaction=False)
            for start in range(0, len(messages), _LUA_CHUNK):
                chunk = messages[start : start + _LUA_CHUNK]
                channels = [group_channel for group_channel, _ in chunk]
                payloads = [payload for _, payload in chunk]
                pipe.eval(_PUBLISH_LUA, len(chunk), *channels, *payloads)
            await pipe.execute()

    failures = _ShardFailures(len(loop_layer._shards))
    await failures.gather(
        {
            index: publish(loop_layer._shards[index], messages)
            for index, messages in by_shard.items()
        }
    )
    failures.raise_first()


class _ShardFailures:
    """A batch's shards, each sent its share at once and on its own; the connection
    errors, raised at the end.

    Only a lost connection is held back (that shard is away, the others are not, and a
    host that never answers must not delay them); any other error is a bug and goes up
    once every shard is done.
    """

    def __init__(self, hosts: int) -> None:
        self.hosts = hosts
        self.errors: list[Exception] = []

    async def gather(self, calls: dict[int, Coroutine[Any, Any, None]]) -> None:
        results: list[BaseException | None]
        if len(calls) == 1:  # no task to start (one host, or one in use: the usual case)
            try:
                results = [await next(iter(calls.values()))]
            except Exception as exc:
                results = [exc]
        else:
            results = await asyncio.gather(*calls.values(), return_exceptions=True)
        for index, result in zip(calls, results, strict=True):
            if result is None:
                continue
            if not isinstance(result, Exception) or not is_connection_error(result):
                raise result
            if self.hosts > 1:  # with one, the caller's own report says it all
                logger.warning("Redis host %d did not take its share of a batch: %s", index, result)
            self.errors.append(result)

    def raise_first(self) -> None:
        if self.errors:
            raise self.errors[0]
