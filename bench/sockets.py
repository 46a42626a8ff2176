"""Many sockets: 1,000 subscribed sockets on one server process, 10,000 across two.

For each scenario, eventbus (uvicorn serving ``bench.asgi``, ``/ws/events/``) and the
floor (``bench.floor_server``, a bare asyncio server that writes one pre-encoded frame to
every socket) run with the same number of processes, in the same run, one after the
other, each on freshly started servers:

- memory: the summed RSS of the side's server processes after N idle subscribed
  sockets, minus before, divided by N;
- fan-out: one event, until the last of the N sockets has it (median of a few);
- latency: events published at a steady rate, per (socket, event) publish-to-arrival
  p50 and p99, and how many (socket, event) pairs never arrived.

The clients live in ``bench._clients`` processes (two for 10,000 sockets), each opening
its share spread over the side's servers in turn, as a load balancer would. Publishing is
done here, as in bench.e2e: ``EventBus.send`` for eventbus, a plain ``group_send`` of
the same JSON for the floor. Every wait is bounded. ``--profile PREFIX`` records the
eventbus servers with py-spy during the latency run (``PREFIX-<scenario>-<pid>.txt``);
``--only 1k-1p`` runs one scenario.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from bench._clients import OPEN_SECONDS, OPEN_SECONDS_PER_SOCKET
from bench._harness import main, row
from bench.e2e import FLOOR, services

BEFORE_SETTLE = 0.5
IDLE_SETTLE = 2.0
FANOUT_GAP = 0.3


@dataclass(frozen=True)
class Scenario:
    name: str
    processes: int  # server processes per side
    sockets: int
    client_processes: int
    fanout_repeats: int
    rate: float  # events per second in the latency run
    events: int


FULL = (
    Scenario("1k-1p", 1, 1_000, 1, 10, 2.0, 20),
    Scenario("10k-2p", 2, 10_000, 2, 5, 1.0, 10),
)
QUICK = (
    Scenario("1k-1p", 1, 50, 1, 2, 10.0, 5),
    Scenario("10k-2p", 2, 100, 2, 2, 10.0, 5),
)
TARGET_RATIO = 1.5
TARGET_KB = 30.0


def run(quick: bool = False, profile: str = "", only: str = "") -> list[dict[str, Any]]:
    plan = QUICK if quick else FULL
    if only:  # --only 1k-1p: one scenario, for a before/after of one change
        plan = tuple(s for s in plan if s.name in only.split(","))
        if not plan:
            raise SystemExit(f"--only: no scenario named {only!r} (1k-1p, 10k-2p)")
    most = max(s.processes for s in plan)
    biggest = max(s.sockets for s in plan)
    # Servers 0..most-1 are eventbus's, the next `most` the floor's.
    with services(biggest, uvicorns=most, floors=most) as (servers, cookie, projects):
        return asyncio.run(
            _measure(plan, servers[:most], servers[most:], cookie, projects, profile, not quick)
        )


# -- the client processes ----------------------------------------------------------------------


class ClientProcess:
    """One ``bench._clients`` process, spoken to one JSON line at a time."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls) -> ClientProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench._clients",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=2**26,
        )  # fmt: skip
        return cls(process)

    async def ask(self, within: float, /, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        await self.process.stdin.drain()
        line = await asyncio.wait_for(self.process.stdout.readline(), within)
        if not line:
            raise RuntimeError(f"bench._clients ended (exit {self.process.returncode})")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"bench._clients: {answer['error']}")
        return answer

    async def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 15)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


async def _all(
    clients: list[ClientProcess], within: float, /, **command: Any
) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(c.ask(within, **command) for c in clients)))


# -- one side ------------------------------------------------------------------------------------


class Side:
    """The server processes of one side in a scenario, and how to publish to them."""

    def __init__(self, name: str, servers: list[Any], publish: Callable[[str, Any], Any]) -> None:
        self.name = name
        self.servers = servers
        self._publish = publish

    @property
    def pids(self) -> list[int]:
        return [int(server._proc.pid) for server in self.servers]

    def rss_mb(self) -> float:
        total = 0.0
        for pid in self.pids:
            with open(f"/proc/{pid}/status") as status:
                total += next(
                    int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:")
                )
        return total

    def cpu_seconds(self) -> float:
        total = 0.0
        for pid in self.pids:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    async def publish(self, channel: str, event: Any) -> float:
        started = time.perf_counter()
        await self._publish(channel, event)
        return started


