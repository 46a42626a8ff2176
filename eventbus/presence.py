"""Presence: who is watching a channel, kept in the channel layer's Redis with expiry.

Each socket present on a channel is one **connection**, stored with a deadline; a user
with several connections is one present user. Per channel, in Redis (keys
``<prefix>{<channel>}:...``, the braces keep them in one cluster slot):

- ``conns``: a sorted set, connection id -> its deadline (Redis's clock, seconds);
- ``owners``: a hash, connection id -> the user's key;
- ``counts``: a hash, user key -> how many of its connections are present;
- ``infos``: a hash, user key -> what the user's presence exposes (JSON);
- ``version``: a counter, raised by every join and leave (started from Redis's clock, so
  it keeps growing across a Redis restart).

On a sharded layer (several ``hosts``) a channel's keys live on the host that keeps the
channel's group (:func:`eventbus.layers.group_host`).

One Lua script does every step (join, leave, heartbeat, read), so it is atomic: a
user's ``join`` is reported when its first connection arrives and its ``leave`` when
its last one goes, exactly once, whichever server processes they were on. Every run
first prunes the connections past their deadline (a server process that died stopped
renewing them) and reports the leaves that makes: whoever prunes tells the watchers.

Each server process renews its own connections (:class:`PresenceTracker`, one timer per
process and event loop, every ``PRESENCE_HEARTBEAT_SECONDS``, deadline
``PRESENCE_TTL_SECONDS`` ahead). Joins and leaves go to the channel's Channels group as
``eventbus.presence`` messages, beside the channel's events; the WebSocket consumer
turns them into ``presence`` frames (docs/protocol.md).

With Channels' ``InMemoryChannelLayer`` (one process: the demo, tests) the same steps
run on a dict in process memory (:class:`MemoryStore`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
import uuid
import weakref
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from channels.layers import BaseChannelLayer
from django.utils.module_loading import import_string

from . import conf
from ._asyncio import PerLoopAndLayer
from .exceptions import PresenceError, PresenceHookError
from .layers import group_host, group_send_many
from .metrics import get_metrics
from .reconnect import log_layer_error

logger = logging.getLogger("eventbus.presence")

PRESENCE_TYPE = "eventbus.presence"
"""The ``type`` of the channel-layer messages that carry a join or a leave."""

MAX_INFO_BYTES = 2048
"""The largest JSON a user's presence may expose on one channel."""

KEY_PREFIX = "eventbus:presence:"


@dataclass(frozen=True)
class PresentUser:
    """A user present on a channel: its key, what it exposes, how many connections."""

    key: str
    info: dict[str, Any]
    connections: int


@dataclass(frozen=True)
class Presence:
    """Who is on a channel now (``await bus.presence(channel)``)."""

    channel: str
    users: tuple[PresentUser, ...]
    version: int = 0

    @property
    def keys(self) -> list[str]:
        return [user.key for user in self.users]

    @property
    def connections(self) -> int:
        return sum(user.connections for user in self.users)

    def __contains__(self, key: object) -> bool:
        return any(user.key == key for user in self.users)

    def __len__(self) -> int:
        return len(self.users)


@dataclass(frozen=True)
class Change:
    """A user's first connection arrived (``join``) or its last one went (``leave``)."""

    kind: str
    key: str
    info: str  # JSON, as stored
    version: int


# -- the hook ------------------------------------------------------------------------------


def presence_hook() -> Callable[[Any, str], Any] | None:
    path = conf.get_settings().PRESENCE
    return import_string(path) if path else None


def user_key(user: Any) -> str | None:
    """The key a signed-in user is present under (its pk as text); None when anonymous."""
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return str(user.pk)


