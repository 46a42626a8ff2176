"""Failover runs: the real-time path across a Redis Sentinel failover, and across a dead shard.

:func:`run` starts, on loopback, the Redis side of one ``mode``, then PostgreSQL-backed
processes: a publisher (handing its events off on commit in a failover, leaving them to
the relay with shards), a relay worker, uvicorn with ``WS_CONSUMERS`` WebSocket clients
(each its own process, resuming by position on a reconnect) and a ``subscribe()``
consumer. Mid-stream it strikes, lets the publisher go on, stops it, waits (bounded) for
every reader to have every event, and counts with :mod:`tests.chaos.check`:

- ``sentinel``: a master, one replica and three sentinels (the master judged down after
  1 s); the layer's one host is the Sentinel entry. The master is SIGKILLed, the
  sentinels promote the replica, and every process finds the new master through them;
  the old master is then started again (empty) and the sentinels make it a replica.
- ``shards``: three redis-servers, all in the layer's ``hosts``, the channels spread over
  all three. One shard holding some channels' groups is SIGKILLed and started again,
  empty, after ``SHARD_DOWN_SECONDS``. With RedisChannelLayer a reader's own channel lives
  on one shard too; the shard killed is one that holds no reader's channel (a reader
  whose channel is on a dead shard hears nothing until it returns, see the README).

``python -m tests.chaos.failover [sentinel|shards] [core|pubsub]`` runs one and prints it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from channels_redis.utils import _consistent_hash

from tests.services import AsgiServer, RedisServer, SentinelGroup

from .check import Log, check_consumer, check_log, failures, outcomes, read_log, records
from .cluster import Process, base_env, wait_for_line
from .run import RESULTS, conninfo, database, drain

BACKENDS = {
    "core": "channels_redis.core.RedisChannelLayer",
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
}
PREFIX = "asgi"  # both layers' default
# Projects 1..PROJECTS and agent 1: for both layers every one of three shards holds
# some of these channels (asserted by the run).
PROJECTS = 8
CHANNELS = [*(f"eventbus.project.{n}" for n in range(1, PROJECTS + 1)), "eventbus.agent.1"]
SHARDS = 3
WS_CONSUMERS = 2
WARMUP_SECONDS = 2.5
SHARD_DOWN_SECONDS = 3.0
CALM_SECONDS = 3.0
# A live shard's channel must not wait for a dead one: its events committed in the
# outage's first second arrive before the shard is back (2 s later at least).
HELD_BACK_SECONDS = 1.0
# A pub/sub reader learns of a reconnect only from its refresh (every 5 s): the drain
# waits for more than that.
DRAIN_SECONDS = 30.0
READY_TIMEOUT = 60.0


def group_shard(backend: str, channel: str, shards: int = SHARDS) -> int:
    """The host channels_redis keeps ``channel``'s group on, for ``backend``."""
    if backend == "pubsub":
        return _consistent_hash(f"{PREFIX}__group__{channel}", shards)
    return _consistent_hash(channel, shards)


def member_shard(channel_name: str, shards: int = SHARDS) -> int:
    """RedisChannelLayer: the host a reader's channel (``prefix!local``) has its messages on."""
    return _consistent_hash(channel_name[: channel_name.index("!") + 1], shards)


