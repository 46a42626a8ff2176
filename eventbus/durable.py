"""Durable handlers: each run recorded with its event, enqueued after the commit, applied once.

The life of a run (one :class:`HandlerRun` row per event and durable handler):

1. **Record**: the row is inserted with the event's, in the publisher's transaction.
2. **Enqueue**: after the commit, ``eventbus.tasks.run_handler`` is enqueued on the
   ``TASKS`` backend named by ``DURABLE_TASK_BACKEND``. Never before: a worker cannot
   start a run whose event may still roll back.
3. **Execute**, in a worker: the run is marked running (attempts + 1), then the handler
   runs in one transaction with the run's ``done`` mark, so its database effects commit
   exactly once. A handler that raises is retried with backoff, and after
   ``max_attempts`` the run is dead, with its traceback.
4. **Sweep**, in ``manage.py eventbus_relay``: runs whose enqueue never happened (the
   publisher died after its commit), whose worker was lost mid-run, or whose task the
   backend lost, are enqueued again. Duplicates are harmless: they find the mark.
"""

from __future__ import annotations

import functools
import logging
import traceback
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from django.db import connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone

from . import conf
from .backoff import doubling
from .catalog import CatalogEntry
from .envelope import Event, _current_event, _current_run
from .exceptions import EventBusError
from .ids import uuid7
from .inspection import Handler
from .log import is_logged
from .metrics import get_metrics
from .models import EVENT_COLUMNS, EventRecord, HandlerRun, RunStatus, event_from_columns
from .tracing import get_tracing, record_failure

if TYPE_CHECKING:
    from django.db.models import Field

    from .dispatcher import EventDispatcher

logger = logging.getLogger("eventbus.durable")


def backoff_seconds(attempts: int) -> float:
    """Delay before the next attempt after ``attempts`` failed ones."""
    settings = conf.get_settings()
    return doubling(attempts, settings.DURABLE_BACKOFF_BASE, settings.DURABLE_BACKOFF_MAX)


def framework_available() -> bool:
    """Whether Django's task framework can be imported (Django 6, or the backport)."""
    try:
        import django.tasks  # noqa: F401
    except ImportError:
        try:
            import django_tasks  # noqa: F401
        except ImportError:
            return False
    return True


def task_backend() -> Any:
    """The ``TASKS`` backend durable runs go to (``DURABLE_TASK_BACKEND``)."""
    try:
        from django.tasks import task_backends
    except ImportError:
        from django_tasks import (  # type: ignore[assignment,no-redef,import-not-found,unused-ignore]
            task_backends,
        )
    return task_backends[conf.get_settings().DURABLE_TASK_BACKEND]


# -- the runs stage of publishing ----------------------------------------------


class Runs:
    """The runs stage of publishing: record with the event, enqueue after the commit."""

    def record(
        self,
        event: Event[Any],
        entry: CatalogEntry,
        handlers: Sequence[Handler],
        using: str | None,
    ) -> list[UUID]:
        """Insert one pending run per handler in the current transaction; their ids.

        Raises :class:`EventBusError` when the event's type is not logged: a run needs
        its event's row (``eventbus.E016`` reports this at start-up).
        """
        if not is_logged(entry):
            raise EventBusError(
                f"{entry.name!r} has durable handlers but is not logged (EVENTBUS['LOG'] "
                "or its EventSpec(log=False)): a durable run needs the event's row."
            )
        alias = using or router.db_for_write(HandlerRun)
        connection = connections[alias]
        sql = _statements(alias)
        default_attempts = conf.get_settings().DURABLE_MAX_ATTEMPTS
        now = sql.moment(timezone.now(), connection)
        event_key = sql.key(event.id, connection)
        ids = [uuid7() for _ in handlers]
        rows = [
            [
                sql.key(run_id, connection),
                event_key,
                entry.name,
                handler.name,
                handler.max_attempts or default_attempts,
                now,  # created
                now,  # due
                RunStatus.PENDING.value,
            ]
            for run_id, handler in zip(ids, handlers, strict=True)
        ]
        with connection.cursor() as cursor:
            cursor.executemany(sql.record, rows)
        return ids

    def enqueue(self, run_ids: Sequence[UUID]) -> None:
        """Hand runs to the task framework, after their commit.

        A backend that cannot be reached is logged, not raised: the runs stay pending
        and the relay's sweep enqueues them after ``RELAY_SWEEP_AFTER`` seconds.
        """
        try:
            enqueue(run_ids)
        except Exception as exc:
            logger.warning(
                "Could not enqueue %d durable run(s); the relay's sweep will: %s",
                len(run_ids),
                exc,
                exc_info=exc,
            )


