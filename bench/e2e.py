"""5-7. End to end: publish → Redis → a real uvicorn → WebSocket clients over TCP.

Starts its own services: a private redis-server and two uvicorn processes serving
``bench.asgi``, one measured through eventbus's consumer (``/ws/events/``), the other
through the hand-written anchor (``/ws/plain/``), so that neither's memory reuses the
other's. Both servers share this process's test database (SQLite), where a signed-in
member is made; every client sends its session cookie and our own ``Origin``. Both
sides use ``RedisChannelLayer`` and take turns, phase by phase:

5. Latency: events published at a steady rate (``EventBus().publish`` against a plain
   ``channel_layer.group_send``) to 1, 100 and 1,000 subscribed clients: per (client,
   event), receive time minus publish time, and the events each client missed.
6. Fan-out: one event to 1,000 subscribers, until the last one has it.
7. Memory: server RSS per idle subscribed socket; and server RSS while one client never
   reads a long burst that another client reads (eventbus should close the stalled
   socket with 4408 after ``WS_SEND_TIMEOUT``).

Every client runs in this process (``bench._ws``); every wait is bounded. Rows also
carry the server's CPU time per event, read from /proc. ``--profile PREFIX`` records
both servers with py-spy during the largest latency run (collapsed stacks in
``PREFIX-<side>-latency.txt``); docs/performance.md summarizes what they showed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

from bench._harness import main, row
from bench._ws import Client, close_all, open_client, wait_received

LAYER = "channels_redis.core.RedisChannelLayer"
ANCHOR = "hand-written Channels consumer"
SEND_TIMEOUT = 2.0  # the servers' WS_SEND_TIMEOUT, so that a stalled client is cut off soon
IN_FLIGHT = 80  # events the reader may lag behind: below the layer's capacity (100)
STALL_BATCH = 20
STALL_RSS_BOUND_MB = 10.0
# Seconds: past WS_SEND_TIMEOUT, and well before uvicorn's keepalive gives up. uvicorn
# pings every 20 s and drops a socket whose pong has not come 20 s later, without a
# close frame: a stalled client that read again only at 20 s lost that race now and then
# (a ping sent just before or after the stall began), and was reported "closed with None".
STALL_READ_AFTER = 10.0
CONNECT_CONCURRENCY = 50
GAVE_UP = "the client stopped reading"  # eventbus.consumers' warning
FLOOR = "one frame written to every socket by a bare asyncio server (bench.floor_server)"
LATENCY_TARGET = "p50 ≤ 5 ms, p99 ≤ 25 ms, 0 missed, ≤ 1.1× anchor"


@dataclass(frozen=True)
class Plan:
    latency: tuple[tuple[int, float, int], ...]  # (clients, events per second, events)
    fanout_clients: int
    fanout_repeats: int
    stall_events: int
    stall_title: int  # characters: frames of about this + 400 bytes


# 1,000 clients get 1 event/s: the anchor spends about 0.3 s of CPU per event there
# (see the rows' server_cpu_ms_per_event), so at 20/s it would not keep up and the run
# would measure its queue, not latency. 50,000 stalled events (50 MB, over ten times
# what the kernel's socket buffers hold) fit the time budget: a server takes ~800 a
# second, four Redis round trips each; --stall-events 100000 takes two minutes more.
FULL = Plan(((1, 20.0, 100), (100, 20.0, 100), (1_000, 1.0, 10)), 1_000, 10, 50_000, 600)
# Quick frames are larger, so that 2,000 of them still overflow the kernel's buffers.
QUICK = Plan(((1, 20.0, 20), (10, 20.0, 20)), 100, 3, 2_000, 4_000)


def run(quick: bool = False, profile: str = "", stall_events: str = "") -> list[dict[str, Any]]:
    plan = QUICK if quick else FULL
    if stall_events:
        plan = dataclasses.replace(plan, stall_events=int(stall_events))
    biggest = max(plan.fanout_clients, *(clients for clients, _, _ in plan.latency))
    with services(biggest) as (servers, cookie, projects):
        return asyncio.run(_measure(plan, servers, cookie, projects, profile))


@contextlib.contextmanager
def services(
    clients: int,
    server_env: dict[str, str] | None = None,
    app: str = "bench.asgi:application",
    uvicorns: int = 2,
    floors: int = 1,
) -> Iterator[tuple[list[Any], str, list[UUID]]]:
    """Redis, the test database with a signed-in member, ``uvicorns`` uvicorn servers,
    then ``floors`` floor servers.

    Yields the servers, the member's ``Cookie`` header and the projects it may watch.
    Everything is stopped and removed on the way out, errors included.
    """
    _raise_open_files(4 * clients + 256)
    from tests.services import AsgiServer, RedisServer

    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(RedisServer())
        # redis-py's default 5 s read timeout equals the layer's blocking pop: an idle
        # receive() would then fail (django/channels_redis#422).
        redis_url = f"{redis.url}?socket_timeout=10"
        os.environ["EVENTBUS_TEST_REDIS_URL"] = redis_url
        os.environ["EVENTBUS_TEST_LAYER"] = LAYER
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
        import django

        django.setup()
        from django.db import connection
        from django.test.utils import setup_databases, teardown_databases

        databases = setup_databases(verbosity=0, interactive=False)
        stack.callback(teardown_databases, databases, verbosity=0)
        projects = [uuid4() for _ in range(16)]
        cookie = _member_cookie(projects)
        connection.close()  # the servers write to the database too: hold no SQLite lock
        env = {
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "EVENTBUS_TEST_REDIS_URL": redis_url,
            "EVENTBUS_TEST_LAYER": LAYER,
            "EVENTBUS_TEST_DB_NAME": str(connection.settings_dict["NAME"]),
            # One signed-in user holds up to 1,000 sockets here, opened at once: the
            # per-user limits against hostile clients would refuse most of them.
            "EVENTBUS_TEST_SETTINGS_OVERRIDE": json.dumps(
                {
                    "WS_SEND_TIMEOUT": SEND_TIMEOUT,
                    "WS_MAX_CONNECTIONS_PER_USER": 100_000,
                    "WS_CONNECTS_PER_MINUTE": 100_000,
                }
            ),
            "EVENTBUS_TEST_LOG": "1",  # eventbus's warnings, for _until_given_up
            **(server_env or {}),
        }
        servers = [AsgiServer(app=app, env=env, server="uvicorn") for _ in range(uvicorns)]

        class FloorServer(AsgiServer):
            name = "floor"

            def _command(self) -> list[str]:
                return [sys.executable, "-m", "bench.floor_server", "--port", str(self.port)]

        servers += [FloorServer(env=env) for _ in range(floors)]
        for server in servers:
            stack.callback(server.close)
        # Django takes seconds to import: start them all at once (entering each server's
        # context would start them one after the other).
        with ThreadPoolExecutor(len(servers)) as pool:
            list(pool.map(lambda server: server.start(), servers))
        yield servers, cookie, projects


def _raise_open_files(needed: int) -> None:
    # Set before the servers start, so that they inherit it too.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        limit = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


def _member_cookie(projects: list[UUID]) -> str:
    """A signed-in member of every project: its ``Cookie`` header."""
    from django.contrib.auth import get_user_model
    from django.test import Client as HttpClient

    from tests.testapp.models import Membership

    user = get_user_model().objects.create(username="bench")
    Membership.objects.bulk_create(Membership(user=user, project_id=p) for p in projects)
    http = HttpClient()
    http.force_login(user)
    return f"sessionid={http.cookies['sessionid'].value}"


# -- the two sides ---------------------------------------------------------------------------


class Side:
    """One server, how its clients subscribe, and how events are published to them."""

    name: str
    closes_slow_clients = False

    def __init__(self, server: Any, cookie: str) -> None:
        self.server = server
        self.cookie = cookie

    @property
    def pid(self) -> int:
        assert self.server._proc is not None
        return int(self.server._proc.pid)

    def rss_mb(self) -> float:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS in /proc/<pid>/status")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far."""
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def open(self, channel: str, keep: bool = True, **options: Any) -> Client:
        """A client subscribed to ``channel``."""
        raise NotImplementedError

    async def publish(self, channel: str, event: Any) -> float:
        """Publish ``event`` to ``channel``; return ``perf_counter()`` from just before."""
        raise NotImplementedError

    async def open_many(self, channel: str, count: int) -> list[Client]:
        clients: list[Client] = []
        deadline = time.monotonic() + 30 + count * 0.05
        try:
            for start in range(0, count, CONNECT_CONCURRENCY):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name}: {len(clients)} of {count} connected in time")
                batch = min(CONNECT_CONCURRENCY, count - start)
                results = await asyncio.gather(
                    *(self.open(channel) for _ in range(batch)), return_exceptions=True
                )
                clients += [r for r in results if isinstance(r, Client)]
                errors = [r for r in results if isinstance(r, BaseException)]
                if errors:
                    raise errors[0]
        except BaseException:
            await close_all(clients)
            raise
        return clients