class Run:
    """The processes of one failover run, and what it noted along the way."""

    def __init__(self, mode: str, backend: str, run_dir: Path, db: str) -> None:
        self.mode, self.backend, self.dir = mode, backend, run_dir
        self.sentinel: SentinelGroup | None = None
        self.shards: list[RedisServer] = []
        if mode == "sentinel":
            self.sentinel = SentinelGroup(replicas=1, sentinels=3)
            hosts: list[Any] = [self.sentinel.host()]
        else:
            self.shards = [RedisServer() for _ in range(SHARDS)]
            hosts = [server.url for server in self.shards]
        layer = {"BACKEND": BACKENDS[backend], "CONFIG": {"hosts": hosts}}
        self.env = base_env(db, "redis://127.0.0.1:1/0")
        self.env.update(
            EVENTBUS_CHAOS_LAYER=json.dumps(layer),
            EVENTBUS_CHAOS_PROJECTS=str(PROJECTS),
            EVENTBUS_CHAOS_GO=str(run_dir / "go"),
        )
        server_keys = ("DJANGO_SETTINGS_MODULE", "EVENTBUS_CHAOS_DB", "EVENTBUS_CHAOS_LAYER")
        self.server = AsgiServer(
            env={key: self.env[key] for key in server_keys}, server="uvicorn", start_timeout=60
        )
        python = sys.executable
        self.relay = Process(
            "relay",
            [python, "-m", "django", "eventbus_relay", "--max-seconds", "300"],
            self.env,
            run_dir / "relay.log",
        )
        ws_url = f"{self.server.ws_url}/ws/events/"
        self.consumers: dict[str, Process] = {}
        for n in range(WS_CONSUMERS):
            name = f"websocket-{n}"
            argv = [python, "-m", "tests.chaos.subscribers", "ws", ws_url,
                    str(run_dir / f"{name}.jsonl"), *CHANNELS]  # fmt: skip
            self.consumers[name] = Process(name, argv, self.env, run_dir / f"{name}.log")
        self.consumers["subscribe"] = Process(
            "subscribe",
            [python, "-m", "tests.chaos.subscribers", "python", "-",
             str(run_dir / "subscribe.jsonl"), *CHANNELS],
            self.env,
            run_dir / "subscribe.log",
        )  # fmt: skip
        # One publisher. In a failover it hands its events off on commit, as by default,
        # and the relay worker retries what failed; with shards it leaves them all to the
        # relay, whose batches mix every shard's channels (so a dead shard could hold
        # back the others').
        env = dict(self.env)
        if mode == "shards":
            env["EVENTBUS_CHAOS_EVENTBUS"] = json.dumps({"HAND_OFF_ON_COMMIT": False})
        argv = [python, "-m", "tests.chaos.publisher", str(run_dir / "publisher-0.jsonl"), "100"]
        self.publishers = [Process("publisher-0", argv, env, run_dir / "publisher-0.log")]
        self.noted: dict[str, Any] = {}
        self.started = time.time()

    def note(self, what: str, value: Any = None) -> None:
        self.noted[what] = round(time.time() - self.started, 2) if value is None else value

    # -- starting and stopping ------------------------------------------------------

    def start(self) -> None:
        """Every process at once (importing Django is most of the wait); the publishers
        publish once every reader is ready."""
        if self.sentinel is not None:
            self.sentinel.start()
        for shard in self.shards:
            shard.start()
        for process in (self.relay, *self.consumers.values(), *self.publishers):
            process.start()
        self.server.start()  # the WebSocket clients retry until it listens
        for name, consumer in self.consumers.items():
            wait_for_line(self.dir / f"{name}.jsonl", '"ready"', consumer, READY_TIMEOUT)
        for n, publisher in enumerate(self.publishers):
            wait_for_line(self.dir / f"publisher-{n}.jsonl", '"ready"', publisher, READY_TIMEOUT)
        self.started = time.time()
        (self.dir / "go").touch()

    def stop_publishers(self) -> None:
        for publisher in self.publishers:
            publisher.stop(timeout=10)

    def close(self) -> None:
        for process in (*self.publishers, *self.consumers.values(), self.relay):
            try:
                process.stop()
            except Exception:
                process.kill()
        self.server.stop()
        services = [self.server, *self.shards]
        if self.sentinel is not None:
            services += [*self.sentinel.servers, *self.sentinel.sentinels]
        for service in services:
            with contextlib.suppress(OSError):  # keep its log with the run's, then clean up
                shutil.copyfile(service.log_path, self.dir / f"{service.name}-{service.port}.log")
            service.close()

    def crashed(self) -> list[str]:
        found = [p.name for p in (self.relay, *self.consumers.values()) if not p.running]
        return [*found, *([] if self.server.running else ["uvicorn"])]

    # -- the strike ---------------------------------------------------------------

    def strike(self) -> None:
        if self.sentinel is not None:
            master = self.sentinel.master.port
            self.sentinel.master.kill()
            self.note("master_killed")
            promoted = self.sentinel.wait_for_failover()
            self.note("replica_promoted")
            self.note("ports", {"old_master": master, "new_master": promoted.port})
            # It comes back empty, as a master, until the sentinels make it a replica.
            self.sentinel.master.start()
            self.note("old_master_back")
            return
        dead = self.shard_to_kill()
        self.noted["dead_shard"] = dead
        self.shards[dead].kill()
        self.note("shard_killed")
        time.sleep(SHARD_DOWN_SECONDS)
        self.shards[dead].start()
        self.note("shard_back")

    def shard_to_kill(self) -> int:
        """A shard holding some channels' groups and, with RedisChannelLayer, no reader's
        own channel (read from the groups' members on the shards)."""
        holding = {group_shard(self.backend, channel) for channel in CHANNELS}
        assert holding == set(range(SHARDS)), f"channels on shards {holding} only"
        homes: set[int] = set()
        if self.backend == "core":
            for channel in CHANNELS:
                client = self.shards[group_shard("core", channel)].client()
                try:
                    names = client.zrange(f"{PREFIX}:group:{channel}", 0, -1)
                finally:
                    client.close()
                homes.update(member_shard(name.decode()) for name in names)
        self.noted["reader_shards"] = sorted(homes)
        return min(set(range(SHARDS)) - homes)

    # -- counting -----------------------------------------------------------------

    def count(self) -> dict[str, Any]:
        log = read_log(conninfo(self.env["EVENTBUS_CHAOS_DB"]))
        published = outcomes(sorted(self.dir.glob("publisher-*.jsonl")))
        consumers = {
            name: check_consumer(log, self.dir / f"{name}.jsonl", name != "subscribe")
            for name in self.consumers
        }
        for name, counts in consumers.items():
            counts.pop("per_channel")
            counts.update(self.flow(name, log))
        return {"log": check_log(log, published), "consumers": consumers}

    def fault(self) -> tuple[float, float]:
        """When the fault began and ended (the replica promoted, the shard back), epoch s."""
        start, end = ("master_killed", "replica_promoted") if self.sentinel else (
            "shard_killed", "shard_back")  # fmt: skip
        return self.started + self.noted[start], self.started + self.noted[end]

    def spared(self) -> set[str]:
        """The channels the fault spared: on the live shards (none in a failover)."""
        if self.sentinel is not None:
            return set()
        dead = self.noted["dead_shard"]
        return {channel for channel in CHANNELS if group_shard(self.backend, channel) != dead}

    def flow(self, consumer: str, log: Log) -> dict[str, int]:
        """Events the consumer got during the fault on the spared channels, after the fault,
        and ``held_back``: spared channels' events committed in the fault's first
        ``HELD_BACK_SECONDS`` that it got only once the fault was over (or never)."""
        start, end = self.fault()
        spared = self.spared()
        committed: dict[str, float] = {}
        for path in self.dir.glob("publisher-*.jsonl"):
            for record in records(path):
                if record.get("outcome") == "commit":
                    committed[record["id"]] = record["t"]
        first_seen: dict[tuple[str, str], float] = {}
        during = after = 0
        for record in records(self.dir / f"{consumer}.jsonl"):
            if record.get("kind") != "event":
                continue
            first_seen.setdefault((record["channel"], record["id"]), record["t"])
            if start < record["t"] < end and record["channel"] in spared:
                during += 1
            elif record["t"] > end:
                after += 1
        held_back = sum(
            1
            for channel, event_id in log.positions
            if channel in spared
            and start <= committed.get(event_id, 0) <= start + HELD_BACK_SECONDS
            and first_seen.get((channel, event_id), end + 1) > end
        )
        return {"during_fault": during, "after_fault": after, "held_back": held_back}