_task_cache: dict[tuple[str, str], Any] = {}


def _task(run_after: datetime | None = None) -> Any:
    settings = conf.get_settings()
    key = (settings.DURABLE_TASK_BACKEND, settings.DURABLE_QUEUE)
    task = _task_cache.get(key)
    if task is None:
        from .tasks import run_handler

        task = _task_cache[key] = run_handler.using(
            backend=settings.DURABLE_TASK_BACKEND, queue_name=settings.DURABLE_QUEUE
        )
    return task if run_after is None else task.using(run_after=run_after)


def enqueue(run_ids: Sequence[UUID], run_after: datetime | None = None) -> None:
    """Enqueue one task per run now (or to start at ``run_after``), and note it on the rows.

    Raises what the backend raises. A backend whose enqueue is a row in the same
    database (``django-tasks-db``) commits its tasks and the notes together.
    """
    if not run_ids:
        return
    task = _task(run_after)
    alias = router.db_for_write(HandlerRun)
    connection = connections[alias]
    sql = _statements(alias)
    now = sql.moment(timezone.now(), connection)
    with transaction.atomic(using=alias), connection.cursor() as cursor:
        for run_id in run_ids:
            result = task.enqueue(str(run_id))
            cursor.execute(sql.note, [now, str(result.id)[:64], sql.key(run_id, connection)])


# -- in the worker ----------------------------------------------------------------


@dataclass(frozen=True)
class _Loaded:
    run: HandlerRun
    handler: Handler | None
    event: Event[Any] | None
    problem: str


def execute(run_id: str, dispatcher: EventDispatcher | None = None, force: bool = False) -> str:
    """Run one durable handler on its event, once; what happened.

    - "done": the handler ran and its writes committed with the run's done mark;
    - "retrying" / "dead": it raised; the run goes again after its backoff, or is dead;
    - "skipped: ...": nothing to do (already done or dead, or the row is gone).

    ``force`` (``eventbus_replay --force``) runs a done run again. With tracing on, the
    run is a span of the publisher's trace (the event's ``traceparent``).
    """
    outcome, handler = _execute(run_id, dispatcher, force)
    get_metrics().durable_run(handler, outcome)
    return outcome


def _execute(run_id: str, dispatcher: EventDispatcher | None, force: bool) -> tuple[str, str]:
    """What :func:`execute` does, and the handler's name for the metrics."""
    if dispatcher is None:
        from .dispatcher import get_event_dispatcher

        dispatcher = get_event_dispatcher()
    alias = router.db_for_write(HandlerRun)
    connection = connections[alias]
    sql = _statements(alias)
    run_key = sql.key(run_id, connection)
    # Step 1, committed on its own: the attempt counts, and operators see it running,
    # even if this worker dies before the end.
    claimed, read = _claim(
        sql, sql.claim_params(run_key, timezone.now(), force, connection), run_key, alias
    )
    if not claimed:
        row = (
            HandlerRun.objects.using(alias)
            .filter(pk=run_id)
            .values_list("status", "handler")
            .first()
        )
        why = "the run no longer exists" if row is None else f"the run is {row[0]}"
        logger.info("Durable run %s skipped: %s", run_id, why)
        return f"skipped: {why}", "" if row is None else row[1]
    loaded = _load(sql, run_key, dispatcher, alias, read)
    if loaded.handler is None or loaded.event is None:
        _end(loaded.run, alias, dead=True, error=loaded.problem, trace="")
        return "dead", loaded.run.handler
    run, handler, event = loaded.run, loaded.handler, loaded.event
    tracing = get_tracing()
    with nullcontext() if tracing is None else tracing.running(run, event):
        try:
            # Step 2: the done mark and the handler's writes, in one transaction. The mark
            # comes first: it takes the row's lock, so a duplicate of this run waits here
            # and then finds the run done.
            with transaction.atomic(using=alias):
                with connection.cursor() as cursor:
                    cursor.execute(
                        sql.done, [RunStatus.DONE.value, run_key, RunStatus.RUNNING.value]
                    )
                    if not cursor.rowcount:
                        return "skipped: another worker finished it", run.handler
                with _running(run, event):
                    handler.func(handler.argument(event))
                with connection.cursor() as cursor:
                    cursor.execute(sql.finish, [sql.moment(timezone.now(), connection), run_key])
        except Exception as exc:
            _failed_span(exc)
            return _failed(run, event, exc, alias), run.handler
    return "done", run.handler


