"""bench.relay_redis's subscribers, in a process of their own as browsers' servers would be.

Joins one channel to each group named on the command line, prints ``ready``, then counts
what arrives; on stdin's end it prints the count and exits. Receiving in the measuring
process would charge the relay and the plain loop for the subscribers' work too.

Run: ``python -m bench.relay_listener LAYER_CLASS REDIS_URL GROUP...``
"""

from __future__ import annotations

import asyncio
import sys

from django.utils.module_loading import import_string


async def listen(layer_class: str, url: str, groups: list[str]) -> None:
    layer = import_string(layer_class)(hosts=[url])
    channel = await layer.new_channel()
    for group in groups:
        await layer.group_add(group, channel)
    received = 0

    async def count() -> None:
        nonlocal received
        while True:
            await layer.receive(channel)
            received += 1

    counter = asyncio.create_task(count())
    await asyncio.sleep(0.2)  # pub/sub subscriptions settle
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await asyncio.sleep(0.5)  # the last messages arrive
    counter.cancel()
    print(received, flush=True)


if __name__ == "__main__":
    asyncio.run(listen(sys.argv[1], sys.argv[2], sys.argv[3:]))