class EventbusSide(Side):
    name = "eventbus"
    closes_slow_clients = True

    def __init__(self, server: Any, cookie: str) -> None:
        super().__init__(server, cookie)
        from eventbus.bus import EventBus

        self.bus = EventBus()

    async def open(self, channel: str, keep: bool = True, **options: Any) -> Client:
        server = self.server
        client = await open_client(
            server.host, server.port, "/ws/events/", cookie=self.cookie, **options
        )
        client.send_json({"action": "subscribe", "channel": channel})
        if not await wait_received([client], 1, timeout=10):
            client.abort()
            raise TimeoutError("no answer to subscribe")
        ((_, raw),) = client.take_frames()
        answer = json.loads(raw)
        if (answer.get("type"), answer.get("channel"), answer.get("replayed")) != (
            "subscribed",
            channel,
            0,
        ):
            client.abort()
            raise RuntimeError(f"subscribe was answered with {raw!r}")
        client.keep = keep
        return client

    async def publish(self, channel: str, event: Any) -> float:
        started = time.perf_counter()
        await self.bus.send(channel, event)
        return started


class AnchorSide(Side):
    name = "anchor"

    def __init__(self, server: Any, cookie: str) -> None:
        super().__init__(server, cookie)
        from channels.layers import get_channel_layer

        self.layer = get_channel_layer()

    async def open(self, channel: str, keep: bool = True, **options: Any) -> Client:
        # The plain consumer joins its group before it accepts: open means subscribed.
        server = self.server
        path = f"/ws/plain/?group={channel}"
        return await open_client(
            server.host, server.port, path, cookie=self.cookie, keep=keep, **options
        )

    async def publish(self, channel: str, event: Any) -> float:
        started = time.perf_counter()
        await self.layer.group_send(channel, self.message(channel, event))
        return started

    def message(self, channel: str, event: Any) -> dict[str, Any]:
        text = json.dumps(
            {"type": "event", "channel": channel, "event": event.model_dump(mode="json")}
        )
        return {"type": "plain.message", "text": text}