def _failed_span(exc: Exception) -> None:
    # The span ends normally (the run's failure is recorded, not raised): say it failed.
    if get_tracing() is None:
        return
    from opentelemetry.trace import get_current_span

    record_failure(get_current_span(), exc)


@contextmanager
def _running(run: HandlerRun, event: Event[Any]) -> Iterator[None]:
    # Events the handler publishes are caused by the one it handles.
    event_token = _current_event.set(event)
    run_token = _current_run.set(run)
    try:
        yield
    finally:
        _current_run.reset(run_token)
        _current_event.reset(event_token)


# The run's row was not read with its claim: :meth:`_RunStatements.load` reads it.
_UNREAD: Any = object()


def _claim(sql: _RunStatements, params: list[Any], run_key: Any, alias: str) -> tuple[int, Any]:
    """Step 1 in a transaction of its own: how many runs it claimed (0 or 1), and the
    run's row for :func:`_load` when it was read in the same round trip (else ``_UNREAD``).

    Its commit does not wait for the disk where the database can say so for one
    transaction: a worker that dies loses nothing (the commit is in the server's or the
    OS's hands), and step 2's commit, which waits, makes it durable first. So a crash of
    the machine can lose only the count of an attempt whose handler never committed.
    """
    connection = connections[alias]
    if connection.in_atomic_block or not connection.get_autocommit():
        # The caller's transaction: it commits with it, at the caller's level.
        with connection.cursor() as cursor:
            cursor.execute(sql.claim, params)
            return int(cursor.rowcount), _UNREAD
    if sql.claim_commits_later:
        # PostgreSQL: this transaction's commit returns before its WAL is flushed; the
        # WAL writer flushes it within 3 x wal_writer_delay.
        if sql.claim_in_one_trip:
            return _claim_in_one_trip(connection, sql, params, run_key)
        with transaction.atomic(using=alias), connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO OFF")
            cursor.execute(sql.claim, params)
            return int(cursor.rowcount), _UNREAD
    with _sqlite_unsynced(connection), connection.cursor() as cursor:
        cursor.execute(sql.claim, params)
        return int(cursor.rowcount), _UNREAD


def _claim_in_one_trip(
    connection: BaseDatabaseWrapper, sql: _RunStatements, params: list[Any], run_key: Any
) -> tuple[int, Any]:
    """Step 1 on PostgreSQL as one query string, and the run's row read after its commit:
    one round trip instead of five (BEGIN, SET LOCAL, the claim, COMMIT, the load), each
    about a tenth of a millisecond against a run's few (bench.durable)."""
    with connection.cursor() as cursor:
        # The BEGIN psycopg sends itself carries OPTIONS["isolation_level"]; so does ours.
        level = connection.connection.isolation_level
        begin = (
            "BEGIN" if level is None else f"BEGIN ISOLATION LEVEL {level.name.replace('_', ' ')}"
        )
        try:
            cursor.execute(
                f"{begin}; SET LOCAL synchronous_commit TO OFF; {sql.claim}; COMMIT; "
                + sql.load_sql,
                [*params, run_key],
            )
        except BaseException:
            # A statement that failed (or was interrupted) leaves the string's transaction
            # open and aborted: end it, or the connection refuses every later query.
            try:
                cursor.execute("ROLLBACK")
            except Exception:
                connection.close()  # gone: Django's next use reconnects, as atomic's would
            raise
        cursor.nextset()  # BEGIN's result, then SET's: the claim's is third
        cursor.nextset()
        claimed = int(cursor.rowcount)
        cursor.nextset()  # COMMIT's, then the load's
        cursor.nextset()
        return claimed, cursor.fetchone()


