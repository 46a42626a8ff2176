"""One run of the deployment: start it, load it, count what every socket got, stop it.

:func:`run` needs Django set up on the run's database (the test's, or the one
``python -m tests.deploy`` creates): it commits the users, memberships and sessions the
clients sign in with, and reads the event log at the end. Everything else runs in
processes of its own, on 127.0.0.1, logging into ``Size``'s run directory:

- one ``uvicorn --workers N`` on one port (``tests/deploy/asgi.py``: the suite's app,
  which tells each socket its worker's pid);
- M ``manage.py eventbus_relay`` workers (the chaos suite's marked sink, so one can be
  killed while it holds claimed rows);
- client processes holding the sockets (``tests/deploy/clients.py``), each socket
  signed in as a member of its projects and subscribed to one or two project channels;
- publisher processes (``tests/deploy/publisher.py``), let go together once every
  socket is subscribed: the first ones hand their events off themselves, the last
  leaves them to the relay workers.

The counts are the chaos suite's (``tests/chaos/check.py``), per socket: lost,
duplicates raw and after the documented dedupe (drop an event at or below the last
position seen on its channel), order violations, frames whose position is not the
log's, events not in the log, frames of a channel the socket did not follow.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

from tests.chaos.check import Log, check_log, count_consumer, outcomes
from tests.chaos.cluster import Process, last_line, wait_for_line
from tests.services import REPO_ROOT, AsgiServer, ServiceError, log_tail

READY_TIMEOUT = 180.0
DRAIN_TIMEOUT = 60.0
KILL_CATCH_TIMEOUT = 5.0
# The relay's timings shortened, so that a killed worker's lease runs out in seconds.
RELAY_SETTINGS = {
    "RELAY_POLL_INTERVAL": 0.2,
    "RELAY_CLAIM_SECONDS": 3.0,
    "RELAY_SWEEP_AFTER": 1.0,
    "RELAY_BACKOFF_BASE": 0.25,
    "RELAY_BACKOFF_MAX": 2.0,
}
ZERO = (
    "lost",
    "missed",
    "other_frames",
    "duplicates_after_dedupe",
    "order_violations",
    "wrong_position",
    "phantom",
    "foreign",
    "refused",
    "closed",
    "log.lost",
    "log.unexplained",
    "log.pending",
    "log.failed",
    "log.unpositioned",
    "log.holes",
    "publish_errors",
)


@dataclass
class Size:
    """What one run starts and sends; the defaults are the test's."""

    run_dir: Path
    redis_url: str
    layer: str = "channels_redis.core.RedisChannelLayer"
    workers: int = 4
    relays: int = 2
    sockets: int = 2000
    client_processes: int = 2
    projects: int = 50
    users: int = 200
    # Every `two_channels`-th user is a member of two projects; its sockets follow both.
    two_channels: int = 5
    publishers: int = 3
    events_per_publisher: int = 200
    publish_seconds: float = 6.0
    kill_relay: bool = True
    # PostgreSQL through psycopg's connection pool in every process (Django's "pool").
    db_pool: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # EVENTBUS additions, every process


def child_env(size: Size, **eventbus: Any) -> dict[str, str]:
    """The environment of every process of the run: the suite's settings on our services."""
    from django.db import connection

    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        EVENTBUS_TEST_REDIS_URL=size.redis_url,
        EVENTBUS_TEST_LAYER=size.layer,
        EVENTBUS_TEST_DB_NAME=str(connection.settings_dict["NAME"]),
        EVENTBUS_TEST_SETTINGS_OVERRIDE=json.dumps({**size.extra, **eventbus}),
        EVENTBUS_TEST_LOG="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
    )
    if connection.vendor == "postgresql":
        env["EVENTBUS_TEST_DB"] = "postgres"
        if size.db_pool:
            env["EVENTBUS_TEST_PG_POOL"] = "1"
    return env