async def _measure(
    plan: tuple[Scenario, ...],
    ours: list[Any],
    floors: list[Any],
    cookie: str,
    projects: list[UUID],
    profile: str,
    fresh: bool,
) -> list[dict[str, Any]]:
    from channels.layers import get_channel_layer

    from eventbus import get_event_dispatcher
    from eventbus.bus import EventBus
    from tests.testapp.events import ShopEvent

    build = get_event_dispatcher().build
    bus, layer = EventBus(), get_channel_layer()
    unused = iter(projects)

    async def floor_publish(channel: str, event: Any) -> None:
        text = json.dumps(
            {"type": "event", "channel": channel, "event": event.model_dump(mode="json")}
        )
        await layer.group_send(channel, {"type": "plain.message", "text": text, "group": channel})

    def new_channel() -> tuple[str, Callable[[int], Any]]:
        project = next(unused)

        def make(n: int) -> Any:
            return build(
                ShopEvent.ORDER_PLACED, {"order_id": n, "title": "bench"}, project_id=project
            )

        return EventBus.get_project_channel(project), make

    rows: list[dict[str, Any]] = []
    used: set[int] = set()
    for scenario in plan:
        results: dict[str, dict[str, Any]] = {}
        for name, servers, publish in (
            ("eventbus", ours[: scenario.processes], bus.send),
            ("floor", floors[: scenario.processes], floor_publish),
        ):
            # Fresh servers: what an earlier scenario left behind must not count (the
            # quick run, a smoke test of a few sockets, saves the seconds).
            if fresh:
                await asyncio.gather(
                    *(asyncio.to_thread(s.restart) for s in servers if id(s) in used)
                )
            used.update(id(s) for s in servers)
            side = Side(name, servers, publish)
            prefix = f"{profile}-{scenario.name}" if profile and name == "eventbus" else ""
            results[name] = await _scenario(side, scenario, cookie, new_channel, prefix)
        done = _rows(scenario, results["eventbus"], results["floor"])
        for result in done:  # as it goes: a full run takes minutes
            print(json.dumps(result), file=sys.stderr, flush=True)
        rows += done
    return rows


async def _scenario(
    side: Side,
    scenario: Scenario,
    cookie: str,
    new_channel: Callable[[], tuple[str, Callable[[int], Any]]],
    profile: str,
) -> dict[str, Any]:
    servers = [[server.host, server.port] for server in side.servers]
    clients = [await ClientProcess.start() for _ in range(scenario.client_processes)]
    share = scenario.sockets // len(clients)
    open_timeout = 30 + OPEN_SECONDS + share * OPEN_SECONDS_PER_SOCKET
    try:
        # Warm up each server (imports, thread pool, layer connection) before reading RSS.
        channel, make = new_channel()
        await _all(clients, open_timeout, do="open", side=side.name, servers=servers,
                   cookie=cookie, channel=channel, count=2 * len(servers))  # fmt: skip
        await _latency(side, clients, channel, make, 3, 10.0)
        await _all(clients, 30, do="close")
        await asyncio.sleep(BEFORE_SETTLE)

        channel, make = new_channel()
        before = side.rss_mb()
        opening = time.monotonic()
        await _all(clients, open_timeout, do="open", side=side.name, servers=servers,
                   cookie=cookie, channel=channel, count=share)  # fmt: skip
        opening = time.monotonic() - opening
        await asyncio.sleep(IDLE_SETTLE)
        after = side.rss_mb()
        memory = {
            "sockets": share * len(clients),
            "rss_before_mb": round(before, 1),
            "rss_after_mb": round(after, 1),
            "kb_per_socket": round((after - before) * 1024 / (share * len(clients)), 2),
            "opened_per_second": round(share * len(clients) / opening, 1),
        }
        fanout = await _fanout(side, clients, channel, make, scenario.fanout_repeats)
        async with _profiled(profile, side):
            latency = await _latency(
                side, clients, channel, make, scenario.events, scenario.rate, first=1_000
            )
        await _all(clients, 60, do="close")
    finally:
        await asyncio.gather(*(c.stop() for c in clients))
    return {"memory": memory, "fanout": fanout, "latency": latency}


async def _fanout(
    side: Side, clients: list[ClientProcess], channel: str, make: Callable[[int], Any], repeats: int
) -> dict[str, Any]:
    spans: list[float] = []
    missed = 0
    cpu = side.cpu_seconds()
    for n in range(repeats):
        event = make(n)
        sent = await side.publish(channel, event)
        await _all(clients, 60, do="wait", count=1, timeout=30)
        answers = await _all(clients, 60, do="collect")
        arrived = [t for a in answers for t in a["arrivals"].get(str(event.id), [])]
        missed += sum(a["clients"] for a in answers) - len(arrived)
        spans.append((max(arrived, default=sent) - sent) * 1000)
        await asyncio.sleep(FANOUT_GAP)
    return {
        "median_ms": round(statistics.median(spans), 2),
        "max_ms": round(max(spans), 2),
        "missed": missed,
        "repeats": repeats,
        "server_cpu_ms_per_event": round((side.cpu_seconds() - cpu) * 1000 / repeats, 1),
    }