@contextmanager
def _sqlite_unsynced(connection: BaseDatabaseWrapper) -> Iterator[None]:
    """On SQLite in WAL mode at ``synchronous`` FULL or EXTRA, commit at NORMAL inside.

    In WAL mode a commit at NORMAL is appended to the WAL file with no fsync, and can
    never corrupt the database; the next commit at FULL fsyncs that file, this commit's
    pages with it. A rollback journal has no such safe level: there nothing changes, and
    each run waits for one more fsync than a plain task (``eventbus.W011``).
    """
    if connection.vendor != "sqlite":
        yield
        return
    connection.ensure_connection()
    level = _wal_sync_level(connection)
    if level is None:
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA synchronous = NORMAL")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"PRAGMA synchronous = {level:d}")


# Per connection: its open database connection, and the synchronous level to restore
# (None: leave it alone). Read once per opened connection, so the journal mode and the
# level are those it opened with (``init_command``): a project that changes either on an
# open connection later is not seen.
_sync_levels: weakref.WeakKeyDictionary[BaseDatabaseWrapper, tuple[Any, int | None]] = (
    weakref.WeakKeyDictionary()
)


def _wal_sync_level(connection: BaseDatabaseWrapper) -> int | None:
    raw = connection.connection
    known = _sync_levels.get(connection)
    if known is not None and known[0] is raw:
        return known[1]
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        mode = str(cursor.fetchone()[0]).lower()
        cursor.execute("PRAGMA synchronous")
        level = int(cursor.fetchone()[0])
    restore = level if mode == "wal" and level >= 2 else None  # 2 FULL, 3 EXTRA
    _sync_levels[connection] = (raw, restore)
    return restore


def _load(
    sql: _RunStatements,
    run_key: Any,
    dispatcher: EventDispatcher,
    alias: str,
    read: Any = _UNREAD,
) -> _Loaded:
    run, columns = sql.load(run_key, alias, read)
    handler = dispatcher.durable_handler(run.event_type, run.handler)
    if handler is None:
        return _Loaded(
            run,
            None,
            None,
            f"{run.handler} is not a durable handler of {run.event_type!r} in this process: "
            "it was renamed or removed, or its module is not imported by the workers. "
            "Deploy it, then retry the run from the admin.",
        )
    if columns is None:
        return _Loaded(
            run,
            handler,
            None,
            f"Event {run.event_id} is no longer in the event log (pruned?): nothing to run on.",
        )
    try:
        event = event_from_columns(*columns)
    except Exception as exc:
        return _Loaded(
            run,
            handler,
            None,
            f"Event {run.event_id} no longer fits the catalog: {type(exc).__name__}: {exc}",
        )
    return _Loaded(run, handler, event, "")