def sign_in(size: Size) -> tuple[list[str], list[dict[str, Any]]]:
    """The projects, and the sockets' plan: a session cookie and channels each.

    User ``u`` is a member of project ``u % projects``, and every ``two_channels``-th
    user of the next one too; socket ``i`` is user ``i % users``'s.
    """
    from django.contrib.auth import get_user_model
    from django.test import Client

    from eventbus.bus import EventBus
    from tests.testapp.models import Membership

    projects = [str(uuid4()) for _ in range(size.projects)]
    users = []
    for u in range(size.users):
        user = get_user_model().objects.create(username=f"deploy-{u}-{uuid4().hex[:6]}")
        mine = [projects[u % size.projects]]
        if size.two_channels and u % size.two_channels == 0:
            mine.append(projects[(u + 1) % size.projects])
        Membership.objects.bulk_create(Membership(user=user, project_id=p) for p in mine)
        client = Client()
        client.force_login(user)
        channels = [EventBus.get_project_channel(p) for p in mine]
        users.append(
            {"cookie": f"sessionid={client.cookies['sessionid'].value}", "channels": channels}
        )
    return projects, [users[i % size.users] for i in range(size.sockets)]


def read_log() -> Log:
    """The event log through the ORM (the chaos suite reads it with psycopg)."""
    from eventbus.models import EventRecord, StreamEntry

    log = Log()
    for event_id, status in EventRecord.objects.values_list("id", "status"):
        log.status[str(event_id)] = status
    for channel, position, event_id in StreamEntry.objects.values_list(
        "channel", "position", "event_id"
    ):
        log.positions[(channel, str(event_id))] = position
        log.by_channel[channel].add(position)
    return log


def wait_for_file(path: Path, proc: Process, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())
        if not proc.running:
            raise ServiceError(f"{proc.name} exited early\n{log_tail(proc.log, 30)}")
        time.sleep(0.1)
    raise ServiceError(
        f"{proc.name}: no {path.name} within {timeout:.0f}s\n{log_tail(proc.log, 30)}"
    )


