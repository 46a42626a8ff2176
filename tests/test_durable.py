"""Durable handlers in one process: record, enqueue after commit, execute once, retry, sweep.

The handlers are tests/testapp/handlers.py's three on ``payment.received``. Real worker
processes and faults are in test_durable_workers.py.
"""

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import django
import pytest
from django.core.checks import run_checks
from django.db import ProgrammingError, connection, connections, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from eventbus import Event, EventDispatcher, InvalidHandlerError, current_run, publish
from eventbus.durable import execute, retry, sweep, task_backend
from eventbus.ids import uuid7
from eventbus.models import EventRecord, HandlerRun, RunStatus
from tests.testapp.events import ShopEvent
from tests.testapp.models import Effect

pytestmark = pytest.mark.django_db

HANDLERS = {
    "record": "tests.testapp.handlers.record_payment",
    "notify": "tests.testapp.handlers.notify_payment",
    "audit": "tests.testapp.handlers.audit_payment",
}
NO_BACKOFF = {"DURABLE_BACKOFF_BASE": 0.001, "DURABLE_BACKOFF_MAX": 0.001}


def pay(payment_id: int = 1, **payload: Any) -> Event[Any]:
    return publish(ShopEvent.PAYMENT_RECEIVED, {"payment_id": payment_id, **payload})


def run_of(event: Event[Any], handler: str) -> HandlerRun:
    return HandlerRun.objects.get(event_id=event.id, handler=HANDLERS[handler])


def effects(event: Event[Any], handler: str) -> int:
    return Effect.objects.filter(event_id=event.id, handler=handler).count()


def test_runs_are_recorded_with_the_event_and_enqueued_only_after_the_commit(
    django_capture_on_commit_callbacks,
):
    with django_capture_on_commit_callbacks(execute=True) as callbacks, transaction.atomic():
        event = pay()
        runs = HandlerRun.objects.filter(event_id=event.id)
        assert sorted(runs.values_list("handler", flat=True)) == sorted(HANDLERS.values())
        assert set(runs.values_list("status", flat=True)) == {RunStatus.PENDING}
        # Nothing reaches the task backend before the commit.
        assert not DBTaskResult.objects.exists()
        assert not runs.filter(enqueued_at__isnull=False).exists()
    assert callbacks
    runs = HandlerRun.objects.filter(event_id=event.id)
    assert runs.filter(enqueued_at__isnull=False).count() == 3
    tasks = DBTaskResult.objects.all()
    assert tasks.count() == 3
    assert {task.args_kwargs["args"][0] for task in tasks} == {str(run.id) for run in runs}
    assert {task.task_path for task in tasks} == {"eventbus.tasks.run_handler"}
    assert set(runs.values_list("task_id", flat=True)) == {str(task.id) for task in tasks}


def test_a_rolled_back_publish_leaves_no_run_and_no_task(django_capture_on_commit_callbacks):
    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        pay()
        raise RuntimeError("roll back")
    assert not HandlerRun.objects.exists()
    assert not EventRecord.objects.exists()
    assert not DBTaskResult.objects.exists()


def test_a_run_applies_its_effect_once_however_often_it_is_executed():
    event = pay()
    run = run_of(event, "record")
    assert execute(str(run.id)) == "done"
    assert execute(str(run.id)) == "skipped: the run is done"
    assert effects(event, "record") == 1
    run.refresh_from_db()
    assert run.status == RunStatus.DONE and run.attempts == 1
    assert run.started_at is not None and run.finished_at is not None
    assert run.finished_at >= run.started_at


def test_a_handler_that_raises_is_retried_with_backoff_then_succeeds():
    event = pay(fail_times=2)
    run = run_of(event, "notify")
    before = timezone.now()
    assert execute(str(run.id)) == "retrying"
    run.refresh_from_db()
    assert run.status == RunStatus.PENDING and run.attempts == 1
    assert "notify failed on attempt 1" in run.last_error
    assert "RuntimeError" in run.traceback and "notify_payment" in run.traceback
    # Backoff: 2 s after the first failure (DURABLE_BACKOFF_BASE), enqueued to start then.
    assert run.due_at >= before + timedelta(seconds=2)
    assert run.enqueued_at is not None
    retry_task = DBTaskResult.objects.get(id=run.task_id)
    assert retry_task.run_after is not None and retry_task.run_after >= before + timedelta(
        seconds=2
    )
    assert execute(str(run.id)) == "retrying"
    run.refresh_from_db()
    assert run.due_at >= run.finished_at + timedelta(seconds=4) - timedelta(milliseconds=50)
    assert execute(str(run.id)) == "done"
    run.refresh_from_db()
    assert run.status == RunStatus.DONE and run.attempts == 3 and run.last_error == ""
    assert effects(event, "notify") == 1