class _RunStatements:
    """The statements every publish and every run make about runs, as plain SQL written
    once per database.

    A publish records its runs and, after the commit, notes their enqueue; a worker
    claims a run (step 1), loads it with its event, marks it done and finishes it
    (step 2). Built by the ORM, each took several times longer to build than the
    database took to run it (bench.durable; docs/performance.md), so they are written
    here once, and the loaded columns go through the converters the ORM would apply.
    """

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        quote = connection.ops.quote_name
        runs, events = quote(HandlerRun._meta.db_table), quote(EventRecord._meta.db_table)
        status, attempts = quote("status"), quote("attempts")
        key = f"{runs}.{quote('id')}"
        recorded = (
            "id", "event_id", "event_type", "handler", "max_attempts", "created_at", "due_at",
            "status",
        )  # fmt: skip
        self.record = (
            f"INSERT INTO {runs} ({', '.join(quote(c) for c in recorded)}, {attempts}, "
            f"{quote('task_id')}, {quote('last_error')}, {quote('traceback')}) "
            f"VALUES ({', '.join('%s' for _ in recorded)}, 0, '', '', '')"
        )
        self.note = (
            f"UPDATE {runs} SET {quote('enqueued_at')} = %s, {quote('task_id')} = %s "
            f"WHERE {key} = %s"
        )
        # A run is claimed when pending or running (or done, forced); the third
        # placeholder repeats a status when it is not forced.
        self.claim = (
            f"UPDATE {runs} SET {status} = %s, {attempts} = {attempts} + 1, "
            f"{quote('started_at')} = %s WHERE {key} = %s AND {status} IN (%s, %s, %s)"
        )
        self.claim_commits_later = connection.vendor == "postgresql"
        # psycopg 3 binding on the client (Django's default) takes several statements in
        # one execute; psycopg2 reads back only the last one's count, and server-side
        # binding takes one statement only.
        self.claim_in_one_trip = self.claim_commits_later and _many_statements_per_execute(
            connection
        )
        self.done = (
            f"UPDATE {runs} SET {status} = %s, {quote('last_error')} = '', "
            f"{quote('traceback')} = '' WHERE {key} = %s AND {status} = %s"
        )
        self.finish = f"UPDATE {runs} SET {quote('finished_at')} = %s WHERE {key} = %s"
        # Every column of the run, then the event's: a left join, so a run whose event
        # was pruned is still read (with an empty event).
        run_fields = HandlerRun._meta.concrete_fields
        event_fields = [
            cast("Field[Any, Any]", EventRecord._meta.get_field(name)) for name in EVENT_COLUMNS
        ]
        columns = [(HandlerRun._meta.db_table, f) for f in run_fields] + [
            (EventRecord._meta.db_table, f) for f in event_fields
        ]
        selected = ", ".join(f"{quote(table)}.{quote(cast(str, f.column))}" for table, f in columns)
        self.load_sql = (
            f"SELECT {selected} FROM {runs} LEFT OUTER JOIN {events} "
            f"ON {events}.{quote('id')} = {runs}.{quote('event_id')} WHERE {key} = %s"
        )
        self.run_fields = [f.attname for f in run_fields]
        self.converters: list[tuple[int, Any, list[Any]]] = []
        for index, (table, f) in enumerate(columns):
            col = f.get_col(table)
            found = [*connection.ops.get_db_converters(col), *col.get_db_converters(connection)]
            if found:
                self.converters.append((index, col, found))

    @staticmethod
    def key(value: UUID | str, connection: BaseDatabaseWrapper) -> Any:
        """A run's or an event's id as the database takes it."""
        return HandlerRun._meta.pk.get_db_prep_value(value, connection)

    @staticmethod
    def moment(when: datetime, connection: BaseDatabaseWrapper) -> Any:
        return connection.ops.adapt_datetimefield_value(when)

    def claim_params(
        self, run_key: Any, now: datetime, force: bool, connection: BaseDatabaseWrapper
    ) -> list[Any]:
        last = RunStatus.DONE if force else RunStatus.RUNNING
        return [
            RunStatus.RUNNING.value,
            self.moment(now, connection),
            run_key,
            RunStatus.PENDING.value,
            RunStatus.RUNNING.value,
            last.value,
        ]

    def load(
        self, run_key: Any, alias: str, row: Any = _UNREAD
    ) -> tuple[HandlerRun, tuple[Any, ...] | None]:
        """The run and its event's columns (None when the event's row is gone); ``row``:
        ``load_sql``'s row, when it was read already."""
        connection = connections[alias]
        if row is _UNREAD:
            with connection.cursor() as cursor:
                cursor.execute(self.load_sql, [run_key])
                row = cursor.fetchone()
        if row is None:
            raise HandlerRun.DoesNotExist(f"Durable run {run_key} no longer exists.")
        values = list(row)
        for index, col, converters in self.converters:
            for converter in converters:
                values[index] = converter(values[index], col, connection)
        count = len(self.run_fields)
        run = HandlerRun.from_db(alias, self.run_fields, values[:count])
        event = tuple(values[count:])
        return run, (None if event[0] is None else event)