class FloorSide(AnchorSide):
    """bench.floor_server: one frame encoded once, written to every socket of the group."""

    name = "floor"

    def message(self, channel: str, event: Any) -> dict[str, Any]:
        # The floor server reads one channel for all its groups: say which.
        return {**super().message(channel, event), "group": channel}


# -- the measurements --------------------------------------------------------------------------


async def _measure(
    plan: Plan, servers: list[Any], cookie: str, projects: list[UUID], profile: str
) -> list[dict[str, Any]]:
    from eventbus import get_event_dispatcher
    from eventbus.bus import EventBus
    from tests.testapp.events import ShopEvent

    build = get_event_dispatcher().build
    sides = [EventbusSide(servers[0], cookie), AnchorSide(servers[1], cookie)]
    unused = iter(projects)

    def new_channel(title: str = "bench") -> tuple[str, Callable[[int], Any]]:
        """A fresh channel, and how to make its n-th event."""
        project = next(unused)

        def make(n: int) -> Any:
            data = {"order_id": n, "title": title}
            return build(ShopEvent.ORDER_PLACED, data, project_id=project)

        return EventBus.get_project_channel(project), make

    # Warm up each server (imports, thread pool, layer connections) before reading RSS.
    for side in sides:
        channel, make = new_channel()
        clients = await side.open_many(channel, 5)
        await _steady(side, clients, channel, make, 5, 20.0)
        await close_all(clients)

    results: dict[str, dict[Any, dict[str, Any]]] = {side.name: {} for side in sides}
    largest = max(plan.latency)
    for side in sides:
        channel, make = new_channel()
        memory, fanout, clients = await _idle_and_fanout(side, channel, make, plan)
        results[side.name].update(memory=memory, fanout=fanout)
        try:
            if largest[0] == plan.fanout_clients:  # these clients serve its latency run too
                async with _profiled(profile, side):
                    results[side.name][largest] = await _steady(
                        side, clients, channel, make, largest[2], largest[1]
                    )
                memory["rss_after_latency_mb"] = round(side.rss_mb(), 1)
        finally:
            await close_all(clients)
    # Fresh servers for the rest: after holding 1,000 sockets, a server stalled for
    # ~200 ms now and then (p99 at 100 clients 230 ms, against 50 ms fresh).
    await asyncio.gather(*(asyncio.to_thread(side.server.restart) for side in sides))
    for setting in plan.latency:
        for side in sides:
            if setting in results[side.name]:
                continue
            channel, make = new_channel()
            clients = await side.open_many(channel, setting[0])
            try:
                results[side.name][setting] = await _steady(
                    side, clients, channel, make, setting[2], setting[1]
                )
            finally:
                await close_all(clients)
    results["floor"] = await _floor(FloorSide(servers[2], cookie), new_channel, plan)
    for side in sides:
        channel, make = new_channel("x" * plan.stall_title)
        results[side.name]["stall"] = await _stall(side, channel, make, plan.stall_events)
    return _rows(plan, results["eventbus"], results["anchor"], results["floor"])


