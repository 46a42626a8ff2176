"""The replay abuser of tests/security (issue 12, item 4), in a process of its own.

``python -m tests.security.abuser WS_URL ORIGIN SESSION CHANNEL SOCKETS SECONDS``

Each of SOCKETS sockets subscribes to CHANNEL from position 0 (a full replay), reads
the replay, unsubscribes, and again, until its standard input closes (or SECONDS pass);
then it prints how many replays were answered and how many resets, as JSON. It runs apart from the test so that the
timed bystander's client does not share an event loop, or a core's time slices, with
the abusers' clients: what is measured is the server's fairness to other tenants.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time

from websockets.asyncio.client import connect


async def abuse(
    url: str, origin: str, session: str, channel: str, until: float, stop: asyncio.Event
) -> tuple[int, int]:
    replays = resets = 0
    async with connect(
        url,
        origin=origin,  # type: ignore[arg-type]
        additional_headers={"Cookie": f"sessionid={session}"},
        open_timeout=20,
        close_timeout=2,
        compression=None,
    ) as conn:

        async def recv() -> dict[str, object]:
            return json.loads(await asyncio.wait_for(conn.recv(), 60))  # type: ignore[no-any-return]

        while time.monotonic() < until and not stop.is_set():
            await conn.send(json.dumps({"action": "subscribe", "channel": channel, "position": 0}))
            answer = await recv()
            replayed = int(answer.get("replayed", 0))  # type: ignore[call-overload]
            received = 0
            while received < replayed:  # the replay, after a reset frame if one came
                if (await recv()).get("type") == "reset":
                    resets += 1
                else:
                    received += 1
            replays += replayed > 0
            await conn.send(json.dumps({"action": "unsubscribe", "channel": channel}))
            while (frame := await recv()).get("type") != "unsubscribed":
                resets += frame.get("type") == "reset"
    return replays, resets


async def main(
    url: str, origin: str, session: str, channel: str, sockets: int, seconds: float
) -> None:
    until = time.monotonic() + seconds
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def wait_for_eof() -> None:
        sys.stdin.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait_for_eof, daemon=True).start()
    results = await asyncio.gather(
        *(abuse(url, origin, session, channel, until, stop) for _ in range(sockets)),
        return_exceptions=True,
    )
    done = [r for r in results if isinstance(r, tuple)]
    errors = [repr(r) for r in results if not isinstance(r, tuple)]
    print(
        json.dumps(
            {
                "replays": sum(r[0] for r in done),
                "resets": sum(r[1] for r in done),
                "errors": errors,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    url, origin, session, channel, sockets, seconds = sys.argv[1:7]
    asyncio.run(main(url, origin, session, channel, int(sockets), float(seconds)))