async def _latency(
    side: Side,
    clients: list[ClientProcess],
    channel: str,
    make: Callable[[int], Any],
    count: int,
    rate: float,
    first: int = 0,
) -> dict[str, Any]:
    sent: dict[str, float] = {}
    cpu = side.cpu_seconds()
    start = time.perf_counter()
    for n in range(count):
        delay = start + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        event = make(first + n)
        sent[str(event.id)] = await side.publish(channel, event)
    await _all(clients, 60, do="wait", count=count, timeout=30)
    cpu = side.cpu_seconds() - cpu
    answers = await _all(clients, 60, do="collect")
    sockets = sum(a["clients"] for a in answers)
    latencies = [
        (t - sent[event_id]) * 1000
        for a in answers
        for event_id, times in a["arrivals"].items()
        if event_id in sent
        for t in times
    ]
    latencies.sort()
    return {
        "p50_ms": round(statistics.median(latencies), 2) if latencies else None,
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 2)
        if latencies
        else None,
        "max_ms": round(latencies[-1], 2) if latencies else None,
        "missed": sockets * count - len(latencies),
        "events": count,
        "rate": rate,
        "server_cpu_ms_per_event": round(cpu * 1000 / count, 1),
    }


@contextlib.asynccontextmanager
async def _profiled(prefix: str, side: Side) -> AsyncIterator[None]:
    """With a ``prefix``, py-spy samples every server of the side while the block runs."""
    if not prefix:
        yield
        return
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    spy = beside if os.path.exists(beside) else "py-spy"
    spies = []
    for pid in side.pids:
        command = [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250"]
        spies.append(
            await asyncio.create_subprocess_exec(
                *command,
                "--nonblocking",
                "--output",
                f"{prefix}-{pid}.txt",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        )
    await asyncio.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        for spy in spies:
            spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
        for spy in spies:
            try:
                await asyncio.wait_for(spy.wait(), 15)
            except TimeoutError:
                spy.kill()
                await spy.wait()


# -- the rows ------------------------------------------------------------------------------------


def _rows(scenario: Scenario, ours: dict[str, Any], floor: dict[str, Any]) -> list[dict[str, Any]]:
    where = (
        f"{ours['memory']['sockets']:,} sockets, {scenario.processes} server "
        f"{'process' if scenario.processes == 1 else 'processes'}"
    )
    common = {"scenario": scenario.name, "processes": scenario.processes}
    # The ratio targets are for one process; at 10,000 the rows are reported.
    timed_target = scenario.processes == 1
    rows = []
    mine, theirs = ours["fanout"], floor["fanout"]
    failed = [name for name, bad in {
        f"over {TARGET_RATIO}× the floor": mine["median_ms"] > TARGET_RATIO * theirs["median_ms"],
        "events missed": mine["missed"] > 0,
    }.items() if bad and (timed_target or name == "events missed")]  # fmt: skip
    rows.append(
        row(
            "sockets_fanout",
            f"one event → {where}, until the last has it",
            eventbus=mine["median_ms"],
            anchor=theirs["median_ms"],
            anchor_name=FLOOR,
            unit="ms median",
            target=f"≤ {TARGET_RATIO}× floor, 0 missed" if timed_target else "0 missed",
            met=not failed,
            **common,
            **mine,
            **_prefixed(theirs),
            **_notes(failed),
        )
    )
    mine, theirs = ours["latency"], floor["latency"]
    p50, floor_p50 = mine["p50_ms"] or 0.0, theirs["p50_ms"] or 0.0
    failed = [name for name, bad in {
        f"p50 over {TARGET_RATIO}× the floor": p50 > TARGET_RATIO * floor_p50 or not p50,
        "events missed": mine["missed"] > 0,
    }.items() if bad and (timed_target or name == "events missed")]  # fmt: skip
    rows.append(
        row(
            "sockets_latency",
            f"publish → {where}, {scenario.rate:g} events/s",
            eventbus=p50,
            anchor=floor_p50,
            anchor_name=FLOOR,
            unit="ms p50",
            target=f"p50 ≤ {TARGET_RATIO}× floor, 0 missed" if timed_target else "0 missed",
            met=not failed,
            **common,
            **mine,
            **_prefixed(theirs),
            **_notes(failed),
        )
    )
    mine, theirs = ours["memory"], floor["memory"]
    failed = [f"over {TARGET_KB:g} KB"] if mine["kb_per_socket"] > TARGET_KB else []
    rows.append(
        row(
            "sockets_memory",
            f"server RSS per idle subscribed WebSocket, {where}",
            eventbus=mine["kb_per_socket"],
            anchor=theirs["kb_per_socket"],
            anchor_name=FLOOR,
            unit="KB/socket",
            target=f"≤ {TARGET_KB:g} KB",
            met=not failed,
            **common,
            **mine,
            **_prefixed(theirs),
            **_notes(failed),
        )
    )
    return rows


def _prefixed(other: dict[str, Any]) -> dict[str, Any]:
    return {f"floor_{key}": value for key, value in other.items() if key not in ("events", "rate")}


def _notes(failed: list[str]) -> dict[str, str]:
    return {"notes": "; ".join(failed)} if failed else {}


if __name__ == "__main__":
    main(run, profile="", only="")