class Deployment:
    """The processes of one run; :meth:`close` stops every one of them."""

    def __init__(self, size: Size) -> None:
        self.size = size
        self.dir = size.run_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.server = AsgiServer(
            app="tests.deploy.asgi:application",
            env=child_env(size),
            server="uvicorn",
            workers=size.workers,
            start_timeout=READY_TIMEOUT,
        )
        self.relays = [
            Process(f"relay-{n}", [], {}, self.dir / f"relay-{n}.log") for n in range(size.relays)
        ]
        self.clients: list[Process] = []
        self.publishers: list[Process] = []
        self.worker_pids: set[int] = set()
        self.client_cpu = 0.0

    def start_server_and_relays(self) -> None:
        python = sys.executable
        for n, relay in enumerate(self.relays):
            env = child_env(self.size, SINK="tests.chaos.relay_sink.MarkedSink", **RELAY_SETTINGS)
            env["EVENTBUS_CHAOS_MARKS"] = str(self.marks(n))
            relay.start([python, "-m", "django", "eventbus_relay", "--max-seconds", "900"], env)
        self.server.start()

    def marks(self, relay: int) -> Path:
        return self.dir / f"relay-{relay}.marks"

    def start_clients(self, plan: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each client process's share of the sockets, open and subscribed; their ready files."""
        n = self.size.client_processes
        for k in range(n):
            path = self.dir / f"clients-{k}.plan.json"
            share = plan[k::n]
            path.write_text(
                json.dumps(
                    {"host": self.server.host, "port": self.server.port, "path": "/ws/events/",
                     "sockets": share}
                )
            )  # fmt: skip
            client = Process(f"clients-{k}", [], {}, self.dir / f"clients-{k}.log")
            client.start(
                [sys.executable, "-m", "tests.deploy.clients", str(path), str(self.out(k))],
                child_env(self.size),
            )
            self.clients.append(client)
        ready = [
            wait_for_file(self.out(k).with_suffix(".ready"), c, READY_TIMEOUT)
            for k, c in enumerate(self.clients)
        ]
        for report in ready:
            self.worker_pids.update(int(pid) for pid in report["workers"] if pid.isdigit())
        return ready

    def out(self, k: int) -> Path:
        return self.dir / f"clients-{k}.json"

    def start_publishers(self, projects_file: Path) -> None:
        """Start the publishers; each waits for :meth:`go` once ready."""
        size = self.size
        for n in range(size.publishers):
            # The last publisher leaves its events to the relay workers (their sweep).
            hand_off = n < size.publishers - 1 or size.publishers == 1
            publisher = Process(f"publisher-{n}", [], {}, self.dir / f"publisher-{n}.log")
            publisher.start(
                [sys.executable, "-m", "tests.deploy.publisher", str(self.records(n)), str(n),
                 str(size.events_per_publisher), str(size.publish_seconds), str(projects_file),
                 str(self.go_file)],
                child_env(size, HAND_OFF_ON_COMMIT=hand_off),
            )  # fmt: skip
            self.publishers.append(publisher)

    def records(self, n: int) -> Path:
        return self.dir / f"publisher-{n}.jsonl"

    @property
    def go_file(self) -> Path:
        return self.dir / "go"

    def go(self) -> None:
        """Wait (bounded) until every publisher is ready, then let them all publish."""
        for n, publisher in enumerate(self.publishers):
            wait_for_line(self.records(n), '"ready"', publisher, READY_TIMEOUT)
        self.go_file.touch()

    def kill_relay_holding_rows(self, n: int = 0) -> dict[str, Any]:
        """SIGKILL relay ``n`` while it holds claimed rows (its last mark ``sending``)."""
        deadline = time.monotonic() + KILL_CATCH_TIMEOUT
        line = ""
        while time.monotonic() < deadline:
            line = last_line(self.marks(n))
            if '"sending"' in line:
                break
            time.sleep(0.002)
        self.relays[n].kill()
        held = json.loads(line)["ids"] if '"sending"' in line else []
        return {"relay": n, "holding_claimed_rows": len(held)}

    def wait_publishers(self) -> None:
        deadline = time.monotonic() + self.size.publish_seconds + READY_TIMEOUT
        for publisher in self.publishers:
            assert publisher.proc is not None
            try:
                publisher.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise ServiceError(f"{publisher.name} did not finish in time") from None

    def received(self) -> int:
        total = 0
        for k in range(len(self.clients)):
            with contextlib.suppress(OSError, ValueError):
                total += json.loads(self.out(k).with_suffix(".progress").read_text())["received"]
        return total

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far by the uvicorn workers and the relay workers still running."""
        found = {"uvicorn workers": sum(map(cpu_of, self.worker_pids))}
        found["relay workers"] = sum(
            cpu_of(r.proc.pid) for r in self.relays if r.running and r.proc
        )
        return {role: round(seconds, 1) for role, seconds in found.items()}

    def collect(self) -> list[dict[str, Any]]:
        """Every socket's frames: SIGTERM the client processes and read what they wrote."""
        for client in self.clients:
            if client.proc is not None and client.proc.poll() is None:
                client.proc.send_signal(signal.SIGTERM)
        sockets: list[dict[str, Any]] = []
        self.client_cpu = 0.0
        for k, client in enumerate(self.clients):
            if client.proc is not None:
                client.proc.wait(60)
            out = json.loads(self.out(k).read_text())
            sockets += out["sockets"]
            self.client_cpu += out["cpu_seconds"]
        return sockets

    def crashed(self) -> list[str]:
        found = [p.name for p in self.relays[1:] if not p.running]
        if self.size.relays and not self.size.kill_relay and not self.relays[0].running:
            found.append(self.relays[0].name)
        if not self.server.running:
            found.append("uvicorn")
        return found

    def close(self) -> None:
        for process in (*self.publishers, *self.clients, *self.relays):
            try:
                process.stop()
            except Exception:  # keep stopping the others
                process.kill()
        self.server.stop()
        # uvicorn's workers go with their parent; make sure of it, by the pids they gave.
        for pid in self.worker_pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            (self.dir / "uvicorn.log").write_text(self.server.log_text())
        self.server.close()


def cpu_of(pid: int) -> float:
    """CPU seconds (user and system) of a running process of ours; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count_sockets(
    log: Log, sockets: list[dict[str, Any]], committed: dict[str, set[str]] | None = None
) -> dict[str, Any]:
    """Every socket's counts against the log, summed.

    ``committed``: each channel's committed event ids, from the publishers' records; an
    id a socket on that channel never received is ``missed`` (the log's ``lost`` counts
    only what the log positioned).
    """
    totals: Counter[str] = Counter()
    for socket in sockets:
        followed = set(socket["channels"])
        found = [
            {"kind": kind, "channel": channel, "position": position, "id": event_id}
            for kind, channel, position, event_id in socket["frames"]
            if kind in ("event", "reset")
        ]
        counts = count_consumer(log, found, True, followed)
        for name in ("expected", "received", "lost", "lost_covered_by_reset", "resets",
                     "duplicates_raw", "duplicates_after_dedupe", "order_violations",
                     "wrong_position", "phantom"):  # fmt: skip
            totals[name] += counts[name]
        totals["foreign"] += sum(1 for f in found if f["channel"] not in followed)
        totals["other_frames"] += sum(
            1 for f in socket["frames"] if f[0] not in ("event", "reset", "subscribed")
        )
        totals["closed"] += not socket["open"]
        totals["subscriptions"] += len(followed)
        if committed is not None:
            got = {(f["channel"], f["id"]) for f in found}
            totals["missed"] += sum(
                (channel, event_id) not in got
                for channel in followed
                for event_id in committed.get(channel, ())
            )
    return dict(totals)


def committed_records(paths: list[Path]) -> list[dict[str, Any]]:
    """The publishers' committed events, each with its channel, in each one's order."""
    from eventbus.bus import EventBus

    found = []
    for path in paths:
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record.get("outcome") == "commit":
                found.append({**record, "channel": EventBus.get_project_channel(record["project"])})
    return found


def publisher_order(committed: list[dict[str, Any]], log: Log) -> int:
    """Events given a lower position than an earlier one of the same publisher and channel.

    Not a guarantee (two relay workers number their claims in either order); printed.
    """
    inversions = 0
    top: dict[tuple[int, str], int] = {}
    for record in committed:
        position = log.positions.get((record["channel"], record["id"]), 0)
        key = (record["publisher"], record["channel"])
        if position < top.get(key, 0):
            inversions += 1
        top[key] = max(top.get(key, 0), position)
    return inversions


def run(size: Size) -> dict[str, Any]:
    """Run once; the report (also written to the run directory as report.json)."""
    from django.db import connection

    from eventbus.models import DeliveryStatus, EventRecord

    report: dict[str, Any] = {
        "size": {k: v for k, v in asdict(size).items() if k not in ("run_dir", "redis_url")},
        "database": connection.vendor,
        "run_dir": str(size.run_dir),
    }
    deployment = Deployment(size)
    try:
        started = time.monotonic()
        projects, plan = sign_in(size)
        projects_file = size.run_dir / "projects.json"
        projects_file.write_text(json.dumps(projects))
        deployment.start_server_and_relays()
        report["start_seconds"] = round(time.monotonic() - started, 1)
        deployment.start_publishers(projects_file)  # they set up while the sockets open
        ready = deployment.start_clients(plan)
        workers: Counter[str] = Counter()
        for part in ready:
            workers.update(part["workers"])
        report["sockets_per_worker"] = sorted(workers.values(), reverse=True)
        report["refused"] = sum(len(part["refused"]) for part in ready)
        report["refusals"] = [r for part in ready for r in part["refused"]][:5]
        report["connect_seconds"] = max(part["seconds"] for part in ready)
        report["handshake_retries"] = sum(len(part["handshake_retries"]) for part in ready)
        report["uvicorn_cpu_to_subscribe"] = deployment.cpu_seconds()["uvicorn workers"]

        deployment.go()
        published = time.monotonic()
        if size.kill_relay and size.relays > 1:
            time.sleep(size.publish_seconds / 2)
            report["relay_killed"] = deployment.kill_relay_holding_rows(0)
        deployment.wait_publishers()
        report["publish_seconds"] = round(time.monotonic() - published, 1)

        # Drain: every row delivered and every socket's frames in, or the bound.
        drained = time.monotonic()
        connection.close()  # a fresh connection sees the other processes' commits
        expected = None
        while time.monotonic() - drained < DRAIN_TIMEOUT:
            log = read_log()
            pending = EventRecord.objects.filter(status=DeliveryStatus.PENDING).count()
            expected = sum(
                1 + len(log.by_channel.get(channel, ()))
                for entry in plan
                for channel in entry["channels"]
            )
            if not pending and deployment.received() >= expected:
                break
            time.sleep(0.5)
        report["drain_seconds"] = round(time.monotonic() - drained, 1)
        report["delivery_seconds"] = round(time.monotonic() - published, 1)
        cpu = deployment.cpu_seconds()
        sockets = deployment.collect()
        cpu["client processes"] = round(deployment.client_cpu, 1)
        report["crashed"] = deployment.crashed()
        log = read_log()
        paths = [deployment.records(n) for n in range(size.publishers)]
        report["log"] = check_log(log, outcomes(paths))
        report["publish_errors"] = sum(
            '"error"' in line for path in paths for line in path.read_text().splitlines()
        )
        committed = committed_records(paths)
        report["publisher_order_inversions"] = publisher_order(committed, log)
        cpu["publishers"] = round(
            sum(
                json.loads(line)["cpu_seconds"]
                for path in paths
                for line in path.read_text().splitlines()
                if "cpu_seconds" in line
            ),
            1,
        )
        report["cpu_seconds"] = cpu
        report["publisher_seconds"] = [
            json.loads(line)["seconds"]
            for path in paths
            for line in path.read_text().splitlines()
            if '"seconds"' in line
        ]
        by_channel: dict[str, set[str]] = {}
        for record in committed:
            by_channel.setdefault(record["channel"], set()).add(record["id"])
        report["sockets"] = count_sockets(log, sockets, by_channel)
        report["channels"] = len(log.by_channel)
    except Exception as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        deployment.close()
    report["failures"] = failures(report)
    report["ok"] = not report["failures"]
    (size.run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def failures(report: dict[str, Any]) -> list[str]:
    """Every count that should be zero and is not, and what kept the run from counting."""
    if "error" in report:
        return [f"error: {report['error']}"]
    found = [f"crashed:{name}" for name in report["crashed"]]
    for name in ZERO:
        where, _, key = name.rpartition(".")
        counts = report[where] if where else {**report["sockets"], **report}
        value = counts.get(key, 0)
        if value:
            found.append(f"{name}={value}")
    return found


def summary(report: dict[str, Any]) -> str:
    """The figures, a few lines."""
    if "sockets" not in report:
        return (
            f"deployment run FAILED: {'; '.join(report['failures'])}; logs in {report['run_dir']}"
        )
    size, s, log = report["size"], report["sockets"], report["log"]
    killed = report.get("relay_killed")
    lines = [
        f"deployment run ({report['database']}, {size['layer'].rpartition('.')[2]}): "
        f"{'PASS' if report['ok'] else 'FAIL'}",
        f"  uvicorn --workers {size['workers']}, {size['relays']} relay workers, "
        f"{size['publishers']} publishers, {size['client_processes']} client processes; "
        f"sockets per worker {report['sockets_per_worker']}",
        f"  {s.get('subscriptions', 0)} subscriptions on {report['channels']} channels by "
        f"{size['sockets']} sockets (open in {report['connect_seconds']} s); "
        f"{log['committed']} events committed in {report['publish_seconds']} s (each "
        f"publisher's: {report['publisher_seconds']}; the last leaves its events to the relay), "
        f"drained {report['delivery_seconds']} s after the first publish",
        f"  frames expected {s['expected']}, received {s['received']}: lost {s['lost']} "
        f"(missed from the publishers' records {s.get('missed', 0)}), "
        f"duplicates {s['duplicates_raw']} raw / {s['duplicates_after_dedupe']} after dedupe, "
        f"order violations {s['order_violations']}, wrong position {s['wrong_position']}, "
        f"phantom {s['phantom']}, foreign {s['foreign']}, resets {s['resets']}, "
        f"closed {s['closed']}",
        f"  log: lost {log['lost']}, pending {log['pending']}, failed {log['failed']}, "
        f"holes {log['holes']}; publisher-order inversions (not a guarantee) "
        f"{report['publisher_order_inversions']}"
        + (f"; relay-{killed['relay']} SIGKILLed holding {killed['holding_claimed_rows']} "
           "claimed rows" if killed else ""),
    ]  # fmt: skip
    lines.append(
        "  CPU seconds: "
        + ", ".join(f"{role} {seconds}" for role, seconds in report["cpu_seconds"].items())
        + f" (uvicorn: {report['uvicorn_cpu_to_subscribe']} of it to open and subscribe "
        f"the sockets, with {report['handshake_retries']} handshakes tried again)"
    )
    if report["failures"]:
        lines.append(f"  failures: {'; '.join(report['failures'])}; logs in {report['run_dir']}")
    return "\n".join(lines)
