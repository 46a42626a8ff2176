"""The relay: hands committed events to the sink, and retries until they get through.

Two paths share one claim/complete cycle:
- right after a commit, the publishing process hands its events off at once;
- ``manage.py eventbus_relay`` retries failed hand-offs with backoff and sweeps
  rows whose process died between commit and hand-off.

Delivery is at least once; consumers dedupe on the event id. On PostgreSQL,
workers claim rows with ``SELECT ... FOR UPDATE SKIP LOCKED``, so concurrent
workers do not send a row twice in the normal case. SQLite has no row locks:
concurrent claims collide on the database lock and the loser retries later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from asgiref.sync import async_to_sync, sync_to_async
from django.db import DatabaseError, connections, router, transaction
from django.db.models import F
from django.utils import timezone

from . import conf
from ._asyncio import TaskSet, in_event_loop
from .backoff import doubling
from .catalog import CatalogEntry
from .channel_names import Positions, route
from .envelope import Event
from .log import is_logged
from .metrics import get_metrics
from .models import EVENT_COLUMNS, DeliveryStatus, EventRecord, event_from_columns
from .sinks import Sink, load_sink, send_to
from .streams import assign_positions, pg_array, positions_of
from .tracing import get_tracing

logger = logging.getLogger("eventbus.relay")


@dataclass
class Batch:
    """Claimed events, in the order they are sent, and their positions on their channels."""

    events: list[Event[Any]] = field(default_factory=list)
    positions: dict[UUID, Positions] = field(default_factory=dict)


@dataclass
class RelayReport:
    """What one relay pass did, by event id."""

    delivered: list[UUID] = field(default_factory=list)
    retrying: list[UUID] = field(default_factory=list)
    failed: list[UUID] = field(default_factory=list)
    corrupted: list[UUID] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.delivered or self.retrying or self.failed or self.corrupted)


def backoff_seconds(attempts: int) -> float:
    """Delay before the next attempt after ``attempts`` failed ones: doubling, capped."""
    settings = conf.get_settings()
    return doubling(attempts, settings.RELAY_BACKOFF_BASE, settings.RELAY_BACKOFF_MAX)


class Relay:
    """The hand-off stage of publishing, and the worker that retries what it could not send."""

    def __init__(self, sink: Sink | None = None, using: str | None = None) -> None:
        self._sink = sink
        self.using = using or router.db_for_write(EventRecord)

    @property
    def sink(self) -> Sink | None:
        if self._sink is not None:
            return self._sink
        path = conf.get_settings().SINK
        return load_sink(path) if path else None

    # -- right after commit --------------------------------------------------

    def hand_off(self, event: Event[Any], entry: CatalogEntry) -> None:
        """Send one committed event now; on failure the relay worker retries it.

        From a thread running an event loop this schedules the hand-off as a task.
        """
        settings = conf.get_settings()
        sink = self.sink
        if sink is None or not settings.HAND_OFF_ON_COMMIT:
            return
        if in_event_loop():
            _background.start(self._ahand_off(sink, event, entry), eager=False)
        else:
            async_to_sync(self._ahand_off)(sink, event, entry)

    async def ahand_off(self, event: Event[Any], entry: CatalogEntry) -> None:
        """Async twin of :meth:`hand_off`."""
        sink = self.sink
        if sink is not None and conf.get_settings().HAND_OFF_ON_COMMIT:
            await self._ahand_off(sink, event, entry)

    async def _ahand_off(self, sink: Sink, event: Event[Any], entry: CatalogEntry) -> None:
        logged = is_logged(entry)
        positions: dict[UUID, Positions] = {}
        if logged:
            report = RelayReport()
            positions = await sync_to_async(self._claim, thread_sensitive=True)(
                [event], None, report, {event.id: entry}
            )
            if report.failed:
                return
        try:
            await _send(sink, [event], positions, "hand_off")
        except Exception as exc:
            logger.warning(
                "Hand-off of event %s failed; the relay will retry: %s",
                event.id,
                exc,
                extra={"event_id": str(event.id), "event_type": event.type.value},
            )
            if logged:
                await sync_to_async(self._complete, thread_sensitive=True)([event.id], [], exc)
            return
        if logged:
            await sync_to_async(self._complete, thread_sensitive=True)([event.id], [event.id], None)

    # -- the worker ----------------------------------------------------------

    def run_once(self, now: datetime | None = None) -> RelayReport:
        """Claim one batch of due pending rows, send it, record the outcome."""
        return async_to_sync(self.arun_once)(now)

    async def arun_once(self, now: datetime | None = None) -> RelayReport:
        """Async twin of :meth:`run_once`."""
        report = RelayReport()
        claimed = await self._aclaim(now, report)
        await self._adeliver(claimed, report)
        return report

    async def _aclaim(self, now: datetime | None, report: RelayReport) -> Batch:
        return await sync_to_async(self._claim_due, thread_sensitive=True)(now, report)

    async def _adeliver(self, claimed: Batch, report: RelayReport, mark: bool = True) -> None:
        """Send a claimed batch and record the outcome; with ``mark=False`` the caller
        marks what was sent (``report.delivered``) delivered."""
        if not claimed.events:
            return
        ids = [event.id for event in claimed.events]
        sink = self.sink
        try:
            if sink is None:
                raise RuntimeError("EVENTBUS['SINK'] is None: nowhere to deliver to")
            await _send(sink, claimed.events, claimed.positions, "relay")
        except Exception as exc:
            logger.warning("Relay could not deliver %d event(s): %s", len(ids), exc)
            outcome = await sync_to_async(self._complete, thread_sensitive=True)(ids, [], exc)
            report.retrying.extend(outcome["retrying"])
            report.failed.extend(outcome["failed"])
        else:
            if mark:
                await sync_to_async(self._complete, thread_sensitive=True)(ids, ids, None)
            report.delivered.extend(ids)

    async def arun(
        self,
        stop: asyncio.Event | threading.Event | None = None,
        max_seconds: float | None = None,
        until_idle: bool = False,
    ) -> int:
        """Relay until ``stop`` is set, ``max_seconds`` pass, or (``until_idle``) nothing is due.

        While one batch is being sent, the next is already being claimed from the
        database, so a backlog drains at the pace of the slower of the two. Returns
        how many events were delivered.
        """
        settings = conf.get_settings()
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        delivered = 0
        claim: asyncio.Task[Batch] | None = None
        claim_report = RelayReport()
        # Sent but not yet marked delivered: the next claim's transaction marks them, so
        # a backlog costs one commit per batch. A claim that fails hands them back.
        sent: list[UUID] = []

        def stopping() -> bool:
            return (stop is not None and stop.is_set()) or (
                deadline is not None and time.monotonic() >= deadline
            )

        def start_claim() -> asyncio.Task[Batch]:
            nonlocal claim_report, sent
            claim_report = RelayReport()
            carried, sent = sent, []
            return asyncio.create_task(self._aclaim_marking(claim_report, carried, sent))

        swept_at = 0.0
        try:
            while True:
                if time.monotonic() - swept_at >= max(settings.RELAY_POLL_INTERVAL, 1.0):
                    swept_at = time.monotonic()
                    await self._asweep()
                if claim is None:
                    if stopping():
                        break
                    claim = start_claim()
                report, batch = claim_report, Batch()
                try:
                    batch = await claim
                    claim = None
                    if batch.events and not stopping():  # claim the next batch while this one goes
                        claim = start_claim()
                    await self._adeliver(batch, report, mark=False)  # sent even when stopping
                    sent.extend(report.delivered)
                except DatabaseError as exc:  # e.g. SQLite "database is locked": try again
                    # Rows claimed but not completed wait out their lease, then retry.
                    logger.warning("Relay pass failed, retrying: %s", exc)
                    claim = None if claim is not None and claim.done() else claim
                delivered += len(report.delivered)
                if not report and claim is None:
                    await self._amark_sent(sent)
                    if until_idle:
                        break
                    await asyncio.sleep(settings.RELAY_POLL_INTERVAL)
        finally:
            if claim is not None:
                claim.cancel()
                with contextlib.suppress(BaseException):
                    await claim  # its thread finishes the transaction; what it carried is back
            await self._amark_sent(sent)
        return delivered

    async def _aclaim_marking(
        self, report: RelayReport, carried: list[UUID], sent: list[UUID]
    ) -> Batch:
        """Claim the next batch, marking ``carried`` delivered in the same transaction.

        If the transaction fails (or is cancelled), ``carried`` goes back to ``sent``:
        marking delivered twice is harmless, not marking it would send those events again.
        """
        try:
            return await sync_to_async(self._claim_due, thread_sensitive=True)(
                None, report, carried
            )
        except BaseException:
            sent.extend(carried)
            raise

    async def _amark_sent(self, sent: list[UUID]) -> None:
        if not sent:
            return
        ids = list(sent)
        sent.clear()
        try:
            await sync_to_async(self._complete, thread_sensitive=True)(ids, ids, None)
        except DatabaseError as exc:  # their lease runs out and they are sent again
            sent.extend(ids)
            logger.warning("Relay could not mark %d sent event(s) delivered: %s", len(ids), exc)

    async def _asweep(self) -> None:
        """Durable runs that nothing else will enqueue (eventbus/durable.py's sweep)."""
        from .durable import sweep

        try:
            await sync_to_async(sweep, thread_sensitive=True)()
        except Exception as exc:  # the task backend or the database is away: next time
            logger.warning("Sweep of durable runs failed, retrying: %s", exc)

    # -- database steps (sync, in one short transaction each) ----------------

    def _claim_due(
        self, now: datetime | None, report: RelayReport, delivered: Sequence[UUID] = ()
    ) -> Batch:
        """Mark ``delivered`` delivered, then claim, number and read the next due rows.

        One transaction: one statement leases the due rows and numbers the new ones
        (``sequence``) and returns them, a second locks their channels' heads, and a
        third moves the heads on and inserts the entries (:func:`assign_positions`).
        """
        settings = conf.get_settings()
        now = now or timezone.now()
        lease_until = now + timedelta(seconds=settings.RELAY_CLAIM_SECONDS)
        sweep_before = now - timedelta(seconds=settings.RELAY_SWEEP_AFTER)
        with transaction.atomic(using=self.using):
            if delivered:
                _mark_delivered(delivered, now, self.using)
            batch_size = settings.RELAY_BATCH_SIZE
            rows = claim_due_rows(now, lease_until, sweep_before, batch_size, using=self.using)
            events: list[Event[Any]] = []
            routed: list[tuple[UUID, list[str]]] = []
            unnumber: list[UUID] = []
            for columns, fresh in rows:
                try:
                    event = event_from_columns(*columns)
                except Exception as exc:
                    self._mark_corrupted(columns[0], columns[1], exc)
                    report.corrupted.append(columns[0])
                    if fresh:
                        unnumber.append(columns[0])
                    continue
                if fresh:
                    try:
                        routed.append((event.id, route(event)))
                    except Exception as exc:
                        self._mark_failed(event.id, event.type.value, "channel router failed", exc)
                        report.failed.append(event.id)
                        unnumber.append(event.id)
                        continue
                events.append(event)
            if unnumber:  # numbered by the claim, but failed: no sequence without positions
                EventRecord.objects.using(self.using).filter(id__in=unnumber).update(sequence=None)
            positions = assign_positions(routed, using=self.using)
            fresh_ids = {event_id for event_id, _ in routed}
            retried = [event.id for event in events if event.id not in fresh_ids]
            if retried:
                positions.update(positions_of(retried, using=self.using))
        return Batch(events, positions)

    def _claim(
        self,
        events: Sequence[Event[Any]],
        now: datetime | None,
        report: RelayReport,
        entries: Mapping[UUID, CatalogEntry] | None = None,
        fresh: set[UUID] | None = None,
    ) -> dict[UUID, Positions]:
        """Lease the events to this worker and number the new ones; their positions.

        An event is numbered once, at its first claim: its log ``sequence`` and its
        position on each of its channels. A retry keeps both. An event whose channels
        cannot be worked out (the router raised) is marked failed, in ``report``.
        """
        now = now or timezone.now()
        lease = timedelta(seconds=conf.get_settings().RELAY_CLAIM_SECONDS)
        ids = [event.id for event in events]
        records = EventRecord.objects.using(self.using)
        with transaction.atomic(using=self.using):
            # The lease keeps other workers off these rows while they are being sent.
            records.filter(id__in=ids).update(
                attempts=F("attempts") + 1, next_attempt_at=now + lease
            )
            if fresh is None:  # the caller did not read it with the rows
                fresh = set(
                    records.filter(id__in=ids, sequence__isnull=True).values_list("id", flat=True)
                )
            routed = []
            for event in events:
                if event.id not in fresh:
                    continue
                try:
                    entry = entries.get(event.id) if entries is not None else None
                    routed.append((event.id, route(event, entry)))
                except Exception as exc:
                    self._mark_failed(event.id, event.type.value, "channel router failed", exc)
                    report.failed.append(event.id)
                    fresh.discard(event.id)
            assign_sequences(fresh, using=self.using)
            positions = assign_positions(routed, using=self.using)
            retried = [event_id for event_id in ids if event_id not in fresh]
            if retried:
                positions.update(positions_of(retried, using=self.using))
        return positions

    def _complete(
        self, ids: Sequence[UUID], delivered: Sequence[UUID], error: BaseException | None
    ) -> dict[str, list[UUID]]:
        now = timezone.now()
        records = EventRecord.objects.using(self.using)
        outcome: dict[str, list[UUID]] = {"retrying": [], "failed": []}
        with transaction.atomic(using=self.using):
            if delivered:
                _mark_delivered(delivered, now, self.using)
            delivered_ids = set(delivered)
            undelivered = [event_id for event_id in ids if event_id not in delivered_ids]
            max_attempts = conf.get_settings().RELAY_MAX_ATTEMPTS
            message = f"{type(error).__name__}: {error}" if error else ""
            for event_id, attempts in records.filter(id__in=undelivered).values_list(
                "id", "attempts"
            ):
                if attempts >= max_attempts:
                    records.filter(id=event_id).update(
                        status=DeliveryStatus.FAILED, next_attempt_at=None, last_error=message
                    )
                    outcome["failed"].append(event_id)
                else:
                    records.filter(id=event_id).update(
                        next_attempt_at=now + timedelta(seconds=backoff_seconds(attempts)),
                        last_error=message,
                    )
                    outcome["retrying"].append(event_id)
        return outcome

    def _mark_corrupted(self, event_id: UUID, event_type: str, exc: Exception) -> None:
        self._mark_failed(event_id, event_type, "corrupted row", exc)

    def _mark_failed(self, event_id: UUID, event_type: str, why: str, exc: Exception) -> None:
        logger.error(
            "Event log row %s marked failed (%s): %s",
            event_id,
            why,
            exc,
            extra={"event_id": str(event_id), "event_type": event_type},
        )
        EventRecord.objects.using(self.using).filter(id=event_id).update(
            status=DeliveryStatus.FAILED,
            next_attempt_at=None,
            last_error=f"{why}: {type(exc).__name__}: {exc}"[:10_000],
        )


_background = TaskSet()


async def _send(
    sink: Sink, events: Sequence[Event[Any]], positions: Mapping[UUID, Positions], path: str
) -> None:
    """One send to the sink, measured: ``path`` is ``hand_off`` or ``relay``."""
    tracing = get_tracing()
    try:
        if tracing is None:
            await send_to(sink, events, positions)
        else:
            with tracing.sending(events, path):
                await send_to(sink, events, positions)
    except Exception:
        get_metrics().send_failed(path)
        raise
    get_metrics().delivered(len(events), path)


def claim_due_rows(
    now: datetime,
    lease_until: datetime,
    sweep_before: datetime,
    limit: int,
    using: str | None = None,
) -> list[tuple[list[Any], bool]]:
    """Lease the next due pending rows and number those never numbered, in one statement.

    Due: ``next_attempt_at`` has passed, or it was never set (never handed off) and the
    row is ``sweep_before`` or older. The oldest ``limit`` of them (by timestamp, id)
    get one more attempt, a lease until ``lease_until``, and, those without one, the
    next ``sequence`` numbers in that order. Returns each row's values in
    ``EVENT_COLUMNS`` order and whether it was numbered just now, oldest first. Call
    inside a transaction. PostgreSQL skips rows another worker has locked; SQLite's
    write lock serializes claims.
    """
    alias = using or router.db_for_write(EventRecord)
    connection = connections[alias]
    table = connection.ops.quote_name(EventRecord._meta.db_table)
    adapt = connection.ops.adapt_datetimefield_value
    columns = ", ".join(connection.ops.quote_name(column) for column in EVENT_COLUMNS)
    due = (
        f"SELECT id, sequence, timestamp FROM {table} WHERE status = %s "
        "AND (next_attempt_at <= %s OR (next_attempt_at IS NULL AND timestamp <= %s)) "
        "ORDER BY timestamp, id LIMIT %s"
    )
    due_params = [DeliveryStatus.PENDING.value, adapt(now), adapt(sweep_before), limit]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # The numbers are drawn as the ordered rows come out of the subquery.
            cursor.execute(
                f"""
                UPDATE {table} AS t SET attempts = t.attempts + 1, next_attempt_at = %s,
                    sequence = COALESCE(t.sequence, due.seq)
                FROM (
                    SELECT id, CASE WHEN sequence IS NULL
                        THEN nextval('eventbus_event_sequence') END AS seq
                    FROM ({due} FOR UPDATE SKIP LOCKED) AS ordered
                ) AS due
                WHERE t.id = due.id
                RETURNING {", ".join(f"t.{column}" for column in columns.split(", "))},
                    due.seq IS NOT NULL
                """,
                [adapt(lease_until), *due_params],
            )
            rows = cursor.fetchall()
            read: Callable[[Sequence[Any]], list[Any]] = _read_postgresql
        else:
            # SQLite numbers on from MAX; the write lock keeps it until the commit.
            cursor.execute(f"SELECT COALESCE(MAX(sequence), 0) FROM {table}")
            (base,) = cursor.fetchone()
            cursor.execute(
                f"""
                UPDATE {table} AS t SET attempts = t.attempts + 1, next_attempt_at = %s,
                    sequence = COALESCE(t.sequence, %s + due.n)
                FROM (
                    SELECT id, ROW_NUMBER() OVER (
                        PARTITION BY sequence IS NULL ORDER BY timestamp, id) AS n
                    FROM ({due}) AS ordered
                ) AS due
                WHERE t.id = due.id
                RETURNING {columns}, sequence > %s
                """,
                [adapt(lease_until), base, *due_params, base],
            )
            rows = cursor.fetchall()
            read = _sqlite_reader(connection)
    claimed = [(read(row), bool(row[-1])) for row in rows]
    claimed.sort(key=lambda item: (item[0][2], item[0][0]))  # RETURNING keeps no order
    return claimed


def _read_postgresql(row: Sequence[Any]) -> list[Any]:
    # psycopg gives UUIDs and aware datetimes; Django loads jsonb as text.
    columns = list(row[:-1])
    columns[6] = json.loads(columns[6])
    return columns


def _sqlite_reader(connection: Any) -> Callable[[Sequence[Any]], list[Any]]:
    """Row values as the ORM would give them: UUIDs from hex, datetimes in the
    connection's time zone (what ``convert_datetimefield_value`` does, without its
    per-value checks), payloads decoded."""
    zone = connection.timezone  # None without USE_TZ

    def read(row: Sequence[Any]) -> list[Any]:
        columns = list(row[:-1])
        columns[0] = UUID(columns[0])
        timestamp = columns[2]  # Django's sqlite3 converter parses declared datetimes
        if isinstance(timestamp, str):
            timestamp = datetime.fromisoformat(timestamp)
        if zone is not None and timestamp.tzinfo is None:
            timestamp = timestamp.replace(tzinfo=zone)
        columns[2] = timestamp
        columns[6] = json.loads(columns[6])
        columns[7] = UUID(columns[7])
        if columns[8] is not None:
            columns[8] = UUID(columns[8])
        return columns

    return read


def _mark_delivered(ids: Sequence[UUID], now: datetime, using: str) -> None:
    """The events sent are delivered (inside the caller's transaction): one ``UPDATE``
    on PostgreSQL, one per 500 ids on SQLite (which caps a statement's parameters)."""
    connection = connections[using]
    table = connection.ops.quote_name(EventRecord._meta.db_table)
    update = (
        f"UPDATE {table} SET status = %s, delivered_at = %s, next_attempt_at = NULL, "
        "last_error = '' WHERE "
    )
    delivered_at = connection.ops.adapt_datetimefield_value(now)
    values: list[Any] = [DeliveryStatus.DELIVERED.value, delivered_at]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(update + "id = ANY(%s::uuid[])", [*values, pg_array(i.hex for i in ids)])
            return
        prep = EventRecord._meta.pk.get_db_prep_value
        for start in range(0, len(ids), 500):
            chunk = [prep(event_id, connection) for event_id in ids[start : start + 500]]
            cursor.execute(update + f"id IN ({', '.join(['%s'] * len(chunk))})", [*values, *chunk])


def assign_sequences(ids: Iterable[UUID], using: str | None = None) -> None:
    """Number rows that have no sequence yet, in timestamp order, after their commit.

    PostgreSQL draws from a database sequence; SQLite numbers on from ``MAX``, which
    its write lock serializes.
    """
    ids = list(ids)
    if not ids:
        return
    alias = using or router.db_for_write(EventRecord)
    connection = connections[alias]
    table = EventRecord._meta.db_table
    with transaction.atomic(using=alias), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"""
                UPDATE {table} AS t SET sequence = s.seq
                FROM (
                    SELECT id, nextval('eventbus_event_sequence') AS seq FROM (
                        SELECT id FROM {table}
                        WHERE id = ANY(%s) AND sequence IS NULL
                        ORDER BY timestamp, id
                    ) AS ordered
                ) AS s
                WHERE t.id = s.id
                """,
                [ids],
            )
            return
        # SQLite (3.33+ for UPDATE ... FROM): one statement, serialized by the write lock.
        id_param = EventRecord._meta.pk.get_db_prep_value
        placeholders = ", ".join(["%s"] * len(ids))
        cursor.execute(
            f"""
            UPDATE {table} SET sequence = numbered.seq
            FROM (
                SELECT id, ROW_NUMBER() OVER (ORDER BY timestamp, id)
                    + (SELECT COALESCE(MAX(sequence), 0) FROM {table}) AS seq
                FROM {table}
                WHERE id IN ({placeholders}) AND sequence IS NULL
            ) AS numbered
            WHERE {table}.id = numbered.id
            """,
            [id_param(event_id, connection) for event_id in ids],
        )


def redeliver(ids: Sequence[UUID], using: str | None = None) -> int:
    """Queue events for delivery again (admin action); return how many rows changed."""
    return (
        EventRecord.objects.using(using or router.db_for_write(EventRecord))
        .filter(id__in=ids)
        .update(
            status=DeliveryStatus.PENDING,
            attempts=0,
            next_attempt_at=timezone.now(),
            last_error="",
        )
    )