def _many_statements_per_execute(connection: BaseDatabaseWrapper) -> bool:
    """Whether this database's cursors bind on the client (psycopg 3's ClientCursor, what
    Django uses unless told otherwise): only they take several statements in one execute."""
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    if not is_psycopg3:
        return False
    import psycopg

    options = connection.settings_dict["OPTIONS"]
    factory = options.get("cursor_factory")  # Django's choice of cursor is then not made
    if factory is not None:
        return isinstance(factory, type) and issubclass(factory, psycopg.ClientCursor)
    return options.get("server_side_binding") is not True


@functools.cache
def _statements(alias: str) -> _RunStatements:
    return _RunStatements(connections[alias])


def _failed(run: HandlerRun, event: Event[Any], exc: Exception, alias: str) -> str:
    attempts = run.attempts  # read after step 1 counted this attempt
    dead = attempts >= run.max_attempts
    trace = "".join(traceback.format_exception(exc))
    logger.error(
        "Durable handler %s failed on event %s (%s), attempt %d of %d: %s",
        run.handler,
        run.event_id,
        run.event_type,
        attempts,
        run.max_attempts,
        exc,
        exc_info=exc,
        extra={"event_id": str(run.event_id), "event_type": run.event_type, "handler": run.handler},
    )
    due = _end(
        run, alias, dead=dead, error=f"{type(exc).__name__}: {exc}", trace=trace, attempts=attempts
    )
    if dead:
        return "dead"
    _retry_later([run.id], due)
    return "retrying"


def _end(
    run: HandlerRun,
    alias: str,
    *,
    dead: bool,
    error: str,
    trace: str,
    attempts: int | None = None,
) -> datetime:
    """Record a failed attempt: dead, or pending again after its backoff; when it is due."""
    now = timezone.now()
    due = now + timedelta(seconds=backoff_seconds(attempts or run.attempts))
    if dead:
        logger.error(
            "Durable run %s is dead: %s",
            run.id,
            error,
            extra={"event_id": str(run.event_id), "handler": run.handler},
        )
    HandlerRun.objects.using(alias).filter(pk=run.id, status=RunStatus.RUNNING).update(
        status=RunStatus.DEAD if dead else RunStatus.PENDING,
        due_at=due,
        enqueued_at=None,
        task_id="",
        finished_at=now,
        last_error=error[:10_000],
        traceback=trace,
    )
    return due


def _retry_later(run_ids: Sequence[UUID], due: datetime) -> None:
    # Where the backend can defer, the retry is enqueued now to start at ``due``;
    # elsewhere it waits, unenqueued, for the sweep.
    try:
        if task_backend().supports_defer:
            enqueue(run_ids, run_after=due)
    except Exception as exc:
        logger.warning("Could not enqueue the retry of %s; the sweep will: %s", run_ids, exc)


# -- the sweep ----------------------------------------------------------------------


@dataclass
class SweepReport:
    """What one sweep did, by run id."""

    enqueued: list[UUID] = field(default_factory=list)  # never enqueued, or due again
    lost: list[UUID] = field(default_factory=list)  # started, never finished: run again
    dead: list[UUID] = field(default_factory=list)  # lost on their last attempt
    requeued: list[UUID] = field(default_factory=list)  # the backend lost their task

    def __bool__(self) -> bool:
        return bool(self.enqueued or self.lost or self.dead or self.requeued)


