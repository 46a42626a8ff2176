"""A process holding many WebSocket clients: ``python -m tests.deploy.clients PLAN OUT``.

PLAN (JSON) names the server (``host``, ``port``, ``path``) and one entry per socket: its
session cookie and the channels it subscribes to, each from position 0. The process opens
the sockets (at most ``CONNECTING`` handshakes at a time, each tried up to
``HANDSHAKE_ATTEMPTS`` times), subscribes, and writes OUT's
``.ready`` file: how many sockets each worker process took (the ``x-eventbus-worker``
header of ``tests/deploy/asgi.py``), and any socket whose subscribe was refused.
Then it reads until SIGTERM, writing the number of frames received to OUT's ``.progress``
file twice a second. On SIGTERM it writes OUT: for each socket, its worker and the
frames it got, as ``[kind, channel, position, event id]``, in the order they came.
Every wait is bounded; the process exits by itself after ``MAX_SECONDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench._ws import Client, close_all, open_client

CONNECTING = 20
# A handshake that times out (2 busy cores) is tried again, as a browser client would.
HANDSHAKE_ATTEMPTS = 3
SUBSCRIBE_TIMEOUT = 60.0
MAX_SECONDS = 900.0
PROGRESS_EVERY = 0.5


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` whole: readers never see half a file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data))
    partial.replace(path)


def worker_of(client: Client) -> str:
    response = client.response
    return response.headers.get("x-eventbus-worker", "?") if response is not None else "?"


def frames_of(client: Client) -> list[list[Any]]:
    """The socket's frames as ``[kind, channel, position, event id]`` (other kinds whole)."""
    found: list[list[Any]] = []
    for _, raw in client.frames:
        frame = json.loads(raw)
        kind = frame.get("type")
        if kind == "event":
            found.append(["event", frame["channel"], frame.get("position"), frame["event"]["id"]])
        elif kind in ("subscribed", "reset"):
            found.append([kind, frame["channel"], frame.get("position"), None])
        else:
            found.append([kind or "?", frame.get("channel"), None, json.dumps(frame)[:300]])
    return found


async def open_all(plan: dict[str, Any], retries: list[str]) -> list[Client]:
    slots = asyncio.Semaphore(CONNECTING)

    async def one(entry: dict[str, Any]) -> Client:
        for attempt in range(1, HANDSHAKE_ATTEMPTS + 1):
            try:
                async with slots:
                    client = await open_client(
                        plan["host"], plan["port"], plan["path"], cookie=entry["cookie"]
                    )
                break
            except (TimeoutError, OSError) as exc:
                if attempt == HANDSHAKE_ATTEMPTS:
                    raise
                retries.append(f"{type(exc).__name__}: {exc}"[:200])
        for channel in entry["channels"]:
            client.send_json({"action": "subscribe", "channel": channel, "position": 0})
        return client

    return list(await asyncio.gather(*(one(entry) for entry in plan["sockets"])))


async def wait_subscribed(clients: list[Client], plan: dict[str, Any]) -> list[str]:
    """Wait (bounded) for each socket's answers to its subscribes; the refusals, if any."""
    wanted = [len(entry["channels"]) for entry in plan["sockets"]]
    deadline = time.monotonic() + SUBSCRIBE_TIMEOUT
    while any(c.received < n for c, n in zip(clients, wanted, strict=True)):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    refused = []
    for n, client in enumerate(clients):
        answers = frames_of(client)
        if len(answers) < wanted[n] or any(a[0] != "subscribed" for a in answers):
            refused.append(f"socket {n}: {answers or 'no answer'}"[:300])
    return refused


async def main(plan_path: Path, out: Path) -> None:
    plan = json.loads(plan_path.read_text())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    started = time.monotonic()
    retries: list[str] = []
    clients = await open_all(plan, retries)
    refused = await wait_subscribed(clients, plan)
    workers: dict[str, int] = {}
    for client in clients:
        workers[worker_of(client)] = workers.get(worker_of(client), 0) + 1
    ready = {
        "sockets": len(clients),
        "workers": workers,
        "refused": refused,
        "handshake_retries": retries,
        "seconds": round(time.monotonic() - started, 2),
    }
    write_json(out.with_suffix(".ready"), ready)
    deadline = time.monotonic() + MAX_SECONDS
    while not stop.is_set() and time.monotonic() < deadline:
        progress = {
            "received": sum(c.received for c in clients),
            "closed": sum(not c.is_open for c in clients),
        }
        write_json(out.with_suffix(".progress"), progress)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PROGRESS_EVERY)
    sockets = [
        {
            "worker": worker_of(client),
            "channels": entry["channels"],
            "open": client.is_open,
            "frames": frames_of(client),
        }
        for client, entry in zip(clients, plan["sockets"], strict=True)
    ]
    cpu = round(time.process_time(), 2)
    write_json(out, {"ready": ready, "sockets": sockets, "cpu_seconds": cpu})
    await close_all(clients)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