async def _floor(
    side: Side, new_channel: Callable[[], tuple[str, Callable[[int], Any]]], plan: Plan
) -> dict[Any, dict[str, Any]]:
    """The same fan-out and latency runs against bench.floor_server."""
    channel, make = new_channel()
    clients = await side.open_many(channel, 5)
    await _steady(side, clients, channel, make, 5, 20.0)  # warm up
    await close_all(clients)
    channel, make = new_channel()
    _, fanout, clients = await _idle_and_fanout(side, channel, make, plan)
    results: dict[Any, dict[str, Any]] = {"fanout": fanout}
    try:
        for setting in sorted(plan.latency, reverse=True):
            if setting[0] != len(clients):
                await close_all(clients)
                channel, make = new_channel()
                clients = await side.open_many(channel, setting[0])
            results[setting] = await _steady(side, clients, channel, make, setting[2], setting[1])
    finally:
        await close_all(clients)
    return results


async def _steady(
    side: Side,
    clients: list[Client],
    channel: str,
    make: Callable[[int], Any],
    count: int,
    rate: float,
) -> dict[str, Any]:
    """Publish ``count`` events at ``rate`` per second; latency of every (client, event)."""
    for client in clients:
        client.take_frames()
    sent: dict[str, float] = {}
    cpu = side.cpu_seconds()
    start = time.perf_counter()
    for n in range(count):
        delay = start + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        event = make(n)
        sent[str(event.id)] = await side.publish(channel, event)
    await wait_received(clients, count, timeout=10)
    cpu = side.cpu_seconds() - cpu
    latencies: list[float] = []
    missed: list[int] = []
    for client in clients:
        got = _first_arrivals(client.take_frames(), sent)
        latencies += got.values()
        missed.append(count - len(got))
    return {
        **_percentiles(latencies),
        "missed": sum(missed),
        "clients_missing_events": sum(1 for m in missed if m),
        "events": count,
        "server_cpu_ms_per_event": round(cpu * 1000 / count, 1),
    }


def _first_arrivals(frames: list[tuple[float, bytes]], sent: dict[str, float]) -> dict[str, float]:
    """Milliseconds from publish to arrival, per event id."""
    got: dict[str, float] = {}
    for arrived, raw in frames:
        frame = json.loads(raw)
        if frame.get("type") != "event":
            continue
        event_id = frame["event"]["id"]
        if event_id in sent and event_id not in got:
            got[event_id] = (arrived - sent[event_id]) * 1000
    return got


