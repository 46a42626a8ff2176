"""The two consumers of a chaos run, each a process writing what it gets to a records file.

``python -m tests.chaos.subscribers ws URL RECORDS CHANNEL...``: a WebSocket client (the
``websockets`` library) that subscribes to each channel from position 0 and, whenever the
connection drops, reconnects and resumes each channel from the last position it saw
there, with the epoch the server gave. It records every event frame (channel, position,
event id), every reset, and every (re)connection.

``python -m tests.chaos.subscribers python - RECORDS CHANNEL...``: ``EventBus.subscribe()``
in a process with the Django settings of ``tests.chaos.settings``, one subscription per
channel (so each event's channel is known); it records every event and every
``StreamReset``, and iterates on after a reset.

Records are JSON lines, line-buffered. Both run until killed (at most ``MAX_SECONDS``).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import IO, Any

MAX_SECONDS = 600.0
RETRY_FIRST, RETRY_MAX = 0.1, 1.0


def _writer(records: IO[str]) -> Any:
    def note(kind: str, **fields: Any) -> None:
        records.write(json.dumps({"kind": kind, "t": round(time.time(), 3), **fields}) + "\n")

    return note


async def websocket_consumer(url: str, channels: list[str], records: IO[str]) -> None:
    from websockets.asyncio.client import connect

    note = _writer(records)
    last = dict.fromkeys(channels, 0)
    epochs: dict[str, str | None] = dict.fromkeys(channels)
    origin = url.replace("ws://", "http://").split("/ws/")[0]
    delay = RETRY_FIRST
    ready = False
    deadline = time.monotonic() + MAX_SECONDS
    while time.monotonic() < deadline:
        try:
            async with connect(
                url, origin=origin, open_timeout=5, close_timeout=1, compression=None
            ) as ws:
                note("connected", resume=dict(last))
                for channel in channels:
                    await ws.send(
                        json.dumps(
                            {
                                "action": "subscribe",
                                "channel": channel,
                                "position": last[channel],
                                "epoch": epochs[channel],
                            }
                        )
                    )
                subscribed = 0
                async for raw in ws:
                    frame = json.loads(raw)
                    kind = frame.get("type")
                    channel = frame.get("channel")
                    if kind == "event":
                        position = frame.get("position")
                        note("event", channel=channel, position=position, id=frame["event"]["id"])
                        if isinstance(position, int) and position > last[channel]:
                            last[channel] = position
                    elif kind == "reset":
                        note("reset", channel=channel, reason=frame["reason"],
                             epoch=frame["epoch"], position=frame["position"])  # fmt: skip
                        last[channel] = frame["position"]
                        epochs[channel] = frame["epoch"]
                    elif kind == "subscribed":
                        note("subscribed", channel=channel, epoch=frame["epoch"],
                             position=frame["position"], replayed=frame["replayed"])  # fmt: skip
                        epochs[channel] = frame["epoch"] or None
                        subscribed += 1
                        if subscribed == len(channels):
                            delay = RETRY_FIRST
                            if not ready:
                                ready = True
                                note("ready")
                    elif kind == "error" and frame.get("code") == "unavailable":
                        # Redis was away when the server joined the channel: ask again.
                        note("frame", frame=frame)
                        await asyncio.sleep(RETRY_FIRST)
                        await ws.send(
                            json.dumps(
                                {
                                    "action": "subscribe",
                                    "channel": channel,
                                    "position": last[channel],
                                    "epoch": epochs[channel],
                                }
                            )
                        )
                    else:
                        note("frame", frame=frame)
        except Exception as exc:  # closed, refused, timed out: reconnect and resume
            note("disconnected", error=f"{type(exc).__name__}: {exc}"[:200])
        else:
            note("disconnected", error="closed")
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX)


async def python_consumer(channels: list[str], records: IO[str]) -> None:
    import django

    django.setup()
    from eventbus import StreamReset, get_event_bus

    note = _writer(records)
    bus = get_event_bus()

    async def follow(channel: str, started: asyncio.Event) -> None:
        subscription = bus.subscribe([channel])
        await subscription.start()
        started.set()
        while True:
            try:
                async for event in subscription:
                    note("event", channel=channel, id=str(event.id))
            except StreamReset as reset:
                note("reset", channel=channel, reason=reset.reason, epoch=reset.epoch,
                     position=reset.position)  # fmt: skip

    started = [asyncio.Event() for _ in channels]
    tasks = [asyncio.create_task(follow(c, s)) for c, s in zip(channels, started, strict=True)]
    await asyncio.wait_for(asyncio.gather(*(s.wait() for s in started)), 60)
    note("ready")
    done, _ = await asyncio.wait(tasks, timeout=MAX_SECONDS, return_when=asyncio.FIRST_EXCEPTION)
    for task in done:
        task.result()  # a consumer that crashed says why, in its log


def main() -> None:
    kind, url, path, *channels = sys.argv[1:]
    with open(path, "a", buffering=1) as records:
        if kind == "ws":
            asyncio.run(websocket_consumer(url, channels, records))
        else:
            asyncio.run(python_consumer(channels, records))


if __name__ == "__main__":
    main()