def run(mode: str, backend: str, template: str | None = None) -> dict[str, Any]:
    """One run, start to finish; its report (also in test-results/failover-<mode>-<backend>.json)."""
    started = time.monotonic()
    name = f"failover-{mode}-{backend}"
    run_dir = RESULTS / name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    report: dict[str, Any] = {"mode": mode, "backend": backend}
    with ExitStack() as stack:
        try:
            db = stack.enter_context(database(f"eventbus_{name.replace('-', '_')}", template))
            cluster = Run(mode, backend, run_dir, db)
            stack.callback(cluster.close)
            began = time.monotonic()
            cluster.start()
            report["start_seconds"] = round(time.monotonic() - began, 1)
            time.sleep(WARMUP_SECONDS)
            cluster.strike()
            time.sleep(CALM_SECONDS)
            cluster.stop_publishers()
            cluster.note("publishers_stopped")
            result, drained = drain(cluster.count, DRAIN_SECONDS)
            report.update(result)
            report["fault"] = cluster.noted
            report["drain_seconds"] = round(drained, 1)
            report["crashed"] = cluster.crashed()
            began = time.monotonic()
            cluster.close()
            report["close_seconds"] = round(time.monotonic() - began, 1)
        except Exception as exc:
            report["error"] = f"{type(exc).__name__}: {exc}"
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    problems = failures(report) if "log" in report else []
    problems += [f"crashed:{process}" for process in report.get("crashed", [])]
    if "error" in report:
        problems.append(f"error: {report['error']}")
    report["failures"] = problems
    report["ok"] = not problems
    report["logs"] = str(run_dir)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