@override_settings(EVENTBUS={"CATALOGS": ["tests.testapp.events.EVENT_PAYLOAD_MAP"], **NO_BACKOFF})
def test_after_its_last_attempt_a_run_is_dead_with_its_traceback_and_others_unaffected():
    event = pay(fail_times=10)
    notify = run_of(event, "notify")  # max_attempts=3 on the decorator
    outcomes = [execute(str(notify.id)) for _ in range(4)]
    assert outcomes == ["retrying", "retrying", "dead", "skipped: the run is dead"]
    notify.refresh_from_db()
    assert notify.status == RunStatus.DEAD and notify.attempts == 3 == notify.max_attempts
    assert "notify failed on attempt 3" in notify.last_error
    assert "Traceback" in notify.traceback
    assert effects(event, "notify") == 0
    for other in ("record", "audit"):
        assert execute(str(run_of(event, other).id)) == "done"
        assert effects(event, other) == 1


def test_events_published_by_a_durable_handler_are_caused_by_the_handled_event():
    event = pay()
    execute(str(run_of(event, "record").id))
    settled = EventRecord.objects.get(type=ShopEvent.PAYMENT_SETTLED)
    assert settled.causation_id == event.id
    assert settled.correlation_id == event.correlation_id


def test_a_failed_attempt_rolls_back_what_the_handler_published(monkeypatch):
    event = pay()
    run = run_of(event, "record")

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("after the publish")

    monkeypatch.setattr(Effect.objects, "create", broken)
    assert execute(str(run.id)) == "retrying"
    assert not EventRecord.objects.filter(type=ShopEvent.PAYMENT_SETTLED).exists()


def test_current_run_gives_the_idempotency_key_inside_the_handler_only():
    seen = []
    dispatcher_event = pay()
    run = run_of(dispatcher_event, "audit")
    from tests.testapp import handlers

    original = handlers._effect

    def spy(event: Event[Any], handler: str) -> None:
        seen.append(current_run().idempotency_key)
        original(event, handler)

    handlers._effect = spy
    try:
        execute(str(run.id))
    finally:
        handlers._effect = original
    assert seen == [f"{dispatcher_event.id}:{HANDLERS['audit']}"]
    assert current_run() is None


def _status_elsewhere(run_id: UUID) -> tuple[str, int]:
    """The run's status and attempts as another connection (another thread's) sees them."""
    try:
        return HandlerRun.objects.values_list("status", "attempts").get(pk=run_id)
    finally:
        connections.close_all()


@pytest.mark.db_heavy
@pytest.mark.django_db(transaction=True)
def test_the_claim_commits_before_the_handler_runs(monkeypatch):
    """Step 1 is a transaction of its own: while the handler runs, other connections see the
    run running with this attempt counted. On PostgreSQL its commit does not wait for the
    disk (durable.py says why that loses nothing a worker's death could)."""
    event = pay()
    run = run_of(event, "audit")
    from tests.testapp import handlers

    seen = []
    original = handlers._effect

    def spy(event: Event[Any], handler: str) -> None:
        with ThreadPoolExecutor(1) as elsewhere:
            seen.append(elsewhere.submit(_status_elsewhere, run.id).result())
        original(event, handler)

    monkeypatch.setattr(handlers, "_effect", spy)
    with CaptureQueriesContext(connection) as queries:
        assert execute(str(run.id)) == "done"
    assert seen == [(RunStatus.RUNNING, 1)]
    claim = _statements(queries)
    if connection.vendor == "postgresql" and _claim_sql().claim_in_one_trip:
        # psycopg 3 binding on the client: the transaction as one string, and the run
        # read after its commit, one round trip; step 2's mark comes next
        assert claim[0].startswith(
            'BEGIN; SET LOCAL synchronous_commit TO OFF; UPDATE "eventbus_handlerrun"'
        )
        assert '; COMMIT; SELECT "eventbus_handlerrun"."id"' in claim[0]
        assert claim[1].startswith('UPDATE "eventbus_handlerrun" SET "status"')
    elif connection.vendor == "postgresql":
        assert claim[0] == "SET LOCAL synchronous_commit TO OFF"
        assert claim[1].startswith('UPDATE "eventbus_handlerrun"')
    else:  # a rollback journal: no level is safe to lower, so none is touched
        assert claim[0].startswith('UPDATE "eventbus_handlerrun"')
        assert not [sql for sql in claim if sql.startswith("PRAGMA synchronous =")]
    run.refresh_from_db()
    assert run.status == RunStatus.DONE and run.attempts == 1
    assert effects(event, "audit") == 1


