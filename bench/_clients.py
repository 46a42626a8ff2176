"""A client process of bench.sockets: holds thousands of subscribed WebSockets (bench._ws).

One process cannot read 10,000 sockets and publish at the same time without measuring
its own queue, so bench.sockets spreads its clients over a few of these. Each reads one
JSON command per line on stdin and answers with one JSON line on stdout:

- ``{"do": "open", "side": "eventbus"|"floor", "servers": [[host, port], ...],
  "cookie": ..., "channel": ..., "count": N}``: N clients, spread over the servers in
  turn, each subscribed to ``channel``; answers ``{"opened": N}``.
- ``{"do": "wait", "count": K, "timeout": S}``: until every client has K text frames;
  answers ``{"ok": bool, "short": clients still short}``.
- ``{"do": "collect"}``: answers ``{"arrivals": {event id: [perf_counter(), ...]},
  "clients": N}``, the first arrival of each event at each client, and starts again.
- ``{"do": "close"}``: closes every client; ``{"closed": N}``.

Times are ``time.perf_counter()``, which on Linux is CLOCK_MONOTONIC, the same clock in
every process of the machine: the publisher's send times and these arrivals compare.
The process ends at end of input, so it never outlives bench.sockets.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from typing import Any

from bench._ws import Client, close_all, open_client, wait_received

CONNECT_CONCURRENCY = 50
# A busy 2-core machine: eventbus reads the session, the user and the membership of
# each socket from SQLite; under others' load that was about 30 sockets a second.
OPEN_SECONDS = 120
OPEN_SECONDS_PER_SOCKET = 0.1


async def _open_one(side: str, host: str, port: int, cookie: str, channel: str) -> Client:
    if side == "floor":
        return await open_client(host, port, f"/ws/plain/?group={channel}", cookie=cookie)
    client = await open_client(host, port, "/ws/events/", cookie=cookie)
    client.send_json({"action": "subscribe", "channel": channel})
    if not await wait_received([client], 1, timeout=30):
        client.abort()
        raise TimeoutError("no answer to subscribe")
    ((_, raw),) = client.take_frames()
    answer = json.loads(raw)
    if (answer.get("type"), answer.get("channel")) != ("subscribed", channel):
        client.abort()
        raise RuntimeError(f"subscribe was answered with {raw!r}")
    return client


async def _open(command: dict[str, Any], clients: list[Client]) -> dict[str, Any]:
    servers = [tuple(server) for server in command["servers"]]
    count = command["count"]
    deadline = time.monotonic() + OPEN_SECONDS + count * OPEN_SECONDS_PER_SOCKET
    for start in range(0, count, CONNECT_CONCURRENCY):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(clients)} of {count} connected in time")
        batch = range(start, min(count, start + CONNECT_CONCURRENCY))
        results = await asyncio.gather(
            *(
                _open_one(
                    command["side"], *servers[n % len(servers)], command["cookie"],
                    command["channel"],
                )
                for n in batch
            ),
            return_exceptions=True,
        )  # fmt: skip
        clients += [r for r in results if isinstance(r, Client)]
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
    return {"opened": len(clients)}


def _collect(clients: list[Client]) -> dict[str, Any]:
    arrivals: dict[str, list[float]] = {}
    for client in clients:
        seen: set[str] = set()
        for arrived, raw in client.take_frames():
            frame = json.loads(raw)
            if frame.get("type") != "event":
                continue
            event_id = frame["event"]["id"]
            if event_id not in seen:
                seen.add(event_id)
                arrivals.setdefault(event_id, []).append(arrived)
    return {"arrivals": arrivals, "clients": len(clients)}


async def serve() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    clients: list[Client] = []
    try:
        while line := await reader.readline():
            command = json.loads(line)
            try:
                if command["do"] == "open":
                    answer = await _open(command, clients)
                elif command["do"] == "wait":
                    ok = await wait_received(clients, command["count"], command["timeout"])
                    short = sum(1 for c in clients if c.received < command["count"])
                    answer = {"ok": ok, "short": short}
                elif command["do"] == "collect":
                    answer = _collect(clients)
                elif command["do"] == "close":
                    await close_all(clients)
                    answer, clients = {"closed": len(clients)}, []
                else:
                    answer = {"error": f"unknown command {command['do']!r}"}
            except Exception as exc:  # told to the parent, which stops the run
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
    finally:
        await close_all(clients)


if __name__ == "__main__":
    asyncio.run(serve())
