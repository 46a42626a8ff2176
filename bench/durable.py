"""8. Durable handlers on django-tasks-db: commit → handler start, and runs per second.

eventbus: ``publish`` of an event with one durable handler (``bench.durable_work``), run
by real ``db_worker`` processes. The anchor, on the same backend and workers: the same
handler body in a plain task that the publisher enqueues by hand,
``transaction.on_commit(lambda: by_hand.enqueue(str(event.id)))``, and that loads the
event's row itself. The body is one INSERT recording ``time.time()`` at its start.

1. Throughput: a backlog of events drained by 1, then 2 ``db_worker`` processes, each
   side's backlog in turn (``ROUNDS`` times, the order swapped each round). The backlog
   is published to a queue no worker reads (``HELD``), then handed to the workers'
   queue in one UPDATE, so that workers already polling find all of it at once; runs
   per second between the 5th and 95th percentile of the handlers' start times.
   Building the backlog times the publish side: each event in its own transaction,
   committed, its task enqueued.
2. Latency, commit → handler start (the publisher notes ``time.time()`` in the first
   ``on_commit`` callback), one worker polling every ``INTERVAL`` seconds: paced, one
   event at a time, the sides taking turns; then under load, each side alone at a share
   (``LOADED``) of the anchor's one-worker rate from 1., whether or not it keeps up.
3. Statements per run: the same drain in this process (django-tasks-db's own worker
   loop), every SQL statement and commit counted; ``--profile PREFIX`` also writes a
   cProfile of each side (``PREFIX-eventbus.prof``, ``PREFIX-anchor.prof``) and prints
   their top functions on stderr.

``--db sqlite`` (a file, rollback journal, as the test suite's; ``--journal wal`` for
WAL at SQLite's default ``synchronous = FULL``, as the demo and docs/deployment.md set it,
where a commit waits for one fsync; ``--journal wal-normal`` for WAL at ``NORMAL``, where a
commit waits for none) or ``--db postgres``
(127.0.0.1:5432). Connections are kept by the workers (``CONN_MAX_AGE=None``), as a
worker should; ``--conn-max-age 0`` shows Django's default, a new connection per task.
Every run is checked: as many handler starts as events, none twice, every run done and
every task successful.
"""

from __future__ import annotations

import contextlib
import cProfile
import ctypes
import json
import os
import pstats
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._harness import main, row

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.2  # eventbus's drain may take at most 1.2 times the anchor's
SIDES = ("eventbus", "anchor")
ANCHOR = "a task enqueued by hand in on_commit (same worker, same body)"
INTERVAL = 0.01  # seconds an idle worker waits before it polls again
PAUSE = 0.02  # seconds between a handler's start and the next event, paced
LOADED = 0.3  # events per second under load, as a share of the anchor's one-worker rate
WAIT = 300.0  # seconds any drain may take at most
HELD = "bench-held"  # the queue a backlog waits in (bench/durable_settings.py)


@dataclass(frozen=True)
class Plan:
    backlog: int  # events per drain
    rounds: int  # drains per side and worker count, taking turns
    paced: int  # events per side, paced
    loaded: int  # events per side, under load
    in_process: int  # events per side, drained in this process


FULL = Plan(backlog=1_000, rounds=4, paced=300, loaded=300, in_process=300)
QUICK = Plan(backlog=60, rounds=1, paced=10, loaded=10, in_process=10)


def run(
    quick: bool = False,
    db: str = "sqlite",
    profile: str = "",
    conn_max_age: str = "none",
    journal: str = "delete",
) -> list[dict[str, Any]]:
    journals = {
        "delete": "",
        "wal": "PRAGMA journal_mode = WAL",
        "wal-normal": "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL",
    }
    if journal not in journals:
        raise SystemExit(f"--journal {journal!r}: expected one of {', '.join(journals)}")
    if journals[journal]:
        os.environ["BENCH_SQLITE_INIT"] = journals[journal]
    if db == "postgres":
        os.environ["EVENTBUS_TEST_DB"] = "postgres"
        # A database of its own: a test run on the same server uses test_test.
        os.environ["EVENTBUS_PG_NAME"] = f"bench_durable_{os.getpid()}"
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.durable_settings"
    os.environ["BENCH_CONN_MAX_AGE"] = conn_max_age
    import django

    django.setup()
    from django.db import connection
    from django.test.utils import setup_databases, teardown_databases

    plan = QUICK if quick else FULL
    databases = setup_databases(verbosity=0, interactive=False)
    try:
        vendor = connection.vendor + ("" if journal == "delete" else f", {journal.upper()}")
        bench = Bench(connection.settings_dict["NAME"], vendor, conn_max_age)
        rows = bench.measure(plan, profile)
    finally:
        connection.close()
        teardown_databases(databases, verbosity=0)
    return rows