def _claim_sql() -> Any:
    from eventbus.durable import _statements as statements

    return statements(connection.alias)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_claim_that_fails_leaves_the_connection_usable(monkeypatch):
    """The one-string claim's transaction is the worker's to end: a statement that fails
    in it must not leave the connection in an aborted transaction for the next run."""
    from psycopg.pq import TransactionStatus

    event = pay()
    run = run_of(event, "audit")
    run_sql = _claim_sql()
    assert run_sql.claim_in_one_trip
    broken = run_sql.claim.replace('"eventbus_handlerrun"', '"eventbus_no_such_table"', 1)
    monkeypatch.setattr(run_sql, "claim", broken)
    with pytest.raises(ProgrammingError, match="eventbus_no_such_table"):
        execute(str(run.id))
    assert connection.connection.info.transaction_status == TransactionStatus.IDLE
    monkeypatch.undo()
    assert execute(str(run.id)) == "done"  # the same connection, the next run
    assert effects(event, "audit") == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_one_string_claim_begins_at_the_configured_isolation_level():
    """psycopg puts OPTIONS["isolation_level"] in the BEGIN it sends; the claim's own
    BEGIN must say the same, or step 1 would run at the server's default."""
    from psycopg import IsolationLevel

    event = pay()
    run = run_of(event, "audit")
    connection.ensure_connection()
    raw = connection.connection
    raw.isolation_level = IsolationLevel.REPEATABLE_READ  # as Django sets it from OPTIONS
    try:
        with CaptureQueriesContext(connection) as queries:
            assert execute(str(run.id)) == "done"
    finally:
        raw.isolation_level = None
    claim = _statements(queries)
    assert claim[0].startswith("BEGIN ISOLATION LEVEL REPEATABLE READ; SET LOCAL")


def test_only_cursors_that_bind_on_the_client_take_the_claim_in_one_string():
    """The one-string claim needs psycopg 3's ClientCursor (Django's default); a cursor
    that binds on the server takes one statement per execute."""
    import psycopg

    from eventbus.durable import _many_statements_per_execute

    class Client(psycopg.ClientCursor):  # type: ignore[type-arg]
        pass

    def takes(**options: Any) -> bool:
        return _many_statements_per_execute(SimpleNamespace(settings_dict={"OPTIONS": options}))

    assert takes()
    assert takes(server_side_binding=False)
    assert not takes(server_side_binding=True)
    assert not takes(cursor_factory=psycopg.Cursor)
    assert takes(cursor_factory=Client)
    assert takes(cursor_factory=Client, server_side_binding=True)  # the factory decides


def _statements(queries: CaptureQueriesContext) -> list[str]:
    # Django 6 also logs BEGIN and COMMIT, which Django 5.2 leaves out; the journal mode
    # and level are read once per connection.
    reads = ("BEGIN", "COMMIT", "PRAGMA journal_mode", "PRAGMA synchronous")
    return [q["sql"] for q in queries.captured_queries if q["sql"] not in reads]


@pytest.mark.django_db(transaction=True)
def test_in_wal_mode_the_claim_commits_without_an_fsync_and_the_handler_with_one(wal, monkeypatch):
    """In WAL mode the claim commits at synchronous NORMAL (no fsync), and the level is
    back at FULL before step 2 begins, so the handler's commit waits for the disk and
    takes the claim's pages with it."""
    event = pay()
    run = run_of(event, "audit")
    from tests.testapp import handlers

    seen: list[Any] = []
    original = handlers._effect

    def spy(event: Event[Any], handler: str) -> None:
        with connection.cursor() as cursor:  # the worker's own connection, in step 2
            cursor.execute("PRAGMA synchronous")
            level = cursor.fetchone()[0]
        with ThreadPoolExecutor(1) as elsewhere:
            seen.append((level, elsewhere.submit(_status_elsewhere, run.id).result()))
        original(event, handler)

    monkeypatch.setattr(handlers, "_effect", spy)
    reads = []
    for _ in range(2):
        with CaptureQueriesContext(connection) as queries:
            assert execute(str(run.id), force=bool(seen)) == "done"
        claim = _statements(queries)
        assert claim[0] == "PRAGMA synchronous = NORMAL"
        assert claim[1].startswith('UPDATE "eventbus_handlerrun"')
        assert claim[2] == "PRAGMA synchronous = 2"
        reads.append(
            [q["sql"] for q in queries.captured_queries if q["sql"] == "PRAGMA journal_mode"]
        )
    assert reads == [["PRAGMA journal_mode"], []]  # read once per connection
    assert seen == [(2, (RunStatus.RUNNING, 1)), (2, (RunStatus.RUNNING, 2))]
    run.refresh_from_db()
    assert run.status == RunStatus.DONE and run.attempts == 2
    assert effects(event, "audit") == 2  # forced: the second run applied it again


