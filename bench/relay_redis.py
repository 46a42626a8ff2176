"""4. Relay into Redis: events per second from the event log to Channels groups.

eventbus's relay (batched claims, concurrent ``group_send``) against a plain loop of
``await channel_layer.group_send(...)`` over the same events, for one channel layer
per run (``--layer core`` for RedisChannelLayer, ``--layer pubsub`` for
RedisPubSubChannelLayer), with ``redis-benchmark`` PUBLISH (plain and pipelined)
printed beside it as the physical limit. Starts its own redis-server.

Three rounds take turns (relay, plain loop, relay into a sink that does nothing), and
each rate is the median of its rounds. The subscribers run in a process of their own
(``bench.relay_listener``) and count what arrives.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from typing import Any, NamedTuple

from bench._harness import main, row

TARGET = 4.0
LAYERS = {
    "core": "channels_redis.core.RedisChannelLayer",
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
}
PROJECTS = 10
ROUNDS = 3


def redis_benchmark(port: int, requests: int, pipeline: int) -> float | None:
    """PUBLISH requests per second by redis-benchmark, or None when it is not installed."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return None
    message = "x" * 300  # about the size of an event message on the layer
    output = subprocess.run(
        [binary, "-h", "127.0.0.1", "-p", str(port), "-n", str(requests),
         "-P", str(pipeline), "-q", "PUBLISH", "bench.channel", message],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    match = re.search(r"PUBLISH[^:\r\n]*: ([\d.]+) requests per second", output)
    return float(match.group(1)) if match else None


def run(quick: bool = False, layer: str = "core") -> list[dict[str, Any]]:
    from tests.services import RedisServer

    with RedisServer() as redis:
        os.environ["EVENTBUS_TEST_REDIS_URL"] = redis.url
        os.environ["EVENTBUS_TEST_LAYER"] = LAYERS[layer]
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
        import django

        django.setup()
        from django.test.utils import override_settings, setup_databases, teardown_databases

        databases = setup_databases(verbosity=0, interactive=False)
        try:
            with override_settings(
                EVENTBUS={
                    "CATALOGS": [],
                    "RELAY_SWEEP_AFTER": 0,
                    "RELAY_BATCH_SIZE": 500,
                }
            ):
                rates = asyncio.run(_measure(quick))
        finally:
            teardown_databases(databases, verbosity=0)
        requests = 10_000 if quick else 200_000
        publish_plain = redis_benchmark(redis.port, requests, 1)
        publish_pipelined = redis_benchmark(redis.port, requests, 16)
    ratio = rates.relay / rates.plain
    ceiling = rates.relay_null_sink / rates.plain
    notes = {}
    if ratio < TARGET:
        notes["notes"] = (
            f"the relay's database work alone (a sink that does nothing) runs at "
            f"{rates.relay_null_sink:,.0f} events/s, {ceiling:.1f}× the plain loop: "
            f"under {TARGET:g}× whatever sending costs"
        )
    return [
        row(
            "relay_redis",
            f"relay log → {layer} channel layer ({rates.events} events)",
            eventbus=rates.relay,
            anchor=rates.plain,
            anchor_name="plain loop of await group_send",
            unit="events/s",
            target=f"≥ {TARGET}×",
            met=ratio >= TARGET,
            limit=rates.relay_null_sink,
            limit_name="the relay into a sink that does nothing (its database work only)",
            layer=layer,
            rounds=rates.rounds,
            received_by_subscribers=rates.received,
            sent_to_subscribers=2 * rates.events * rates.rounds,
            redis_benchmark_publish=publish_plain,
            redis_benchmark_publish_pipelined_16=publish_pipelined,
            **notes,
        )
    ]


class Rates(NamedTuple):
    relay: float
    plain: float
    relay_null_sink: float
    events: int
    received: int
    rounds: int


async def _measure(quick: bool) -> Rates:
    from asgiref.sync import sync_to_async
    from channels.layers import get_channel_layer
    from django.utils import timezone

    from eventbus.bus import EventBus
    from eventbus.ids import uuid7
    from eventbus.models import DeliveryStatus, EventRecord
    from eventbus.relay import Relay
    from eventbus.sinks import InMemorySink
    from eventbus.wire import layer_message

    count = 500 if quick else 10_000
    layer = get_channel_layer()
    projects = [uuid.uuid4() for _ in range(PROJECTS)]
    # Subscribers to every project group, in a process of their own.
    listener = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.relay_listener",
        f"{type(layer).__module__}.{type(layer).__qualname__}",
        os.environ["EVENTBUS_TEST_REDIS_URL"],
        *(EventBus.get_project_channel(project) for project in projects),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert listener.stdout is not None and listener.stdin is not None
    ready = await asyncio.wait_for(listener.stdout.readline(), 30)
    if ready.strip() != b"ready":
        raise RuntimeError(f"bench.relay_listener did not start: {ready!r}")

    def fill() -> list[Any]:
        EventRecord.objects.all().delete()
        old = timezone.now() - timedelta(minutes=1)
        rows = []
        for n in range(count):
            event_id = uuid7()
            rows.append(
                EventRecord(
                    id=event_id,
                    type="order.deleted",
                    timestamp=old,
                    project_id=projects[n % PROJECTS],
                    payload={"order_id": n},
                    correlation_id=event_id,
                )
            )
        EventRecord.objects.bulk_create(rows, batch_size=500)
        return [r.to_event() for r in EventRecord.objects.order_by("timestamp", "id")]

    async def relay(sink: Any = None) -> float:
        """Seconds for the worker's own loop (manage.py eventbus_relay) to drain the log."""
        await sync_to_async(fill)()
        start = time.perf_counter()
        await asyncio.wait_for(Relay(sink=sink).arun(until_idle=True), 300)
        seconds = time.perf_counter() - start
        delivered = await sync_to_async(
            EventRecord.objects.filter(status=DeliveryStatus.DELIVERED).count
        )()
        if delivered != count:
            raise RuntimeError(f"relay delivered {delivered} of {count}")
        return seconds

    async def plain() -> float:
        events = await sync_to_async(fill)()
        start = time.perf_counter()
        for event in events:
            channel = EventBus.get_project_channel(event.project_id)
            await layer.group_send(channel, layer_message(event, channel))
        return time.perf_counter() - start

    # Rounds take turns, and each rate is the median of its rounds: one run to the next
    # varies by a fifth on this kind of machine (SQLite's fsyncs, the other processes).
    rounds = 1 if quick else ROUNDS
    relay_seconds, plain_seconds, null_seconds = [], [], []
    for _ in range(rounds):
        relay_seconds.append(await relay())
        plain_seconds.append(await plain())
        # The relay's own limit: the same backlog into a sink that does nothing, so all
        # that is left is the database work (claim, rebuild the events, mark delivered).
        null_seconds.append(await relay(InMemorySink()))
    listener.stdin.close()
    received = int(await asyncio.wait_for(listener.stdout.readline(), 30))
    await listener.wait()
    return Rates(
        count / statistics.median(relay_seconds),
        count / statistics.median(plain_seconds),
        count / statistics.median(null_seconds),
        count,
        received,
        rounds,
    )


if __name__ == "__main__":
    main(run, layer="core")