class Workers:
    """``db_worker`` processes on the bench's database, polling the default queue; stopped
    (and killed if need be) on exit."""

    def __init__(self, database: str, count: int) -> None:
        self.logs = tempfile.TemporaryDirectory(prefix="bench-durable-")
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "DJANGO_SETTINGS_MODULE": "bench.durable_settings",
            "EVENTBUS_TEST_DB_NAME": database,
        }
        command = [
            sys.executable, "-m", "django", "db_worker", "--no-startup-delay", "--no-reload",
            "--interval", str(INTERVAL), "--verbosity", "0",
        ]  # fmt: skip
        self.processes: list[subprocess.Popen[bytes]] = []
        for n in range(count):
            with open(Path(self.logs.name) / f"worker-{n}.log", "wb") as log:
                self.processes.append(
                    subprocess.Popen(
                        command,
                        cwd=ROOT,
                        env=env,
                        stdout=log,
                        stderr=log,
                        preexec_fn=_die_with_parent,
                    )
                )

    def check(self) -> None:
        """Raises if a worker has exited."""
        for process in self.processes:
            if process.poll() is not None:
                raise RuntimeError(f"a db_worker exited with {process.returncode}:\n{self.log()}")

    def log(self) -> str:
        return "\n".join(
            path.read_text(errors="replace")[-3000:]
            for path in sorted(Path(self.logs.name).glob("*.log"))
        )

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        self.logs.cleanup()


