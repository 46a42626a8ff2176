"""Presence in Redis: what a present socket costs, beside what its subscribe costs already.

Two rows, each side by side with its anchor in the same run, on a redis-server of its
own, through the RedisChannelLayer's own client:

- **join + leave**: one connection made present on a channel and removed again (two
  runs of eventbus's presence script) against the channel layer's ``group_add`` +
  ``group_discard`` of one channel (what the first socket of a process on a channel
  costs already). Target: at most 2x the anchor.
- **heartbeat**: one process renewing ``CONNECTIONS`` connections spread over
  ``CHANNELS`` channels (``PresenceTracker.heartbeat``: one script per channel, 64 at
  once) against the fan-out's refresh of the same channels (one ``group_add`` each,
  which every server process already does every 5 s). Target: at most 2x the anchor.

The cases take turns, round by round, and each figure is the median of its rounds.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from typing import Any

from bench._harness import main, row

TARGET = 2.0
CHANNELS = 100
CONNECTIONS = 1000


def run(quick: bool = False) -> list[dict[str, Any]]:
    from tests.services import RedisServer

    with RedisServer() as redis:
        os.environ["EVENTBUS_TEST_REDIS_URL"] = redis.url
        os.environ["EVENTBUS_TEST_LAYER"] = "channels_redis.core.RedisChannelLayer"
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
        import django

        django.setup()
        from django.test.utils import override_settings

        with override_settings(
            EVENTBUS={"CATALOGS": [], "PRESENCE": "tests.testapp.presence.presence"}
        ):
            timings = asyncio.run(_measure(quick))
    join_ours, join_anchor = timings["join_leave"], timings["group_add_discard"]
    beat_ours, beat_anchor = timings["heartbeat"], timings["refresh"]
    return [
        row(
            "presence_join_leave",
            "one connection made present and removed (2 script runs)",
            eventbus=join_ours * 1e6,
            anchor=join_anchor * 1e6,
            anchor_name="channel layer group_add + group_discard",
            unit="µs",
            target=f"≤ {TARGET:g}×",
            met=join_ours <= TARGET * join_anchor,
        ),
        row(
            "presence_heartbeat",
            f"one process renewing {CONNECTIONS} connections on {CHANNELS} channels",
            eventbus=beat_ours * 1e3,
            anchor=beat_anchor * 1e3,
            anchor_name=f"the fan-out's refresh (group_add) of {CHANNELS} groups",
            unit="ms",
            target=f"≤ {TARGET:g}×",
            met=beat_ours <= TARGET * beat_anchor,
        ),
    ]


async def _measure(quick: bool) -> dict[str, float]:
    from eventbus.bus import get_event_bus
    from eventbus.presence import PresenceTracker

    layer = get_event_bus().layer
    tracker = PresenceTracker(layer)
    channels = [f"eventbus.project.bench{n}" for n in range(CHANNELS)]
    # The heartbeat's connections, put in place without their joins' announcements.
    for n in range(CONNECTIONS):
        channel = channels[n % CHANNELS]
        tracker._entries.setdefault(channel, {})[f"bench.{n}"] = (str(n % 300), "{}")
    await tracker.heartbeat()
    fanout_channel = await layer.new_channel("bench.")
    pairs = 50 if quick else 1000
    beats = 2 if quick else 20

    async def join_leave() -> float:
        start = time.perf_counter()
        for n in range(pairs):
            await tracker.store.join("eventbus.project.solo", [(f"solo.{n}", "1", "{}")], 30)
            await tracker.store.leave("eventbus.project.solo", [f"solo.{n}"])
        return (time.perf_counter() - start) / pairs

    async def group_add_discard() -> float:
        start = time.perf_counter()
        for _ in range(pairs):
            await layer.group_add("eventbus.project.solo", fanout_channel)
            await layer.group_discard("eventbus.project.solo", fanout_channel)
        return (time.perf_counter() - start) / pairs

    async def heartbeat() -> float:
        start = time.perf_counter()
        for _ in range(beats):
            await tracker.heartbeat()
        return (time.perf_counter() - start) / beats

    async def refresh() -> float:
        start = time.perf_counter()
        for _ in range(beats):
            for channel in channels:
                await layer.group_add(channel, fanout_channel)
        return (time.perf_counter() - start) / beats

    cases = {
        "join_leave": join_leave,
        "group_add_discard": group_add_discard,
        "heartbeat": heartbeat,
        "refresh": refresh,
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    deadline = time.monotonic() + (10 if quick else 60)
    for _ in range(2 if quick else 5):
        for name, measure in cases.items():
            samples[name].append(await measure())
        if time.monotonic() > deadline:
            break
    return {name: statistics.median(values) for name, values in samples.items()}


if __name__ == "__main__":
    main(run)