@pytest.mark.django_db(transaction=True)
def test_with_autocommit_off_the_claim_is_the_callers_and_the_level_is_left_alone(wal):
    """A caller that turned autocommit off holds the transaction: the claim commits with
    it, at its level (a PRAGMA there would fail, and a NORMAL left behind would skip the
    fsync of every later commit on the connection)."""
    event = pay()
    run = run_of(event, "audit")
    transaction.set_autocommit(False)
    try:
        with CaptureQueriesContext(connection) as queries:
            assert execute(str(run.id)) == "done"
        transaction.commit()
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA synchronous")
            assert cursor.fetchone()[0] == 2
    finally:
        transaction.set_autocommit(True)
    assert not [q for q in queries.captured_queries if q["sql"].startswith("PRAGMA synchronous =")]
    run.refresh_from_db()
    assert run.status == RunStatus.DONE and run.attempts == 1
    assert effects(event, "audit") == 1


def test_a_run_whose_handler_is_gone_is_dead_with_a_clear_error():
    event = pay()
    run = run_of(event, "audit")
    HandlerRun.objects.filter(pk=run.pk).update(handler="tests.testapp.renamed.audit_payment")
    assert execute(str(run.id)) == "dead"
    run.refresh_from_db()
    assert run.status == RunStatus.DEAD
    assert "tests.testapp.renamed.audit_payment is not a durable handler" in run.last_error
    assert "renamed or removed" in run.last_error
    assert execute(str(run.id)) == "skipped: the run is dead"  # no crash loop


def test_a_run_whose_event_was_pruned_is_dead_with_a_clear_error():
    event = pay()
    run = run_of(event, "audit")
    EventRecord.objects.filter(pk=event.id).delete()
    assert HandlerRun.objects.filter(pk=run.pk).exists()  # the run outlives the row
    assert execute(str(run.id)) == "dead"
    run.refresh_from_db()
    assert f"Event {event.id} is no longer in the event log" in run.last_error


def test_a_run_that_no_longer_exists_is_skipped():
    assert execute(str(uuid7())) == "skipped: the run no longer exists"


def test_retry_gives_a_dead_run_fresh_attempts_and_enqueues_it(django_capture_on_commit_callbacks):
    event = pay(fail_times=10)
    run = run_of(event, "notify")
    HandlerRun.objects.filter(pk=run.pk).update(status=RunStatus.DEAD, attempts=3)
    assert retry([run.id, run_of(event, "audit").id]) == 1  # only dead runs are retried
    run.refresh_from_db()
    assert run.status == RunStatus.PENDING and run.attempts == 0
    assert DBTaskResult.objects.filter(id=run.task_id).exists()


def test_sweep_enqueues_runs_whose_publisher_died_after_the_commit():
    event = pay()  # the test's transaction never commits: as if the publisher died then
    runs = HandlerRun.objects.filter(event_id=event.id)
    assert not runs.filter(enqueued_at__isnull=False).exists()
    assert not sweep()  # not yet: the publisher may still be enqueueing
    later = timezone.now() + timedelta(seconds=11)  # RELAY_SWEEP_AFTER is 10 s
    report = sweep(now=later)
    assert sorted(report.enqueued) == sorted(runs.values_list("id", flat=True))
    assert DBTaskResult.objects.count() == 3
    assert not sweep(now=later)  # enqueued once