def _percentiles(latencies: list[float]) -> dict[str, float | None]:
    if not latencies:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(latencies)
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
        "max_ms": round(ordered[-1], 3),
    }


async def _idle_and_fanout(
    side: Side, channel: str, make: Callable[[int], Any], plan: Plan
) -> tuple[dict[str, Any], dict[str, Any], list[Client]]:
    """RSS per idle subscribed socket; then single events, each until the last client has it.

    Returns the clients, still open, for the caller to reuse and close.
    """
    count = plan.fanout_clients
    await asyncio.sleep(0.5)
    before = side.rss_mb()
    clients = await side.open_many(channel, count)
    try:
        await asyncio.sleep(1.0)  # let the server settle
        after = side.rss_mb()
        memory = {
            "clients": count,
            "rss_before_mb": round(before, 1),
            "rss_after_mb": round(after, 1),
            "kb_per_socket": round((after - before) * 1024 / count, 1),
        }
        spans: list[float] = []
        missed = 0
        cpu = side.cpu_seconds()
        for n in range(plan.fanout_repeats):
            event = make(n)
            sent = {str(event.id): await side.publish(channel, event)}
            await wait_received(clients, 1, timeout=10)
            arrivals = [_first_arrivals(client.take_frames(), sent) for client in clients]
            missed += sum(1 for got in arrivals if not got)
            spans.append(max((ms for got in arrivals for ms in got.values()), default=0.0))
            await asyncio.sleep(0.2)
        fanout = {
            "clients": count,
            "median_ms": round(statistics.median(spans), 3),
            "max_ms": round(max(spans), 3),
            "missed": missed,
            "repeats": len(spans),
            "server_cpu_ms_per_event": round(
                (side.cpu_seconds() - cpu) * 1000 / plan.fanout_repeats, 1
            ),
        }
    except BaseException:
        await close_all(clients)
        raise
    return memory, fanout, clients


async def _stall(
    side: Side, channel: str, make: Callable[[int], Any], count: int
) -> dict[str, Any]:
    """Server RSS while one subscriber never reads ``count`` events that another reads.

    The server's close frame waits behind what the stalled client has not read, and
    uvicorn drops the TCP connection (no close frame) ~30 s after closing. So on a
    side that closes slow clients, the stalled client reads again after
    STALL_READ_AFTER seconds, to find the close code; otherwise after the burst.
    ``gave_up_after_s`` is when the server gave up on the stalled socket.
    """
    log_start = len(side.server.log_text())
    good = await side.open(channel, keep=False)
    stalled = await side.open(channel, receive_buffer=16 * 1024)
    watcher: asyncio.Task[float | None] | None = None
    try:
        # Warm up: both read 200 events, so that the baseline has steady-state buffers.
        await _paced(side, [good, stalled], channel, make, 0, 200)
        stalled.take_frames()
        stalled.stop_reading()
        start = side.rss_mb()
        started = time.monotonic()
        watcher = asyncio.create_task(_until_given_up(side, started))
        loop = asyncio.get_running_loop()
        read_after = STALL_READ_AFTER if side.closes_slow_clients else 1e6
        wake = loop.call_later(read_after, stalled.resume_reading)
        if side.closes_slow_clients:  # read again as soon as the server has given up
            watcher.add_done_callback(lambda _: stalled.resume_reading())
        peak = await asyncio.wait_for(_paced(side, [good], channel, make, 200, count), 240)
        seconds = time.monotonic() - started
        end = side.rss_mb()
        # Stay stalled past WS_SEND_TIMEOUT (when the burst was short), then read again:
        # the kernel's buffers, then the close frame if one was sent; or, after a quiet
        # second, nothing more.
        await asyncio.sleep(max(0.0, min(SEND_TIMEOUT + 1.0, wake.when() - loop.time())))
        wake.cancel()
        stalled.resume_reading()
        deadline = time.monotonic() + 15
        seen = -1
        while not stalled.lost.done() and stalled.received != seen:
            if time.monotonic() > deadline:
                break
            seen = stalled.received
            await asyncio.sleep(1.0)
        if side.closes_slow_clients:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(watcher), 3)
    finally:
        if watcher is not None:
            watcher.cancel()
        await close_all([good, stalled])
    left = watcher.result() if watcher.done() and not watcher.cancelled() else None
    await asyncio.sleep(0.2)  # let the server log the disconnects
    errors = [
        line
        for line in side.server.log_text()[log_start:].splitlines()
        if line.startswith(("ERROR", "Traceback")) or "Error:" in line
    ]
    return {
        "events": count,
        "frame_bytes": len(_frame(channel, make(0))),
        "seconds": round(seconds, 1),
        "rss_start_mb": round(start, 1),
        "rss_peak_mb": round(peak, 1),
        "rss_end_mb": round(end, 1),
        "gave_up_after_s": round(left, 1) if left is not None else None,
        "close_code": stalled.close_code,
        "stalled_frames_read": stalled.received,
        "server_errors": errors[:3],
    }