COLUMNS = (
    ("expected", "expected"), ("received", "received"), ("lost", "lost"),
    ("resets", "resets"), ("covered", "lost_covered_by_reset"), ("dup raw", "duplicates_raw"),
    ("dup dedupe", "duplicates_after_dedupe"), ("order", "order_violations"),
    ("during", "during_fault"), ("held back", "held_back"), ("after", "after_fault"),
)  # fmt: skip


def summary(report: dict[str, Any]) -> str:
    """The verdict, the fault's timeline and one row of counts per reader."""
    head = (
        f"{report['mode']} / {report['backend']}: {'PASS' if report['ok'] else 'FAIL'} "
        f"in {report['wall_seconds']:.0f} s"
    )
    if "log" not in report:
        return f"{head} | {'; '.join(report['failures'])}"
    log = report["log"]
    lines = [
        f"{head} (start {report['start_seconds']} s, close {report['close_seconds']} s); "
        f"fault {report['fault']}; drained in {report['drain_seconds']} s",
        f"  log: committed {log['committed']}, lost {log['lost']}, pending {log['pending']}, "
        f"failed {log['failed']}, holes {log['holes']}",
        "  reader        " + "  ".join(f"{label:>8}" for label, _ in COLUMNS),
    ]
    for name, counts in report["consumers"].items():
        lines.append(f"  {name:<12}  " + "  ".join(f"{counts[key]:>8}" for _, key in COLUMNS))
    if not report["ok"]:
        lines.append(f"  failures: {'; '.join(report['failures'])}; logs in {report['logs']}")
    return "\n".join(lines)


@contextmanager
def template_database() -> Iterator[str]:
    """One migrated database the runs copy."""
    with database("eventbus_failover_template") as name:
        yield name


def main() -> int:
    modes = [a for a in sys.argv[1:] if a in ("sentinel", "shards")] or ["sentinel", "shards"]
    backends = [a for a in sys.argv[1:] if a in BACKENDS] or list(BACKENDS)
    ok = True
    with template_database() as template:
        for mode in modes:
            for backend in backends:
                report = run(mode, backend, template)
                print(summary(report), flush=True)
                ok = ok and report["ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