def info_json(value: Any, channel: str) -> str | None:
    """The hook's answer as the JSON to store: None (no presence), or a JSON-safe dict.

    Raises :class:`PresenceHookError` naming what is wrong with any other answer.
    """
    if value is None:
        return None
    where = f"The PRESENCE hook's answer for {channel}"
    if not isinstance(value, dict):
        raise PresenceHookError(f"{where} must be a dict or None, not {type(value).__name__}.")
    try:
        raw = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise PresenceHookError(f"{where} is not JSON-safe: {exc}") from exc
    if len(raw.encode()) > MAX_INFO_BYTES:
        raise PresenceHookError(
            f"{where} is {len(raw.encode())} bytes of JSON, over {MAX_INFO_BYTES}."
        )
    return raw


def info_for(user: Any, channel: str) -> str | None:
    """What ``user`` exposes on ``channel`` (JSON), or None: not present there.

    Anonymous users are never present. Runs the hook (sync: call it in a worker thread).
    """
    hook = presence_hook()
    if hook is None or user_key(user) is None:
        return None
    return info_json(hook(user, channel), channel)


# -- the stores ----------------------------------------------------------------------------


class Store(Protocol):
    """Where presence is kept; every step prunes expired connections first."""

    async def join(
        self, channel: str, entries: Sequence[tuple[str, str, str]], ttl: float
    ) -> list[Change]:
        """Add or renew ``(connection, user key, info)`` entries (a heartbeat is a join)."""

    async def leave(self, channel: str, connections: Sequence[str]) -> list[Change]: ...

    async def read(self, channel: str) -> tuple[Presence, list[Change]]: ...

    def host(self, channel: str) -> int:
        """Which of the store's hosts keeps ``channel``'s presence."""


# KEYS: conns, owners, counts, infos, version. ARGV: op, ttl, then the op's arguments.
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ttl = tonumber(ARGV[2])
local out = {}
if redis.call('EXISTS', KEYS[5]) == 0 then
  redis.call('SET', KEYS[5], string.format('%.0f', math.floor(now * 1000) * 1000))