async def _until_given_up(side: Side, since: float) -> float | None:
    """Seconds after ``since`` when the server said it gave up on the stalled socket
    (eventbus's warning in the server's log). Polls every 0.1 s, for 300 s at most.

    Not a Redis group count: eventbus's server process is one member of a group however
    many of its sockets subscribed."""
    start = len(side.server.log_text())
    for _ in range(3_000):
        if GAVE_UP in side.server.log_text()[start:]:
            return time.monotonic() - since
        await asyncio.sleep(0.1)
    return None


def _frame(channel: str, event: Any) -> str:
    """The frame eventbus sends for ``event`` (the anchor's is the same size, give or take)."""
    from eventbus.wire import event_frame, public_json

    return event_frame(channel, public_json(event))


async def _paced(
    side: Side,
    readers: list[Client],
    channel: str,
    make: Callable[[int], Any],
    first: int,
    count: int,
) -> float:
    """Publish in batches, never more than IN_FLIGHT events ahead of the readers.

    The layer holds at most 100 messages per server process and drops the rest: at the
    readers' pace every event is delivered. Returns the peak server RSS seen.
    """
    base = [reader.received for reader in readers]
    peak = 0.0
    for start in range(0, count, STALL_BATCH):
        batch = [make(first + n) for n in range(start, min(count, start + STALL_BATCH))]
        behind = start + len(batch) - IN_FLIGHT
        for reader, already in zip(readers, base, strict=True):
            if not await wait_received([reader], already + behind, timeout=10):
                raise TimeoutError(f"{side.name}: a reader stopped at {reader.received - already}")
        await asyncio.gather(*(side.publish(channel, event) for event in batch))
        peak = max(peak, side.rss_mb())
    for reader, already in zip(readers, base, strict=True):
        if not await wait_received([reader], already + count, timeout=10):
            raise TimeoutError(f"{side.name}: a reader got {reader.received - already}/{count}")
    return peak


@contextlib.asynccontextmanager
async def _profiled(prefix: str, side: Side) -> AsyncIterator[None]:
    """With a ``prefix``, py-spy samples the server while the block runs."""
    if not prefix:
        yield
        return
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    process = await asyncio.create_subprocess_exec(
        beside if os.path.exists(beside) else "py-spy", "record", "--pid", str(side.pid),
        "--format", "raw", "--rate", "250", "--nonblocking",
        "--output", f"{prefix}-{side.name}-latency.txt",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await asyncio.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        process.send_signal(2)  # SIGINT: py-spy writes its output and exits
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 15)
        if process.returncode is None:
            process.kill()


# -- the rows --------------------------------------------------------------------------------


