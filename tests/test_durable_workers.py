"""Durable handlers with real worker processes, killed at chosen moments; effects counted.

Jepsen-style: publishers and task workers are real processes (django-tasks-db's
``db_worker``, or ``rqworker`` on the suite's own redis-server), the sweep runs in a real
``eventbus_relay``, and the faults are SIGKILLs. Each fault test then counts the Effect
rows the three durable handlers of tests/testapp/handlers.py write: one per (event,
handler), none lost and none duplicated, and every run done.

The handlers' in-process behaviour is in test_durable.py.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import pytest
from django.db import connection
from django_tasks_db.models import DBTaskResult

from eventbus.models import EventRecord, HandlerRun, RunStatus
from tests.services import REPO_ROOT
from tests.testapp.events import ShopEvent
from tests.testapp.models import Effect

T = TypeVar("T")

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.db_heavy]

# The Effect.handler each durable handler of payment.received writes.
KINDS = {
    "tests.testapp.handlers.record_payment": "record",
    "tests.testapp.handlers.notify_payment": "notify",
    "tests.testapp.handlers.audit_payment": "audit",
}
HANDLERS = {kind: path for path, kind in KINDS.items()}
BACKENDS = ["db", pytest.param("rq", marks=pytest.mark.redis)]
# Small enough for the sweep to act within a test: runs never enqueued go after 1 s, a
# run whose worker died after 2 s (the sweep itself runs once a second).
FAST = {"RELAY_SWEEP_AFTER": 1.0, "DURABLE_RUN_TIMEOUT": 2.0, "RELAY_POLL_INTERVAL": 0.2}
TIMEOUT = 60.0

# A publisher process: publish(mode, payloads as JSON, events per transaction).
# "die-after-commit" SIGKILLs itself in the first on_commit callback, which it registers
# before publish() registers the enqueue: its runs are committed and never enqueued.
# "rollback" rolls each transaction back after publishing.
PUBLISHER = """
import json, os, signal, sys

import django

django.setup()

from django.db import transaction

from eventbus import publish
from tests.testapp.events import ShopEvent

mode, payloads, per_transaction = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])


class RolledBack(Exception):
    pass


for start in range(0, len(payloads), per_transaction):
    try:
        with transaction.atomic():
            if mode == "die-after-commit":
                transaction.on_commit(lambda: os.kill(os.getpid(), signal.SIGKILL))
            batch = payloads[start : start + per_transaction]
            events = [publish(ShopEvent.PAYMENT_RECEIVED, payload) for payload in batch]
            if mode == "rollback":
                raise RolledBack
    except RolledBack:
        continue
    for event in events:
        print("published", event.payload.payment_id, event.id)
    if mode == "die-after-commit":
        sys.exit("still alive after the commit")
"""


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants, read from /proc.

    Not a process group: an rqworker runs each job in a work horse that leaves its group,
    and that keeps running when only its parent is killed.
    """
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    tree = [pid]
    for parent in tree:  # grows while it is walked: breadth first
        tree.extend(children.get(parent, ()))
    return tree