class Bench:
    def __init__(self, database: str, vendor: str, conn_max_age: str) -> None:
        from django.db import connection

        self.database = database
        self.vendor = vendor
        self.conn_max_age = conn_max_age
        self.load_average = os.getloadavg()  # others' work on the machine, before and after
        self.by_hand = _work().by_hand
        with connection.cursor() as cursor:
            cursor.execute(
                f"CREATE TABLE {_work().STARTS} (event_id varchar(36) NOT NULL, "
                "kind varchar(10) NOT NULL, started double precision NOT NULL, "
                "pid integer NOT NULL)"
            )

    # -- publishing -------------------------------------------------------------------

    def publish(self, side: str, n: int) -> tuple[str, float]:
        """One event in its own transaction, committed; its id and the commit time."""
        from django.db import transaction

        from eventbus import publish

        work = _work()
        committed: list[float] = []
        with transaction.atomic():
            transaction.on_commit(lambda: committed.append(time.time()))
            if side == "eventbus":
                event = publish(work.BenchEvent.DURABLE, {"n": n})
            else:
                event = publish(work.BenchEvent.BY_HAND, {"n": n})
                transaction.on_commit(lambda: self.by_hand.enqueue(str(event.id)))
        return str(event.id), committed[0]

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """What is published meanwhile waits in the ``HELD`` queue, for :meth:`release`."""
        from django.conf import settings
        from django.test import override_settings

        queue = {**settings.EVENTBUS, "DURABLE_QUEUE": HELD}
        with override_settings(EVENTBUS=queue):
            self.by_hand = _work().by_hand.using(queue_name=HELD)
            try:
                yield
            finally:
                self.by_hand = _work().by_hand

    def release(self) -> None:
        """Hands the held tasks to the workers' queue, all at once."""
        from django_tasks_db.models import DBTaskResult

        DBTaskResult.objects.filter(queue_name=HELD).update(queue_name="default")

    def clear(self) -> None:
        from django.db import connection
        from django_tasks_db.models import DBTaskResult

        from eventbus.models import EventRecord, HandlerRun

        tables = [_work().STARTS, *(m._meta.db_table for m in (HandlerRun, EventRecord))]
        with connection.cursor() as cursor:
            for table in [*tables, DBTaskResult._meta.db_table]:
                cursor.execute(f"DELETE FROM {table}")

    def starts(self, side: str) -> dict[str, list[float]]:
        """Handler start times by event id, for one side."""
        from django.db import connection

        found: dict[str, list[float]] = {}
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT event_id, started FROM {_work().STARTS} WHERE kind = %s", [side]
            )
            for event_id, started in cursor.fetchall():
                found.setdefault(event_id, []).append(started)
        return found

    def check(self, side: str, events: list[str]) -> dict[str, list[float]]:
        """Every event's handler started exactly once; every run done and every task
        successful (waited for: a task is marked after its handler started)."""
        from django_tasks_db.models import DBTaskResult

        from eventbus.models import HandlerRun, RunStatus

        found = self.starts(side)
        twice = sum(1 for times in found.values() if len(times) > 1)
        if set(found) != set(events) or twice:
            raise RuntimeError(
                f"{side}: {len(set(events) - set(found))} of {len(events)} handlers never "
                f"started, {twice} started twice, {len(set(found) - set(events))} unknown"
            )
        path = "bench.durable_work.by_hand" if side == "anchor" else "eventbus.tasks.run_handler"
        tasks = DBTaskResult.objects.filter(task_path=path)
        deadline = time.monotonic() + WAIT
        while tasks.filter(status="SUCCESSFUL").count() < len(events):
            if time.monotonic() > deadline or tasks.filter(status="FAILED").exists():
                raise RuntimeError(f"{side}: not every task succeeded: {_count_by(tasks)}")
            time.sleep(0.05)
        if side == "eventbus":
            runs = HandlerRun.objects.filter(event_id__in=events)
            if runs.filter(status=RunStatus.DONE).count() != len(events):
                raise RuntimeError(f"eventbus: not every run is done: {_count_by(runs)}")
        return found

    def wait_for_starts(self, side: str, count: int, timeout: float, poll: float = 0.25) -> None:
        """Until ``count`` handlers of ``side`` started. Each look is a read, which on SQLite
        with a rollback journal holds up the workers' commits: it looks seldom."""
        from django.db import connection

        deadline = time.monotonic() + timeout
        with connection.cursor() as cursor:
            while True:
                cursor.execute(f"SELECT COUNT(*) FROM {_work().STARTS} WHERE kind = %s", [side])
                if cursor.fetchone()[0] >= count:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{side}: handlers not all started after {timeout:.0f} s")
                time.sleep(poll)

    # -- the measures -----------------------------------------------------------------

    def measure(self, plan: Plan, profile: str) -> list[dict[str, Any]]:
        drains: dict[int, dict[str, Drain]] = {}
        with Workers(self.database, 1) as workers:
            self.paced(1, workers)  # until the worker is up
            drains[1] = self.drains(plan, workers)
            rate = LOADED * drains[1]["anchor"].rate
            latencies = {
                "paced": self.paced(plan.paced, workers),
                "loaded": self.loaded(plan.loaded, workers, rate),
            }
        with Workers(self.database, 2) as workers:
            self.paced(1, workers)
            drains[2] = self.drains(plan, workers)
        publish_us = {
            side: statistics.median(drains[1][side].publish_us + drains[2][side].publish_us)
            for side in SIDES
        }
        statements = {side: self.in_process(side, plan.in_process, profile) for side in SIDES}
        return self.rows(plan, drains, publish_us, latencies, rate, statements)

    def drains(self, plan: Plan, workers: Workers) -> dict[str, Drain]:
        """Each side's backlog drained ``plan.rounds`` times, the sides taking turns (the
        first of a round goes second in the next); the median of their rates."""
        rounds: dict[str, list[Drain]] = {side: [] for side in SIDES}
        for n in range(plan.rounds):
            for side in SIDES if n % 2 == 0 else SIDES[::-1]:
                rounds[side].append(self.drain(side, plan.backlog, workers))
        result = {}
        for side in SIDES:
            result[side] = Drain(
                statistics.median(d.rate for d in rounds[side]),
                [us for d in rounds[side] for us in d.publish_us],
                [d.rate for d in rounds[side]],
                sum(d.started for d in rounds[side]),
            )
        return result

    def drain(self, side: str, count: int, workers: Workers) -> Drain:
        self.clear()
        events, publish_us = [], []
        with self.holding():
            for n in range(count):
                started = time.perf_counter()
                event_id, _ = self.publish(side, n)
                publish_us.append((time.perf_counter() - started) * 1e6)
                events.append(event_id)
        self.release()
        self.wait_for_starts(side, count, WAIT)
        workers.check()
        found = self.check(side, events)
        times = sorted(t for ts in found.values() for t in ts)
        first, last = int(0.05 * count), int(0.95 * count) - 1
        rate = (last - first) / (times[last] - times[first])
        return Drain(rate, [statistics.median(publish_us)], [rate], len(found))

    def paced(self, count: int, workers: Workers) -> Latency:
        """Commit → handler start for ``count`` events per side, one event at a time: the
        next is published ``PAUSE`` after the handler of the last started, so none waits
        behind another. The sides take turns, event by event."""
        self.clear()
        committed: dict[str, dict[str, float]] = {side: {} for side in SIDES}
        for n in range(count):
            for side in SIDES:
                event_id, committed[side][event_id] = self.publish(side, n)
                self.wait_for_starts(side, n + 1, WAIT, poll=0.01)
                time.sleep(PAUSE)
        return self.latencies(committed, workers)

    def loaded(self, count: int, workers: Workers, rate: float) -> Latency:
        """Commit → handler start for ``count`` events per side, published ``rate`` a
        second whether or not the worker keeps up; each side alone, in two halves
        taking turns."""
        self.clear()
        committed: dict[str, dict[str, float]] = {side: {} for side in SIDES}
        for side in SIDES * 2:
            start = time.monotonic()
            for n in range(count // 2):
                pause = start + n / rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                event_id, committed[side][event_id] = self.publish(side, n)
            self.wait_for_starts(side, len(committed[side]), WAIT)
        return self.latencies(committed, workers)

    def latencies(self, committed: dict[str, dict[str, float]], workers: Workers) -> Latency:
        workers.check()
        result: dict[str, list[float]] = {}
        for side in SIDES:
            found = self.check(side, list(committed[side]))
            result[side] = sorted(
                (found[event_id][0] - at) * 1e3 for event_id, at in committed[side].items()
            )
        return Latency(result)

    def in_process(self, side: str, count: int, profile: str) -> tuple[Statements, Statements]:
        """The publishing, then the same drain in this process: statements and commits per
        event and per run, time per run; with ``profile``, the drain again under cProfile."""
        from django.db import connection

        publishing, draining = Statements(), Statements(split_on_poll=True)
        for profiled in (False, True) if profile else (False,):
            self.clear()
            events = []
            with contextlib.ExitStack() as stack:
                if not profiled:
                    stack.enter_context(publishing.counting(connection))
                started = time.perf_counter()
                for n in range(count):
                    publishing.next()
                    events.append(self.publish(side, n)[0])
                if not profiled:
                    publishing.seconds = time.perf_counter() - started
            profiler = cProfile.Profile() if profiled else None
            with contextlib.ExitStack() as stack:
                if not profiled:
                    stack.enter_context(draining.counting(connection))
                started = time.perf_counter()
                if profiler:
                    profiler.enable()
                _worker_loop()
                if profiler:
                    profiler.disable()
                if not profiled:
                    draining.seconds = time.perf_counter() - started
            self.check(side, events)
            if profiler:
                path = f"{profile}-{side}.prof"
                profiler.dump_stats(path)
                print(f"\n== cProfile of the in-process drain, {side} ({path})", file=sys.stderr)
                pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
        publishing.runs = draining.runs = count
        return publishing, draining

    def rows(
        self,
        plan: Plan,
        drains: dict[int, dict[str, Drain]],
        publish_us: dict[str, float],
        latencies: dict[str, Latency],
        rate: float,
        statements: dict[str, tuple[Statements, Statements]],
    ) -> list[dict[str, Any]]:
        vendor = self.vendor
        common = {
            "database": vendor,
            "conn_max_age": self.conn_max_age,
            "load_average": [round(x, 1) for x in (*self.load_average, *os.getloadavg())],
        }
        rows = []
        for name, how in (
            ("paced", "one event at a time"),
            ("loaded", f"under load, {rate:.0f} events/s per side"),
        ):
            latency = latencies[name]
            for q in (50, 99):
                eb, an = latency.percentile("eventbus", q), latency.percentile("anchor", q)
                rows.append(
                    row(
                        "durable_latency",
                        f"commit → durable handler start, p{q}, {how} ({vendor})",
                        eventbus=eb,
                        anchor=an,
                        anchor_name=ANCHOR,
                        unit="ms",
                        load=name,
                        events_per_second=round(rate, 1) if name == "loaded" else None,
                        percentile=q,
                        events={side: len(latency.ms[side]) for side in SIDES},
                        max_ms=round(max(latency.ms["eventbus"]), 3),
                        anchor_max_ms=round(max(latency.ms["anchor"]), 3),
                        worker_interval_s=INTERVAL,
                        **common,
                    )
                )
        for workers, drain in drains.items():
            eb, an = drain["eventbus"].rate, drain["anchor"].rate
            rows.append(
                row(
                    "durable_throughput",
                    f"durable runs drained by {workers} db_worker"
                    f"{'s' if workers > 1 else ''}, backlog of {plan.backlog:,} ({vendor})",
                    eventbus=eb,
                    anchor=an,
                    anchor_name=ANCHOR,
                    unit="runs/s",
                    target=f"drain time ≤ {TARGET:g}× the anchor's",
                    met=an / eb <= TARGET,
                    workers=workers,
                    time_ratio=round(an / eb, 3),
                    # Each round's eventbus and anchor drains ran one after the other.
                    paired_time_ratio=round(
                        statistics.median(
                            a / e
                            for e, a in zip(
                                drain["eventbus"].rounds, drain["anchor"].rounds, strict=True
                            )
                        ),
                        3,
                    ),
                    eventbus_rounds=[round(r, 1) for r in drain["eventbus"].rounds],
                    anchor_rounds=[round(r, 1) for r in drain["anchor"].rounds],
                    started={side: drain[side].started for side in SIDES},
                    **common,
                )
            )
        rows.append(
            row(
                "durable_publish",
                f"publish + commit + enqueue, one event per transaction ({vendor})",
                eventbus=publish_us["eventbus"],
                anchor=publish_us["anchor"],
                anchor_name="publish (no durable handler) + by_hand.enqueue in on_commit",
                unit="µs/event",
                **common,
            )
        )
        (eb_publish, eb), (an_publish, an) = statements["eventbus"], statements["anchor"]
        rows.append(
            row(
                "durable_statements",
                f"SQL statements per run, worker loop included, in-process drain ({vendor})",
                eventbus=eb.per_run(),
                anchor=an.per_run(),
                anchor_name=ANCHOR,
                unit="statements/run",
                commits_per_run=eb.per_run("commits"),
                anchor_commits_per_run=an.per_run("commits"),
                task_statements_per_run=eb.per_run("task"),
                anchor_task_statements_per_run=an.per_run("task"),
                in_process_us_per_run=round(eb.seconds / eb.runs * 1e6, 1),
                anchor_in_process_us_per_run=round(an.seconds / an.runs * 1e6, 1),
                runs={side: statements[side][1].runs for side in SIDES},
                publish_statements=eb_publish.per_run(),
                anchor_publish_statements=an_publish.per_run(),
                publish_commits=eb_publish.per_run("commits"),
                anchor_publish_commits=an_publish.per_run("commits"),
                one_run=eb.one,
                anchor_one_run=an.one,
                one_publish=eb_publish.one,
                anchor_one_publish=an_publish.one,
                **common,
            )
        )
        return rows


@dataclass
class Drain:
    rate: float  # runs per second
    publish_us: list[float]  # the median publish cost of each round
    rounds: list[float]  # each round's rate
    started: int  # handlers started, each once (checked), over the rounds


@dataclass
class Latency:
    ms: dict[str, list[float]]  # by side, sorted

    def percentile(self, side: str, q: int) -> float:
        values = self.ms[side]
        return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


class Statements:
    """Counts the SQL statements and commits of one connection, unit by unit (a publish,
    a run): ``next()`` starts a unit, and so does each poll of a worker's drain."""

    def __init__(self, split_on_poll: bool = False) -> None:
        self.split_on_poll = split_on_poll
        self.statements = 0
        self.task = 0  # those not on the task queue's table: the task's own
        self.commits = 0
        self.runs = 0  # units counted
        self.seconds = 0.0
        self.units: list[list[str]] = [[]]  # the statements of each unit, shortened

    def next(self) -> None:
        self.units.append([])

    @property
    def one(self) -> list[str]:
        """The statements of one unit: the last but one of a drain (its last is the
        poll that found the queue empty), else the last."""
        return self.units[-2 if self.split_on_poll and len(self.units) > 1 else -1]

    @contextlib.contextmanager
    def counting(self, connection: Any) -> Iterator[None]:
        from django_tasks_db.models import DBTaskResult

        queue = DBTaskResult._meta.db_table
        commit = connection.commit

        def counted_commit() -> None:
            self.commits += 1
            self.units[-1].append("COMMIT")
            commit()

        def wrapper(
            execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
        ) -> Any:
            self.statements += 1
            if self.split_on_poll and sql.startswith("SELECT") and queue in sql:
                # A poll of the queue: a new run, from the worker's BEGIN if it sent one.
                last = self.units[-1]
                begin = [last.pop()] if last and last[-1].startswith("BEGIN") else []
                self.units.append(begin)
            self.units[-1].append(_shorten(sql))
            begin = sql.startswith("BEGIN") and ";" not in sql  # a transaction's opening
            if queue not in sql and not begin:
                self.task += 1
            writes = sql.lstrip().split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE")
            # A whole transaction in one string (the claim on PostgreSQL) commits too.
            whole = sql.startswith("BEGIN") and "; COMMIT" in sql
            if whole or (writes and not context["connection"].in_atomic_block):
                self.commits += 1  # autocommit, or the string's own COMMIT
                self.units[-1].append("(commit)")
            return execute(sql, params, many, context)

        connection.commit = counted_commit
        try:
            with connection.execute_wrapper(wrapper):
                yield
        finally:
            del connection.commit

    def per_run(self, what: str = "statements") -> float:
        return round(getattr(self, what) / self.runs, 2)


def _shorten(sql: str) -> str:
    """A statement's verb and tables: 'SELECT eventbus_handlerrun eventbus_eventrecord';
    several in one string, each so."""
    if ";" in sql:
        return "; ".join(_shorten(part) for part in sql.split(";") if part.strip())
    plain = sql.replace('"', "")
    tables = re.findall(r"\b(?:FROM|JOIN|INTO|UPDATE)\s+(\w+)", plain)
    if not tables:
        return " ".join(plain.split()[:3])
    locks = " FOR UPDATE" if "FOR UPDATE" in plain else ""
    return " ".join([plain.split(None, 1)[0].upper(), *dict.fromkeys(tables)]) + locks


def _die_with_parent() -> None:
    """In a worker, before it starts: SIGTERM when the bench dies (Linux), so that a
    killed bench leaves no worker polling behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _worker_loop() -> None:
    """django-tasks-db's worker loop in this process, until the queue is empty."""
    from django_tasks_db.management.commands.db_worker import Worker

    Worker(
        queue_names=["default"],
        interval=0,
        batch=True,
        backend_name="default",
        startup_delay=False,
        max_tasks=None,
        worker_id="bench-in-process",
        excluded_queue_names=[],
    ).run()


def _count_by(queryset: Any) -> str:
    from django.db.models import Count

    return json.dumps(dict(queryset.values_list("status").annotate(n=Count("pk"))))


def _work() -> Any:
    import bench.durable_work

    return bench.durable_work


if __name__ == "__main__":
    main(run, db="sqlite", profile="", conn_max_age="none", journal="delete")