@override_settings(
    EVENTBUS={"CATALOGS": ["tests.testapp.events.EVENT_PAYLOAD_MAP"], "DURABLE_RUN_TIMEOUT": 5}
)
def test_sweep_runs_again_a_run_whose_worker_was_lost_or_ends_it_dead():
    event = pay()
    lost, last = run_of(event, "record"), run_of(event, "notify")
    started = timezone.now() - timedelta(seconds=6)
    HandlerRun.objects.filter(pk=lost.pk).update(
        status=RunStatus.RUNNING, attempts=1, started_at=started
    )
    HandlerRun.objects.filter(pk=last.pk).update(
        status=RunStatus.RUNNING, attempts=3, started_at=started
    )
    report = sweep()
    assert report.lost == [lost.id] and report.dead == [last.id]
    lost.refresh_from_db()
    last.refresh_from_db()
    assert lost.status == RunStatus.PENDING and lost.enqueued_at is not None
    assert last.status == RunStatus.DEAD and "worker was lost" in last.last_error
    assert execute(str(lost.id)) == "done" and effects(event, "record") == 1


@override_settings(
    EVENTBUS={"CATALOGS": ["tests.testapp.events.EVENT_PAYLOAD_MAP"], "DURABLE_RUN_TIMEOUT": 5}
)
def test_sweep_requeues_a_run_whose_task_the_backend_lost_and_leaves_waiting_ones(
    django_capture_on_commit_callbacks,
):
    with django_capture_on_commit_callbacks(execute=True):
        event = pay()
    waiting, lost = run_of(event, "record"), run_of(event, "audit")
    old = timezone.now() - timedelta(seconds=6)
    HandlerRun.objects.filter(event_id=event.id).update(enqueued_at=old, due_at=old)
    DBTaskResult.objects.filter(id=lost.task_id).delete()
    report = sweep()
    assert lost.id in report.requeued and waiting.id not in report.requeued
    lost.refresh_from_db()
    assert DBTaskResult.objects.filter(id=lost.task_id).exists()


@override_settings(
    EVENTBUS={"CATALOGS": ["tests.testapp.events.EVENT_PAYLOAD_MAP"], "DURABLE_RUN_TIMEOUT": 5}
)
def test_sweep_leaves_a_run_whose_task_a_worker_just_took_and_requeues_one_taken_long_ago(
    django_capture_on_commit_callbacks,
):
    # A backlog older than DURABLE_RUN_TIMEOUT: a worker has just taken record's task and
    # is about to start the run; audit's was taken 6 s ago by a worker lost since.
    with django_capture_on_commit_callbacks(execute=True):
        event = pay()
    taken, lost = run_of(event, "record"), run_of(event, "audit")
    old = timezone.now() - timedelta(seconds=6)
    HandlerRun.objects.filter(event_id=event.id).update(enqueued_at=old, due_at=old)
    DBTaskResult.objects.filter(id=taken.task_id).update(
        status="RUNNING", started_at=timezone.now()
    )
    DBTaskResult.objects.filter(id=lost.task_id).update(status="RUNNING", started_at=old)
    report = sweep()
    assert report.requeued == [lost.id]


@override_settings(
    EVENTBUS={"CATALOGS": ["tests.testapp.events.EVENT_PAYLOAD_MAP"], "DURABLE_RUN_TIMEOUT": 5}
)
def test_sweep_does_not_requeue_a_run_that_ends_while_its_task_is_looked_up(
    django_capture_on_commit_callbacks, monkeypatch
):
    with django_capture_on_commit_callbacks(execute=True):
        event = pay()
    run = run_of(event, "record")
    old = timezone.now() - timedelta(seconds=6)
    HandlerRun.objects.filter(event_id=event.id).update(enqueued_at=old, due_at=old)
    backend = task_backend()
    get_result = backend.get_result

    def worker_finishes_first(task_id: str) -> Any:
        # Between the sweep's read of the runs and its question to the backend, a worker
        # runs the task to its end.
        if task_id == run.task_id:
            assert execute(str(run.id)) == "done"
            DBTaskResult.objects.filter(id=task_id).update(status="SUCCESSFUL")
        return get_result(task_id)

    monkeypatch.setattr(backend, "get_result", worker_finishes_first)
    assert run.id not in sweep().requeued
    assert DBTaskResult.objects.count() == 3  # no second task for the done run