def sweep(now: datetime | None = None, limit: int = 500) -> SweepReport:
    """Enqueue the runs that nothing else will; called by the relay worker.

    - pending runs never enqueued, ``RELAY_SWEEP_AFTER`` seconds after they were due
      (their publisher died after the commit, or their enqueue failed);
    - running runs started more than ``DURABLE_RUN_TIMEOUT`` ago: their worker is
      presumed lost; they run again, or are dead if that was their last attempt;
    - pending runs enqueued more than ``DURABLE_RUN_TIMEOUT`` ago whose task the
      backend no longer holds as waiting, or as taken by a worker within that time.
    """
    settings = conf.get_settings()
    now = now or timezone.now()
    alias = router.db_for_write(HandlerRun)
    runs = HandlerRun.objects.using(alias)
    report = SweepReport()
    skip_locked = connections[alias].features.has_select_for_update_skip_locked
    timeout = timedelta(seconds=settings.DURABLE_RUN_TIMEOUT)

    never = list(
        runs.filter(
            status=RunStatus.PENDING,
            enqueued_at__isnull=True,
            due_at__lte=now - timedelta(seconds=settings.RELAY_SWEEP_AFTER),
        )
        .order_by("due_at")
        .values_list("id", flat=True)[:limit]
    )
    report.enqueued.extend(never)

    with transaction.atomic(using=alias):
        stale = runs.filter(status=RunStatus.RUNNING, started_at__lte=now - timeout)
        if skip_locked:  # a run whose handler is still in its transaction holds its row
            stale = stale.select_for_update(skip_locked=True)
        for run_id, attempts, max_attempts in stale.values_list("id", "attempts", "max_attempts")[
            :limit
        ]:
            dead = attempts >= max_attempts
            error = (
                f"The run started at attempt {attempts} and did not finish within "
                f"DURABLE_RUN_TIMEOUT ({settings.DURABLE_RUN_TIMEOUT:g} s): its worker was lost."
            )
            runs.filter(pk=run_id, status=RunStatus.RUNNING).update(
                status=RunStatus.DEAD if dead else RunStatus.PENDING,
                due_at=now,
                enqueued_at=None,
                task_id="",
                last_error=error,
                traceback="",
            )
            (report.dead if dead else report.lost).append(run_id)
            if dead:
                logger.error("Durable run %s is dead: %s", run_id, error)
            else:
                logger.warning("Durable run %s: %s Running it again.", run_id, error)

    waiting = list(
        runs.filter(
            status=RunStatus.PENDING,
            enqueued_at__lte=now - timeout,
            due_at__lte=now - timeout,
        ).values_list("id", "task_id")[:limit]
    )
    if waiting:
        lost = _lost_tasks(waiting, taken_before=now - timeout)
        # The backend was asked after the runs were read: a worker may have ended one of
        # them in between. Only those still waiting on the same task are requeued.
        still = runs.filter(pk__in=lost, status=RunStatus.PENDING).values_list("id", "task_id")
        report.requeued.extend(run_id for run_id, _ in set(still) & set(waiting))

    again = [*report.enqueued, *report.lost, *report.requeued]
    if again:
        enqueue(again)
    return report


def _lost_tasks(waiting: list[tuple[UUID, str]], taken_before: datetime) -> list[UUID]:
    """The runs among ``waiting`` whose task the backend no longer holds as ready, or
    holds as running since before ``taken_before`` (its worker was lost before the run
    started). A task a worker took since then is about to start its run: not lost."""
    backend = task_backend()
    if not getattr(backend, "supports_get_result", False):
        return [run_id for run_id, _ in waiting]
    lost = []
    for run_id, task_id in waiting:
        try:
            result = backend.get_result(task_id)
        except Exception:  # TaskResultDoesNotExist, or an id the backend cannot parse
            lost.append(run_id)
            continue
        status, taken = str(result.status), result.started_at
        if status.endswith("READY"):
            continue
        # Timestamps, not datetimes: a backend's may be aware where Django's are naive.
        if status.endswith("RUNNING") and taken and taken.timestamp() > taken_before.timestamp():
            continue
        lost.append(run_id)
    return lost


# -- operators ----------------------------------------------------------------------


def retry(run_ids: Sequence[UUID]) -> int:
    """Give dead runs a fresh set of attempts and enqueue them (the admin's action)."""
    alias = router.db_for_write(HandlerRun)
    now = timezone.now()
    ids = list(
        HandlerRun.objects.using(alias)
        .filter(pk__in=run_ids, status=RunStatus.DEAD)
        .values_list("id", flat=True)
    )
    HandlerRun.objects.using(alias).filter(pk__in=ids, status=RunStatus.DEAD).update(
        status=RunStatus.PENDING, attempts=0, due_at=now, enqueued_at=None, task_id=""
    )
    Runs().enqueue(ids)
    return len(ids)