def signal_all(pids: list[int], signum: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


class Cluster:
    """The processes of one test, all ended by ``close()``.

    ``backend`` is "db" (django-tasks-db, ``db_worker``) or "rq" (django-tasks-rq,
    ``rqworker`` on ``redis_url``). ``settings`` adjusts EVENTBUS in the processes
    started after it is set.
    """

    def __init__(self, backend: str, logs: Path, redis_url: str | None = None) -> None:
        self.backend = backend
        self.logs = logs
        self.redis_url = redis_url
        self.settings: dict[str, Any] = {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.kills = 0
        self._started = 0
        self._redis: Any = None

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
            "EVENTBUS_TEST_DB_NAME": str(connection.settings_dict["NAME"]),
            "EVENTBUS_TEST_SETTINGS_OVERRIDE": json.dumps(self.settings),
            "EVENTBUS_TEST_LOG": "1",  # eventbus's warnings go to the process's log
            "EVENTBUS_TEST_SQLITE_NO_FSYNC": "1",  # see tests/settings.py
        }
        env.pop("EVENTBUS_TEST_RQ_URL", None)
        if self.backend == "rq":
            assert self.redis_url is not None
            env["EVENTBUS_TEST_RQ_URL"] = self.redis_url
        return env

    def start(self, role: str, *argv: str) -> tuple[str, subprocess.Popen[bytes]]:
        """Start ``python *argv``; its name (role and number), and the process."""
        self._started += 1
        name = f"{role}{self._started}"
        with (self.logs / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, *argv],
                cwd=REPO_ROOT,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes[name] = process
        return name, process

    def worker(self) -> str:
        """Start a task worker; its name, which is also its id in the task backend."""
        name = f"worker{self._started + 1}"  # the name start() gives it
        if self.backend == "rq":
            argv = ["rqworker", "--job-class", "django_tasks_rq.backend.Job", "--with-scheduler"]
            argv += ["--name", name, "default"]
        else:
            argv = ["db_worker", "--interval", "0.05", "--no-startup-delay", "--no-reload"]
            argv += ["--worker-id", name]
        return self.start("worker", "-m", "django", *argv)[0]

    def relay(self) -> None:
        """Start ``manage.py eventbus_relay``, whose loop sweeps the durable runs."""
        self.start("relay", "-m", "django", "eventbus_relay")

    def publisher(
        self, payloads: list[dict[str, Any]], per_transaction: int = 1, mode: str = "commit"
    ) -> subprocess.Popen[bytes]:
        args = [mode, json.dumps(payloads), str(per_transaction)]
        return self.start("publisher", "-c", PUBLISHER, *args)[1]

    def publish(self, payloads: list[dict[str, Any]], **options: Any) -> int:
        """Run a publisher to its end; its exit code (negative: killed by that signal)."""
        return self.publisher(payloads, **options).wait(TIMEOUT)

    def published(self) -> dict[int, UUID]:
        """The events the publishers have committed so far, by payment id."""
        events = {}
        for log in self.logs.glob("publisher*.log"):
            for line in log.read_text().splitlines(keepends=True):
                if line.startswith("published ") and line.endswith("\n"):  # whole lines
                    _, payment_id, event_id = line.split()
                    events[int(payment_id)] = UUID(event_id)
        return events

    def kill(self, name: str) -> None:
        """SIGKILL the process and its descendants at once, as when its machine dies."""
        process = self.processes[name]
        signal_all(process_tree(process.pid), signal.SIGKILL)
        process.wait(10)
        self.kills += 1

    def close(self) -> None:
        """SIGTERM every process started, then SIGKILL what is left of them after 10 s."""
        trees = [process_tree(process.pid) for process in self.processes.values()]
        for process in self.processes.values():
            signal_all([process.pid], signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process, tree in zip(self.processes.values(), trees, strict=True):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(deadline - time.monotonic(), 0.1))
            signal_all(tree, signal.SIGKILL)  # with work horses and schedulers
            process.wait(10)
        if self._redis is not None:
            self._redis.close()

    def report(self) -> str:
        """The tail of every process's log, for failure messages."""
        parts = []
        for name, process in self.processes.items():
            text = (self.logs / f"{name}.log").read_text(errors="replace")
            tail = "\n".join(text.splitlines()[-25:])
            parts.append(f"--- {name} (exit {process.poll()}) ---\n{tail}")
        return "\n".join(parts)

    # -- the task backend, seen from the test ------------------------------------

    @property
    def redis(self) -> Any:
        if self._redis is None:
            import redis

            self._redis = redis.Redis.from_url(str(self.redis_url))
        return self._redis

    def _job(self, task_id: str) -> Any:
        from rq.job import Job

        return Job.fetch(task_id, connection=self.redis)

    def holder(self, task_id: str) -> str | None:
        """The worker the task was last handed to, if any."""
        if not task_id:
            return None
        if self.backend == "rq":
            from rq.exceptions import NoSuchJobError

            try:
                return self._job(task_id).worker_name  # type: ignore[no-any-return]
            except NoSuchJobError:
                return None
        ids = DBTaskResult.objects.filter(id=task_id).values_list("worker_ids", flat=True).first()
        return ids[-1] if ids else None

    def task_state(self, task_id: str) -> tuple[str, Any]:
        """The task's status in its backend (READY, RUNNING, SUCCESSFUL, FAILED) and result."""
        if self.backend == "rq":
            job = self._job(task_id)
            status = str(job.get_status(refresh=True).value)
            status = {"queued": "READY", "scheduled": "READY", "deferred": "READY"}.get(
                status, {"started": "RUNNING", "finished": "SUCCESSFUL"}.get(status, "FAILED")
            )
            return status, job.return_value(refresh=True) if status == "SUCCESSFUL" else None
        task = DBTaskResult.objects.get(id=task_id)
        return str(task.status), task.return_value

    def tasks(self) -> int:
        """How many tasks the backend holds, in any state."""
        if self.backend == "rq":
            # The job hashes, not their results and executions (rq:job:<id>:...).
            return sum(key.count(b":") == 2 for key in self.redis.keys("rq:job:*"))
        return DBTaskResult.objects.count()

    def redeliver(self, task_id: str) -> None:
        """Hand a task that was never acknowledged to the workers again, as an
        at-least-once backend does once it presumes the worker dead."""
        if self.backend == "rq":
            from rq import Queue
            from rq.registry import StartedJobRegistry

            queue = Queue("default", connection=self.redis)
            job = self._job(task_id)
            StartedJobRegistry(queue=queue).remove_executions(job)
            queue.enqueue_job(job)
        else:
            DBTaskResult.objects.filter(id=task_id).update(status="READY", worker_ids=[])


@pytest.fixture
def backend() -> str:
    """The task backend of the test's workers; tests that run on both parametrize it."""
    return "db"


@pytest.fixture
def cluster(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> Iterator[Cluster]:
    redis_url = request.getfixturevalue("redis_url") if backend == "rq" else None
    cluster = Cluster(backend, tmp_path, redis_url)
    try:
        yield cluster
    finally:
        cluster.close()


# -- reading the outcome --------------------------------------------------------------


def wait_for(what: str, ready: Callable[[], T], cluster: Cluster, timeout: float = TIMEOUT) -> T:
    """What ``ready()`` gives once it is true; the test fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := ready():
            return value
        time.sleep(0.1)
    pytest.fail(f"{what}: not within {timeout:g} s\n{cluster.report()}")


def payment_events() -> list[UUID]:
    """The payment.received events in the log, by payment id."""
    records = EventRecord.objects.filter(type=ShopEvent.PAYMENT_RECEIVED)
    return [r.id for r in sorted(records, key=lambda r: r.payload["payment_id"])]


def run_of(event_id: UUID, kind: str) -> HandlerRun:
    return HandlerRun.objects.get(event_id=event_id, handler=HANDLERS[kind])


def effects(event_id: UUID, kind: str) -> int:
    return Effect.objects.filter(event_id=event_id, handler=kind).count()


def settled() -> bool:
    """Whether every run has ended, done or dead."""
    return not HandlerRun.objects.filter(status__in=[RunStatus.PENDING, RunStatus.RUNNING]).exists()


def tally(events: list[UUID]) -> dict[str, int]:
    """Effects against what exactly once means: one per (event, durable handler)."""
    expected = {(event, kind) for event in events for kind in HANDLERS}
    counts = Counter(Effect.objects.values_list("event_id", "handler"))
    return {
        "events": len(events),
        "runs": HandlerRun.objects.filter(event_id__in=events).count(),
        "done": HandlerRun.objects.filter(event_id__in=events, status=RunStatus.DONE).count(),
        "effects": sum(counts.values()),
        "duplicates": sum(n - 1 for n in counts.values() if n > 1),
        "lost": len(expected - counts.keys()),
        "strays": len(counts.keys() - expected),
    }


def assert_exactly_once(events: list[UUID], cluster: Cluster) -> dict[str, int]:
    figures = tally(events)
    runs = 3 * len(events)
    expected = {**figures, "runs": runs, "done": runs, "effects": runs}
    expected.update(duplicates=0, lost=0, strays=0)
    assert figures == expected, cluster.report()
    return figures


def wait_uncommitted_write(cluster: Cluster) -> None:
    """Wait until a worker has written and not committed: record_payment's hold.

    PostgreSQL shows the worker's session idle in its transaction after the handler's
    last write (the event it publishes), longer than any other handler stays there; on
    SQLite an uncommitted write is invisible, so the test gives the handler a second.
    """
    if connection.vendor != "postgresql":
        time.sleep(1.0)
        return

    def holding() -> bool:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state = 'idle in transaction' AND query LIKE %s "
                "AND state_change < now() - interval '200 milliseconds'",
                ['INSERT INTO "eventbus_eventrecord"%'],
            )
            return bool(cursor.fetchone()[0])

    wait_for("record_payment to write and hold its transaction", holding, cluster)


# -- faults ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_publisher_killed_after_its_commit_the_sweep_enqueues_its_runs(cluster):
    cluster.settings.update(FAST)
    cluster.worker()
    payloads = [{"payment_id": n} for n in range(3)]
    code = cluster.publish(payloads, per_transaction=3, mode="die-after-commit")
    assert code == -signal.SIGKILL, cluster.report()
    events = payment_events()
    assert len(events) == 3
    runs = HandlerRun.objects.filter(event_id__in=events)
    # Committed, never enqueued: nothing a worker could see.
    assert runs.count() == 9
    assert set(runs.values_list("status", "enqueued_at")) == {(RunStatus.PENDING, None)}
    assert cluster.tasks() == 0

    cluster.relay()
    wait_for("every run done", settled, cluster)
    assert_exactly_once(events, cluster)
    assert not runs.filter(enqueued_at=None).exists()  # by the sweep
    assert set(runs.values_list("attempts", flat=True)) == {1}


@pytest.mark.parametrize("backend", BACKENDS)
def test_worker_killed_before_its_commit_the_run_is_retried_and_applied_once(cluster):
    cluster.settings.update(FAST)
    workers = [cluster.worker(), cluster.worker()]
    cluster.relay()
    # record_payment writes, publishes, then holds its transaction open (first attempt).
    assert cluster.publish([{"payment_id": 1, "hold": 60}]) == 0, cluster.report()
    [event] = payment_events()
    record = run_of(event, "record")

    def started() -> bool:
        record.refresh_from_db()
        return record.status == RunStatus.RUNNING and cluster.holder(record.task_id) in workers

    wait_for("record_payment to start", started, cluster)
    wait_uncommitted_write(cluster)
    assert effects(event, "record") == 0  # written, not committed
    victim = cluster.holder(record.task_id)
    assert victim is not None
    cluster.kill(victim)

    wait_for("every run done", settled, cluster)
    assert_exactly_once([event], cluster)
    record.refresh_from_db()
    assert record.attempts == 2  # the killed attempt counted; the sweep ran it again
    assert Effect.objects.get(event_id=event, handler="record").attempt == 2
    # What the killed attempt published rolled back with its writes.
    assert EventRecord.objects.filter(type=ShopEvent.PAYMENT_SETTLED).count() == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_worker_killed_after_its_commit_the_run_is_done_and_a_redelivery_is_a_no_op(cluster):
    cluster.settings.update(FAST)
    workers = [cluster.worker(), cluster.worker()]
    cluster.relay()
    # record_payment commits, then holds before its task returns to the worker.
    assert cluster.publish([{"payment_id": 1, "hold_after_commit": 60}]) == 0, cluster.report()
    [event] = payment_events()
    wait_for("record_payment's commit", lambda: effects(event, "record") == 1, cluster)
    record = run_of(event, "record")
    task_id, status = record.task_id, record.status
    victim = cluster.holder(task_id)
    assert victim in workers
    cluster.kill(victim)
    # The backend never heard back: for it, the task is still running.
    unacknowledged = cluster.task_state(task_id)[0]

    wait_for("every run done", settled, cluster)
    # Long enough for the sweep to see the run past DURABLE_RUN_TIMEOUT, and leave it.
    time.sleep(FAST["DURABLE_RUN_TIMEOUT"] + 1.5)
    cluster.redeliver(task_id)

    def redelivered() -> bool:
        return cluster.task_state(task_id)[0] in ("SUCCESSFUL", "FAILED")

    wait_for("the redelivered task to end", redelivered, cluster)
    assert_exactly_once([event], cluster)
    assert (status, unacknowledged) == (RunStatus.DONE, "RUNNING")
    assert cluster.task_state(task_id) == ("SUCCESSFUL", "skipped: the run is done")
    record.refresh_from_db()
    assert (record.status, record.attempts, record.task_id) == (RunStatus.DONE, 1, task_id)


def test_a_handler_that_raises_is_retried_with_backoff_then_dead_others_unaffected(cluster):
    base = 0.3
    cluster.settings.update(DURABLE_BACKOFF_BASE=base)
    cluster.worker()
    payloads = [{"payment_id": 1, "fail_times": 10}, {"payment_id": 2, "fail_times": 1}]
    assert cluster.publish(payloads, per_transaction=2) == 0, cluster.report()
    doomed, flaky = payment_events()
    wait_for("every run ended", settled, cluster)

    notify = run_of(doomed, "notify")  # max_attempts=3 on its decorator
    assert notify.status == RunStatus.DEAD and notify.attempts == 3
    assert notify.last_error == "RuntimeError: notify failed on attempt 3"
    assert notify.traceback.startswith("Traceback") and "notify_payment" in notify.traceback
    assert effects(doomed, "notify") == 0
    # Its three tasks: the first at once, each retry after a doubling backoff.
    tasks = sorted(
        (t for t in DBTaskResult.objects.all() if t.args_kwargs["args"] == [str(notify.id)]),
        key=lambda t: t.enqueued_at,
    )
    assert [t.return_value for t in tasks] == ["retrying", "retrying", "dead"]
    for attempt, (before, retry) in enumerate(itertools.pairwise(tasks), start=1):
        assert before.started_at is not None and retry.started_at is not None
        assert retry.run_after - before.started_at >= timedelta(seconds=base * 2 ** (attempt - 1))
        assert retry.started_at >= retry.run_after

    recovered = run_of(flaky, "notify")
    assert recovered.status == RunStatus.DONE and recovered.attempts == 2
    assert Effect.objects.get(event_id=flaky, handler="notify").attempt == 2
    # The others ran once, on their first attempt.
    for event in (doomed, flaky):
        for kind in ("record", "audit"):
            run = run_of(event, kind)
            assert (run.status, run.attempts, effects(event, kind)) == (RunStatus.DONE, 1, 1)


def test_a_rolled_back_publish_leaves_no_run_and_no_task_for_the_workers(cluster):
    cluster.settings.update(FAST)
    cluster.worker()
    cluster.relay()
    assert cluster.publish([{"payment_id": 1}], mode="rollback") == 0, cluster.report()
    # A committed event after it: once its runs are done, the worker has seen everything.
    assert cluster.publish([{"payment_id": 2}]) == 0, cluster.report()
    [committed] = payment_events()
    wait_for("the committed event's runs done", settled, cluster)
    time.sleep(FAST["RELAY_SWEEP_AFTER"] + 1.0)  # and the sweep has had its chance
    assert_exactly_once([committed], cluster)
    assert set(HandlerRun.objects.values_list("event_id", flat=True)) == {committed}
    assert {t.args_kwargs["args"][0] for t in DBTaskResult.objects.all()} == {
        str(run.id) for run in HandlerRun.objects.all()
    }
    assert EventRecord.objects.filter(type=ShopEvent.PAYMENT_RECEIVED).count() == 1


# -- under load --------------------------------------------------------------------


def kill_its_holder(cluster: Cluster, run: HandlerRun, workers: list[str], deadline: float):
    """Once ``run`` holds its transaction open, SIGKILL its worker and start another."""

    def started() -> bool:
        run.refresh_from_db()
        return run.status == RunStatus.RUNNING and cluster.holder(run.task_id) in workers

    wait_for(f"{run} to start", started, cluster, timeout=deadline - time.monotonic())
    wait_uncommitted_write(cluster)
    victim = cluster.holder(run.task_id)
    assert victim is not None
    cluster.kill(victim)
    workers.remove(victim)
    workers.append(cluster.worker())


@pytest.mark.parametrize(
    ("backend", "count"), [("db", 1000), pytest.param("rq", 300, marks=pytest.mark.redis)]
)
def test_events_under_two_workers_one_killed_twice_mid_handler_apply_once(cluster, count):
    cluster.settings.update(RELAY_SWEEP_AFTER=5.0, DURABLE_RUN_TIMEOUT=3.0)
    started = time.monotonic()
    deadline = started + 240
    # Two events, a third and two thirds in, hold record_payment's transaction open on its
    # first attempt: the worker that takes each is killed there, its writes uncommitted.
    held = [count // 3, 2 * count // 3]
    payloads = [{"payment_id": n, **({"hold": 60} if n in held else {})} for n in range(count)]
    workers = [cluster.worker(), cluster.worker()]
    cluster.relay()
    publisher = cluster.publisher(payloads, per_transaction=10)
    interrupted = []
    for payment_id in held:
        event = wait_for(
            f"payment {payment_id} published",
            lambda payment_id=payment_id: cluster.published().get(payment_id),
            cluster,
        )
        run = run_of(event, "record")
        kill_its_holder(cluster, run, workers, deadline)
        interrupted.append(run.id)
    assert publisher.wait(max(deadline - time.monotonic(), 1)) == 0, cluster.report()
    wait_for("every run ended", settled, cluster, timeout=max(deadline - time.monotonic(), 1))
    elapsed = time.monotonic() - started

    events = payment_events()
    figures = tally(events)
    retried = HandlerRun.objects.filter(attempts__gt=1).count()
    attempts = sorted(
        HandlerRun.objects.filter(pk__in=interrupted).values_list("attempts", flat=True)
    )
    print(
        f"\n[durable workers, {cluster.backend} backend on {connection.vendor}] "
        f"events {figures['events']}, runs {figures['runs']} ({figures['done']} done), "
        f"effects {figures['effects']}, duplicates {figures['duplicates']}, "
        f"lost {figures['lost']}, worker kills {cluster.kills} (attempts of the runs "
        f"killed: {attempts}), runs retried {retried}, tasks {cluster.tasks()}, "
        f"{elapsed:.1f} s"
    )
    assert len(events) == count
    assert_exactly_once(events, cluster)
    assert cluster.kills == 2 and attempts == [2, 2]