def test_subscribe_refuses_what_a_worker_could_not_run_durably():
    dispatcher = EventDispatcher()

    async def async_handler(event: Event[Any]) -> None: ...

    def nested(event: Event[Any]) -> None: ...

    with pytest.raises(InvalidHandlerError, match="is async"):
        dispatcher.subscribe(ShopEvent.PAYMENT_RECEIVED, async_handler, durable=True)
    with pytest.raises(InvalidHandlerError, match="not a module-level function"):
        dispatcher.subscribe(ShopEvent.PAYMENT_RECEIVED, nested, durable=True)
    from tests.testapp.handlers import audit_payment

    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(InvalidHandlerError, match="max_attempts"):
            dispatcher.subscribe(
                ShopEvent.PAYMENT_RECEIVED, audit_payment, durable=True, max_attempts=bad
            )


def test_a_dispatcher_without_a_runs_stage_refuses_to_drop_durable_runs():
    from tests.testapp.handlers import audit_payment

    dispatcher = EventDispatcher()
    dispatcher.subscribe(ShopEvent.PAYMENT_RECEIVED, audit_payment, durable=True)
    with pytest.raises(Exception, match="no runs stage"):
        dispatcher.publish(ShopEvent.PAYMENT_RECEIVED, {"payment_id": 1})


@pytest.mark.django_db(transaction=True)
async def test_apublish_records_and_enqueues_runs():
    from eventbus import apublish

    event = await apublish(ShopEvent.PAYMENT_RECEIVED, {"payment_id": 7})
    runs = [run async for run in HandlerRun.objects.filter(event_id=event.id)]
    assert len(runs) == 3 and all(run.enqueued_at is not None for run in runs)
    assert await DBTaskResult.objects.acount() == 3


def _check_ids(**eventbus: Any) -> list[str]:
    settings = {"CATALOGS": ["tests.testapp.events.EVENT_PAYLOAD_MAP"], **eventbus}
    with override_settings(EVENTBUS=settings):
        return [m.id for m in run_checks() if m.id and m.id.startswith("eventbus.")]


def test_checks_name_a_missing_task_backend_and_one_that_is_not_durable():
    # Django 6 ships the framework; Django 5.2 has the backport.
    framework = "django.tasks" if django.VERSION >= (6,) else "django_tasks"
    assert "eventbus.E017" not in _check_ids()
    assert "eventbus.E017" in _check_ids(DURABLE_TASK_BACKEND="nowhere")
    for kind in ("immediate.ImmediateBackend", "dummy.DummyBackend"):
        with override_settings(TASKS={"default": {"BACKEND": f"{framework}.backends.{kind}"}}):
            assert "eventbus.W007" in _check_ids()


def test_check_refuses_durable_handlers_on_an_unlogged_type():
    assert "eventbus.E016" in _check_ids(LOG=False)


def test_handlers_lists_durable_ones_after_in_process_ones():
    from eventbus import get_event_dispatcher

    handlers = get_event_dispatcher().handlers(ShopEvent.PAYMENT_RECEIVED)
    assert [h.name for h in handlers if h.durable] == list(HANDLERS.values())
    assert {h.max_attempts for h in handlers} == {None, 3}
    assert isinstance(handlers[0].name, str) and not isinstance(handlers[0].name, UUID)


def test_run_durable_handlers_runs_what_is_pending_once(django_capture_on_commit_callbacks):
    from eventbus.testing import run_durable_handlers

    first, second = pay(1), pay(2, fail_times=10)
    assert run_durable_handlers() == 6
    assert [effects(first, h) for h in ("record", "notify", "audit")] == [1, 1, 1]
    assert [effects(second, h) for h in ("record", "notify", "audit")] == [1, 0, 1]
    assert run_of(second, "notify").status == RunStatus.PENDING  # its retry waits
    assert run_durable_handlers() == 1  # the retry, once called again
    assert run_durable_handlers() == 1
    assert run_of(second, "notify").status == RunStatus.DEAD
    assert run_durable_handlers() == 0


def count_any(event: Event[Any]) -> None:
    """A durable handler of two types (at module level, as a durable one must be)."""


def test_durable_handlers_names_each_with_the_types_it_handles():
    from eventbus import get_event_dispatcher

    assert get_event_dispatcher().durable_handlers() == {
        name: ("payment.received",) for name in HANDLERS.values()
    }
    dispatcher = EventDispatcher()
    dispatcher.subscribe(ShopEvent.PAYMENT_RECEIVED, count_any, durable=True)
    dispatcher.subscribe(ShopEvent.PAYMENT_SETTLED, count_any, durable=True)
    dispatcher.subscribe(ShopEvent.PAYMENT_SETTLED, lambda event: None)  # in-process
    assert dispatcher.durable_handlers() == {
        "tests.test_durable.count_any": ("payment.received", "payment.settled")
    }