end
local function change(kind, key, info)
  local v = redis.call('INCR', KEYS[5])
  out[#out + 1] = kind
  out[#out + 1] = key
  out[#out + 1] = info
  out[#out + 1] = v
end
local function drop(conn)
  if redis.call('ZREM', KEYS[1], conn) == 0 then return end
  local key = redis.call('HGET', KEYS[2], conn)
  redis.call('HDEL', KEYS[2], conn)
  if not key then return end
  if redis.call('HINCRBY', KEYS[3], key, -1) <= 0 then
    local info = redis.call('HGET', KEYS[4], key) or '{}'
    redis.call('HDEL', KEYS[3], key)
    redis.call('HDEL', KEYS[4], key)
    change('leave', key, info)
  end
end
for _, conn in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do drop(conn) end
local op = ARGV[1]
if op == 'join' then
  for i = 3, #ARGV, 3 do
    local conn, key, info = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    if redis.call('ZADD', KEYS[1], now + ttl, conn) == 1 then
      redis.call('HSET', KEYS[2], conn, key)
      redis.call('HSET', KEYS[4], key, info)
      if redis.call('HINCRBY', KEYS[3], key, 1) == 1 then change('join', key, info) end
    end
  end
elseif op == 'leave' then
  for i = 3, #ARGV do drop(ARGV[i]) end
end
local users = {}
if op == 'read' then
  local counts = redis.call('HGETALL', KEYS[3])
  for i = 1, #counts, 2 do
    users[#users + 1] = counts[i]
    users[#users + 1] = counts[i + 1]
    users[#users + 1] = redis.call('HGET', KEYS[4], counts[i]) or '{}'
  end
end
-- The keys live as long as the latest deadline (and a minute more), so a channel
-- everyone left, or whose every server died, leaves nothing behind in Redis.
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then
  local ms = math.ceil((tonumber(last[2]) - now) * 1000) + 60000
  for i = 1, 5 do redis.call('PEXPIRE', KEYS[i], ms) end
else
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
  redis.call('PEXPIRE', KEYS[5], 3600000)
end
return {out, users, redis.call('GET', KEYS[5])}
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStore:
    """Presence in the Redis of a channels_redis layer: a channel's on the host that keeps
    the channel's group, so a sharded layer spreads it and one shard's death takes only
    its own channels' presence (with their delivery), rebuilt by the heartbeats."""

    def __init__(self, host_of: Callable[[str], int], client_on: Callable[[int], Any]) -> None:
        self._host_of = host_of  # channel -> the index of its host
        self._client_on = client_on  # host index -> a client for the running event loop
        self._script: Any = None

    def host(self, channel: str) -> int:
        return self._host_of(channel)

    async def _run(self, channel: str, op: str, ttl: float, *args: str) -> Any:
        client = self._client_on(self.host(channel))
        if self._script is None:
            self._script = client.register_script(_SCRIPT)
        base = f"{KEY_PREFIX}{{{channel}}}:"
        keys = [base + part for part in ("conns", "owners", "counts", "infos", "version")]
        return await self._script(keys=keys, args=[op, repr(ttl), *args], client=client)

    @staticmethod
    def _changes(flat: Sequence[Any]) -> list[Change]:
        return [
            Change(_text(flat[i]), _text(flat[i + 1]), _text(flat[i + 2]), int(flat[i + 3]))
            for i in range(0, len(flat), 4)
        ]

    async def join(
        self, channel: str, entries: Sequence[tuple[str, str, str]], ttl: float
    ) -> list[Change]:
        args = [part for entry in entries for part in entry]
        changes, _, _ = await self._run(channel, "join", ttl, *args)
        return self._changes(changes)

    async def leave(self, channel: str, connections: Sequence[str]) -> list[Change]:
        changes, _, _ = await self._run(channel, "leave", 0.0, *connections)
        return self._changes(changes)

    async def read(self, channel: str) -> tuple[Presence, list[Change]]:
        changes, flat, version = await self._run(channel, "read", 0.0)
        users = sorted(
            (
                PresentUser(_text(flat[i]), json.loads(_text(flat[i + 2])), int(flat[i + 1]))
                for i in range(0, len(flat), 3)
            ),
            key=lambda user: user.key,
        )
        return Presence(channel, tuple(users), int(version)), self._changes(changes)


@dataclass
class _MemoryChannel:
    deadlines: dict[str, float] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    infos: dict[str, str] = field(default_factory=dict)


class MemoryStore:
    """The same steps on a dict, for Channels' InMemoryChannelLayer: this process only."""

    def __init__(self) -> None:
        self._channels: dict[str, _MemoryChannel] = {}
        self._version = 0

    def _next_version(self) -> int:
        self._version += 1
        return self._version

    def _prune(self, channel: str, changes: list[Change]) -> _MemoryChannel:
        state = self._channels.setdefault(channel, _MemoryChannel())
        now = time.time()
        for conn in [c for c, deadline in state.deadlines.items() if deadline <= now]:
            self._drop(state, conn, changes)
        return state

    def _drop(self, state: _MemoryChannel, conn: str, changes: list[Change]) -> None:
        if state.deadlines.pop(conn, None) is None:
            return
        key = state.owners.pop(conn)
        state.counts[key] -= 1
        if state.counts[key] <= 0:
            del state.counts[key]
            changes.append(Change("leave", key, state.infos.pop(key), self._next_version()))

    async def join(
        self, channel: str, entries: Sequence[tuple[str, str, str]], ttl: float
    ) -> list[Change]:
        changes: list[Change] = []
        state = self._prune(channel, changes)
        for conn, key, info in entries:
            known = conn in state.deadlines
            state.deadlines[conn] = time.time() + ttl
            if known:
                continue
            state.owners[conn] = key
            state.infos[key] = info
            state.counts[key] = state.counts.get(key, 0) + 1
            if state.counts[key] == 1:
                changes.append(Change("join", key, info, self._next_version()))
        return changes

    async def leave(self, channel: str, connections: Sequence[str]) -> list[Change]:
        changes: list[Change] = []
        state = self._prune(channel, changes)
        for conn in connections:
            self._drop(state, conn, changes)
        if not state.deadlines:
            self._channels.pop(channel, None)
        return changes

    async def read(self, channel: str) -> tuple[Presence, list[Change]]:
        changes: list[Change] = []
        state = self._prune(channel, changes)
        users = tuple(
            PresentUser(key, json.loads(state.infos[key]), count)
            for key, count in sorted(state.counts.items())
        )
        return Presence(channel, users, self._version), changes

    def host(self, channel: str) -> int:
        return 0


_memory_stores: weakref.WeakKeyDictionary[Any, MemoryStore] = weakref.WeakKeyDictionary()
_redis_stores: weakref.WeakKeyDictionary[Any, RedisStore] = weakref.WeakKeyDictionary()


def store_for(layer: BaseChannelLayer) -> Store:
    """The presence store that goes with ``layer``; PresenceError for a layer without one."""
    kind = type(layer).__module__ + "." + type(layer).__qualname__
    if kind == "channels.layers.InMemoryChannelLayer":
        memory = _memory_stores.get(layer)
        if memory is None:
            memory = _memory_stores[layer] = MemoryStore()
        return memory
    redis_store = _redis_stores.get(layer)
    if redis_store is not None:
        return redis_store
    if kind == "channels_redis.core.RedisChannelLayer":
        # The layer's own client for the running event loop (it owns the pools).
        redis_store = RedisStore(partial(group_host, layer), layer.connection)
    elif kind == "channels_redis.pubsub.RedisPubSubChannelLayer":
        redis_store = RedisStore(partial(group_host, layer), _pubsub_clients(layer))
    else:
        raise PresenceError(
            f"Presence needs a channels_redis layer or the InMemoryChannelLayer, not {kind}."
        )
    _redis_stores[layer] = redis_store
    return redis_store


def _pubsub_clients(layer: Any) -> Callable[[int], Any]:
    """A client per event loop and host of the pub/sub layer (it has no shared one), on
    the host its shard of that index connects to."""
    from channels_redis.utils import create_pool
    from redis import asyncio as aioredis

    clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, Any]] = (
        weakref.WeakKeyDictionary()
    )

    def client(index: int) -> Any:
        on_loop = clients.setdefault(asyncio.get_running_loop(), {})
        if index not in on_loop:
            host = layer._get_layer()._shards[index].host
            on_loop[index] = aioredis.Redis(connection_pool=create_pool(host))
        return on_loop[index]

    return client


# -- telling the watchers ------------------------------------------------------------------


def presence_message(channel: str, change: Change) -> dict[str, Any]:
    return {
        "type": PRESENCE_TYPE,
        "channel": channel,
        "kind": change.kind,
        "key": change.key,
        "info": change.info,
        "version": change.version,
    }


async def announce(layer: BaseChannelLayer, channel: str, changes: Sequence[Change]) -> None:
    """Send each join and leave to the channel's group, in the order they were made."""
    if changes:
        await group_send_many(layer, [(channel, presence_message(channel, c)) for c in changes])
        for kind in ("join", "leave"):
            if count := sum(1 for change in changes if change.kind == kind):
                get_metrics().presence_changed(kind, count)


async def read_presence(layer: BaseChannelLayer, channel: str) -> Presence:
    """Who is on ``channel``; the leaves the read pruned are announced first."""
    if conf.get_settings().PRESENCE is None:
        raise PresenceError("Presence is off: set EVENTBUS['PRESENCE'] to a hook's import path.")
    presence, changes = await store_for(layer).read(channel)
    await announce(layer, channel, changes)
    return presence


# -- this process's connections --------------------------------------------------------------

_process_id = uuid.uuid4().hex[:12]
_connection_ids = itertools.count(1)


def new_connection_id() -> str:
    """Unique across server processes: this process's random id and a counter."""
    return f"{_process_id}.{next(_connection_ids)}"


class PresenceTracker:
    """This process's (and event loop's) present connections, renewed by one timer."""

    def __init__(self, layer: BaseChannelLayer) -> None:
        self.layer = layer
        self.store = store_for(layer)
        self._entries: dict[str, dict[str, tuple[str, str]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._passes: dict[int, asyncio.Task[None]] = {}  # host -> its renewal under way

    @property
    def ttl(self) -> float:
        return float(conf.get_settings().PRESENCE_TTL_SECONDS)

    async def join(self, channel: str, connection: str, key: str, info: str) -> None:
        """Make ``connection`` present on ``channel``; raises (and it is not present)
        when the store is away."""
        changes = await self.store.join(channel, [(connection, key, info)], self.ttl)
        self._entries.setdefault(channel, {})[connection] = (key, info)
        get_metrics().presence_joined()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        # Present from here on, whatever the announcement does: the caller must know it
        # has a connection to leave (a snapshot read later has the join anyway).
        try:
            await announce(self.layer, channel, changes)
        except Exception as exc:
            log_layer_error(logger, exc, "Presence: announcing a join on %s failed", channel)

    async def leave(self, channel: str, connection: str) -> None:
        """Remove ``connection``; a store that is away is logged (its entry expires)."""
        entries = self._entries.get(channel, {})
        if entries.pop(connection, None) is None:
            return
        get_metrics().presence_left()
        if not entries:
            self._entries.pop(channel, None)
        try:
            await announce(self.layer, channel, await self.store.leave(channel, [connection]))
        except Exception as exc:
            log_layer_error(logger, exc, "Presence: leaving %s failed; the entry expires", channel)

    async def _run(self) -> None:
        while self._entries:
            await asyncio.sleep(conf.get_settings().PRESENCE_HEARTBEAT_SECONDS)
            self._start_passes()  # not waited for: a hung host must not delay the next beat

    async def heartbeat(self) -> None:
        """Renew every connection of this process (joining again what the store lost,
        after a Redis restart), announce what that pruned or joined, and wait for it; a
        host whose last pass is still running is waited for, not renewed twice."""
        await asyncio.gather(*self._start_passes())

    def _start_passes(self) -> list[asyncio.Task[None]]:
        """A renewal pass per host, all hosts at once, none for a host whose last pass is
        still running: a host that does not answer holds back its own channels only, beat
        after beat, never the live hosts' users."""
        by_host: dict[int, list[tuple[str, dict[str, tuple[str, str]]]]] = defaultdict(list)
        for channel, entries in self._entries.items():
            try:
                host = self.store.host(channel)
            except Exception as exc:
                log_layer_error(logger, exc, "Presence heartbeat for %s failed", channel)
                continue
            by_host[host].append((channel, entries))
        passes = []
        for host, channels in by_host.items():
            running = self._passes.get(host)
            if running is None or running.done():
                running = self._passes[host] = asyncio.create_task(self._renew_all(channels))
            passes.append(running)
        return passes

    async def _renew_all(self, channels: list[tuple[str, dict[str, tuple[str, str]]]]) -> None:
        for start in range(0, len(channels), _HEARTBEAT_CONCURRENCY):
            await asyncio.gather(
                *(
                    self._renew(channel, dict(entries))
                    for channel, entries in channels[start : start + _HEARTBEAT_CONCURRENCY]
                )
            )

    async def _renew(self, channel: str, entries: dict[str, tuple[str, str]]) -> None:
        batch = [(conn, key, info) for conn, (key, info) in entries.items()]
        try:
            changes = await self.store.join(channel, batch, self.ttl)
            await announce(self.layer, channel, changes)
        except Exception as exc:
            log_layer_error(logger, exc, "Presence heartbeat for %s failed", channel)


# Channels renewed at once: one script call each, so a few round trips for many channels.
_HEARTBEAT_CONCURRENCY = 64


_trackers: PerLoopAndLayer[PresenceTracker] = PerLoopAndLayer(PresenceTracker)


def get_presence_tracker(layer: BaseChannelLayer) -> PresenceTracker:
    """The running event loop's tracker over ``layer``."""
    return _trackers.get(layer)