def _rows(
    plan: Plan, ours: dict[Any, Any], anchor: dict[Any, Any], floor: dict[Any, Any]
) -> list[dict[str, Any]]:
    rows = []
    for setting in plan.latency:
        clients, rate, _ = setting
        mine, theirs = ours[setting], anchor[setting]
        target = met = None
        failed: list[str] = []
        if clients == 1_000:
            target = LATENCY_TARGET
            p50, p99 = mine["p50_ms"], mine["p99_ms"]
            failed = [name for name, bad in {
                "p50 over 5 ms": p50 is None or p50 > 5,
                "p99 over 25 ms": p99 is None or p99 > 25,
                "events missed": mine["missed"] > 0,
                "p50 over 1.1× the anchor's": (p50 or 0) > 1.1 * (theirs["p50_ms"] or 0),
            }.items() if bad]  # fmt: skip
            met = not failed
        rows.append(
            row(
                "e2e_latency",
                f"publish → {clients:,} WebSocket {_plural(clients, 'client')}, "
                f"{rate:g} {_plural(rate, 'event')}/s",
                eventbus=mine["p50_ms"] or 0.0,
                anchor=theirs["p50_ms"] or 0.0,
                anchor_name=ANCHOR,
                unit="ms p50",
                target=target,
                met=met,
                clients=clients,
                rate=rate,
                limit=floor[setting]["p50_ms"],
                limit_name=FLOOR,
                **mine,
                **_prefixed(theirs),
                **_prefixed(floor[setting], "floor"),
                **_notes("latency", failed),
            )
        )
    mine, theirs = ours["fanout"], anchor["fanout"]
    failed = [name for name, bad in {
        "median over 100 ms": mine["median_ms"] > 100, "events missed": mine["missed"] > 0,
    }.items() if bad]  # fmt: skip
    rows.append(
        row(
            "e2e_fanout",
            f"one event → {mine['clients']:,} subscribers, until the last has it",
            eventbus=mine["median_ms"],
            anchor=theirs["median_ms"],
            anchor_name=ANCHOR,
            unit="ms median",
            target="median ≤ 100 ms",
            met=not failed,
            limit=floor["fanout"]["median_ms"],
            limit_name=FLOOR,
            **mine,
            **_prefixed(theirs),
            **_prefixed(floor["fanout"], "floor"),
            **_notes("fanout", failed),
        )
    )
    mine, theirs = ours["memory"], anchor["memory"]
    failed = ["over 50 KB"] if mine["kb_per_socket"] > 50 else []
    rows.append(
        row(
            "e2e_memory",
            f"server RSS per idle subscribed WebSocket ({mine['clients']:,} sockets)",
            eventbus=mine["kb_per_socket"],
            anchor=theirs["kb_per_socket"],
            anchor_name=ANCHOR,
            unit="KB/socket",
            target="≤ 50 KB",
            met=not failed,
            **mine,
            **_prefixed(theirs),
            **_notes("memory", failed),
        )
    )
    mine, theirs = ours["stall"], anchor["stall"]
    growth = mine["rss_peak_mb"] - mine["rss_start_mb"]
    failed = [name for name, bad in {
        f"RSS grew {growth:.1f} MB": growth > STALL_RSS_BOUND_MB,
        f"closed with {mine['close_code']}, not 4408": mine["close_code"] != 4408,
        "the server never gave up on the stalled socket": mine["gave_up_after_s"] is None,
    }.items() if bad]  # fmt: skip
    rows.append(
        row(
            "e2e_stalled_client",
            f"server peak RSS while a client never reads {mine['events']:,} events",
            eventbus=mine["rss_peak_mb"],
            anchor=theirs["rss_peak_mb"],
            anchor_name=f"{ANCHOR} (never closes it)",
            unit="MB",
            target=f"growth ≤ {STALL_RSS_BOUND_MB:g} MB, closed with 4408",
            met=not failed,
            **mine,
            **_prefixed(theirs),
            **_notes("stall", failed),
        )
    )
    return rows


def _plural(count: float, noun: str) -> str:
    return noun if count == 1 else f"{noun}s"


def _prefixed(other: dict[str, Any], prefix: str = "anchor") -> dict[str, Any]:
    return {f"{prefix}_{key}": value for key, value in other.items() if key != "events"}


def _notes(kind: str, failed: list[str]) -> dict[str, str]:
    """Which parts of a target were missed, computed from the row (the why is in the profile:
    ``--profile``, summarized in docs/performance.md)."""
    if not failed:
        return {}
    return {"notes": "; ".join(failed)}


if __name__ == "__main__":
    main(run, profile="", stall_events="")
