"""The socket timeout eventbus gives channels_redis under redis-py 8 (eventbus/_redis.py)."""

import asyncio
import logging
import sys
from typing import Any
from uuid import uuid4

import pytest
import redis
from channels.layers import get_channel_layer
from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.test import override_settings

from eventbus import _redis, get_event_dispatcher
from eventbus._redis import redis_major
from eventbus.bus import EventBus, get_event_bus
from eventbus.fanout import get_fanout
from tests.testapp.events import ShopEvent

# Subscribing reads where each stream stands in the log, from the stream reader's thread.
pytestmark = pytest.mark.django_db(transaction=True)

CORE = "channels_redis.core.RedisChannelLayer"
PUBSUB = "channels_redis.pubsub.RedisPubSubChannelLayer"
EVENTBUS = {
    "CATALOGS": ["tests.testapp.events.EVENT_PAYLOAD_MAP"],
    "SINK": "eventbus.sinks.ChannelLayerSink",
}
# RedisChannelLayer blocks up to 5 s in BZPOPMIN: idling longer than that, plus a margin,
# is what redis-py 8's 5 s default socket timeout used to break.
IDLE_SECONDS = 6.5


class Collector:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    def on_message(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        self.arrived.set()


@pytest.mark.redis
@pytest.mark.parametrize("backend", [CORE, PUBSUB], ids=["core", "pubsub"])
async def test_an_idle_fanout_and_subscription_keep_the_layer_and_still_receive(
    backend: str, redis_url: str, caplog: pytest.LogCaptureFixture
):
    """What a default install runs: redis-py 8 and hosts without a socket_timeout.

    The fan-out and the subscription use two layer aliases, as two processes would: on one
    RedisChannelLayer, receivers of differently prefixed channels take turns at one lock.
    """
    # What the [redis] extra installs: redis-py 8, but below 8 on Python 3.11.
    expected_major_8 = sys.version_info >= (3, 12)
    assert (redis_major() >= 8) == expected_major_8, "the suite must run what users install"
    config = {"BACKEND": backend, "CONFIG": {"hosts": [redis_url]}}
    channel = EventBus.get_project_channel(uuid4())
    with override_settings(CHANNEL_LAYERS={"default": config, "other": config}, EVENTBUS=EVENTBUS):
        bus = get_event_bus()
        fanout = get_fanout(bus.layer)
        member = Collector()
        await fanout.join(channel, member)
        try:
            async with EventBus("other").subscribe([channel]) as events:
                with caplog.at_level(logging.WARNING, logger="eventbus"):
                    await asyncio.sleep(IDLE_SECONDS)
                event = get_event_dispatcher().build(
                    ShopEvent.ORDER_PLACED, {"order_id": 1, "title": "after the idle"}
                )
                await bus.send(channel, event)
                assert await asyncio.wait_for(anext(events), 5) == event
                await asyncio.wait_for(member.arrived.wait(), 5)
        finally:
            await fanout.leave(channel, member)
            await bus.layer.flush()
    lost = [r.getMessage() for r in caplog.records if "lost the channel layer" in r.getMessage()]
    assert lost == []


def redis_py(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    monkeypatch.setattr(redis, "__version__", version)


HOSTS = [
    "redis://127.0.0.1:6379/0",
    ("127.0.0.1", 6380),
    {"address": "redis://127.0.0.1:6381", "password": "x"},
    {"address": "redis://127.0.0.1:6382?socket_timeout=3"},
    {"address": "redis://127.0.0.1:6383", "socket_timeout": None},
    {"host": "127.0.0.1", "port": 6384, "socket_timeout": 1.5},
]


def test_hosts_without_a_socket_timeout_get_one_past_the_blocking_read(monkeypatch):
    redis_py(monkeypatch, "8.1.0")
    settings_hosts = [dict(h) if isinstance(h, dict) else h for h in HOSTS]
    layer = RedisChannelLayer(hosts=settings_hosts)

    assert _redis.configure(layer) is layer
    timeout = RedisChannelLayer.brpop_timeout + _redis.MARGIN_SECONDS
    assert layer.hosts == [
        {"address": "redis://127.0.0.1:6379/0", "socket_timeout": timeout},
        {"host": "127.0.0.1", "port": 6380, "socket_timeout": timeout},
        {"address": "redis://127.0.0.1:6381", "password": "x", "socket_timeout": timeout},
        # Explicit timeouts are the user's choice and stay, in the URL or the dict.
        {"address": "redis://127.0.0.1:6382?socket_timeout=3"},
        {"address": "redis://127.0.0.1:6383", "socket_timeout": None},
        {"host": "127.0.0.1", "port": 6384, "socket_timeout": 1.5},
    ]
    assert settings_hosts == HOSTS  # the settings' own dicts are not changed
    # The pools channels_redis makes from these hosts read with that timeout.
    assert layer.create_pool(0).connection_kwargs["socket_timeout"] == timeout
    assert layer.create_pool(3).connection_kwargs["socket_timeout"] == 3


def test_each_layer_is_configured_once(monkeypatch):
    redis_py(monkeypatch, "8.1.0")
    layer = RedisChannelLayer(hosts=["redis://127.0.0.1:6379"])
    _redis.configure(layer)
    layer.hosts[0]["socket_timeout"] = 42  # a later call must not undo what is there
    _redis.configure(layer)
    assert layer.hosts[0]["socket_timeout"] == 42


def test_redis_py_7_and_other_layers_are_left_alone(monkeypatch):
    redis_py(monkeypatch, "7.4.0")
    layer = RedisChannelLayer(hosts=["redis://127.0.0.1:6379"])
    assert _redis.configure(layer).hosts == [{"address": "redis://127.0.0.1:6379"}]

    redis_py(monkeypatch, "8.1.0")
    # The pub/sub layer polls for messages every 0.1 s: no read waits 5 s.
    pubsub = RedisPubSubChannelLayer(hosts=["redis://127.0.0.1:6379"])
    assert _redis.configure(pubsub)._kwargs == {"hosts": ["redis://127.0.0.1:6379"]}


def test_the_bus_configures_the_layer_it_gets(monkeypatch):
    redis_py(monkeypatch, "8.1.0")
    layers = {"default": {"BACKEND": CORE, "CONFIG": {"hosts": ["redis://127.0.0.1:6379"]}}}
    with override_settings(CHANNEL_LAYERS=layers, EVENTBUS=EVENTBUS):
        layer = EventBus().layer
        assert layer is get_channel_layer()
        assert layer.hosts[0]["socket_timeout"] == layer.brpop_timeout + _redis.MARGIN_SECONDS


def test_a_sentinel_entry_gets_the_timeout_and_stays_a_sentinel_pool(monkeypatch):
    """The master found through the sentinels is read with the same timeout."""
    from redis.asyncio.sentinel import SentinelConnectionPool

    redis_py(monkeypatch, "8.1.0")
    host = {"sentinels": [("127.0.0.1", 26379)], "master_name": "mymaster", "db": 1}
    layer = _redis.configure(RedisChannelLayer(hosts=[dict(host), "redis://127.0.0.1:6379"]))
    timeout = RedisChannelLayer.brpop_timeout + _redis.MARGIN_SECONDS
    assert layer.hosts[0] == {**host, "socket_timeout": timeout}
    pool = layer.create_pool(0)
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "mymaster"
    assert pool.connection_kwargs["socket_timeout"] == timeout
