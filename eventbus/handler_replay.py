"""Replaying a durable handler over the event log (``manage.py eventbus_replay``).

To rebuild what a handler wrote after a bug fix, or to run a new handler over old
history: each selected event's run of the handler is executed in this process
(:func:`eventbus.durable.execute`), its :class:`HandlerRun` row created first if the
event has none.

- **Order**: log order. First the events numbered (``sequence``) when the replay
  started, by sequence; then every other one (not yet handed off when it started) by
  timestamp and id: the relay numbers those in that order. Events published after the
  replay started are left to the workers: their runs were recorded with them. (One
  event can slip through: numbered just after the start with a number below one given
  before it, by two relay workers committing out of order on PostgreSQL, once the
  replay has read past that number. A second replay, cheap without ``force``, finds it.)
- **Once**: a run that is done is skipped (its inbox mark), unless ``force``; a dead
  one is left alone unless ``force``. A forced run starts its attempts over, as the
  admin's retry gives a dead one. A run tried since the replay started, by it or by a
  worker, is not tried again: each run is tried at most once per replay.
- **Resumable**: progress is a :class:`HandlerReplay` row, moved on after each batch.
  The same replay started again (same handler, types, bounds and ``force``) continues
  after the last batch it finished, with its first start time: so what it already ran
  again in the batch it stopped in is not run a second time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple
from uuid import UUID

from django.db import router, transaction
from django.db.models import Count, Max, Q, QuerySet
from django.utils import timezone

from . import conf, durable
from .ids import uuid7
from .models import EventRecord, HandlerReplay, HandlerRun, RunStatus

if TYPE_CHECKING:
    from .dispatcher import EventDispatcher


@dataclass(frozen=True)
class Selection:
    """What one replay goes over: a durable handler, some of its types, a range of the log.

    ``since_event`` and ``until_event`` are included; times select by the event's
    timestamp: at or after ``since_time``, strictly before ``before_time``.
    """

    handler: str
    types: tuple[str, ...]
    since_event: UUID | None = None
    until_event: UUID | None = None
    since_time: datetime | None = None
    before_time: datetime | None = None
    force: bool = False

    def key(self) -> str:
        """The selection as text: two replays with the same key are the same replay."""
        since = self.since_event or (self.since_time and self.since_time.isoformat())
        until = self.until_event or (self.before_time and self.before_time.isoformat())
        parts = [
            f"types={','.join(sorted(self.types))}",
            f"since={since or ''}",
            f"until={until or ''}",
        ]
        if self.force:
            parts.append("force")
        return " ".join(parts)


class Position(NamedTuple):
    """An event's place in a replay's order: its sequence in the numbered stretch, or
    (None, its timestamp, its id) in the one after it."""

    sequence: int | None
    timestamp: datetime | None = None
    event_id: UUID | None = None


class _Row(NamedTuple):
    id: UUID
    type: str
    sequence: int | None
    timestamp: datetime


_ROW = ("id", "type", "sequence", "timestamp")


@dataclass
class Progress:
    """What a replay did so far, by event and by run."""

    total: int  # events selected when it (re)started
    events: int = 0
    ran: int = 0  # executed, and done
    failed: int = 0  # executed, and raised: retried later by the workers, or dead
    already_done: int = 0  # done before, skipped (not --force)
    dead: int = 0  # dead, left alone (not --force)
    tried: int = 0  # tried since the replay started (by it, before an interruption, or a worker)
    created: int = 0  # runs the events did not have yet


@dataclass
class Preview:
    """What a replay would do (``--dry-run``); the run counts do not overlap."""

    events: int
    missing: int  # events with no run of the handler
    waiting: int  # pending or running
    done: int
    dead: int
    tried: int  # tried since a replay being continued started
    force: bool
    continues: HandlerReplay | None = None

    @property
    def would_run(self) -> int:
        return self.missing + self.waiting + (self.done + self.dead if self.force else 0)


@dataclass
class _Plan:
    """A replay's two stretches of the log, from where it stands."""

    selection: Selection
    checkpoint: HandlerReplay
    alias: str
    numbered: QuerySet[EventRecord] = field(init=False)
    rest: QuerySet[EventRecord] = field(init=False)

    def __post_init__(self) -> None:
        selection, checkpoint = self.selection, self.checkpoint
        records = EventRecord.objects.using(self.alias).filter(type__in=selection.types)
        if selection.since_time is not None:
            records = records.filter(timestamp__gte=selection.since_time)
        if selection.before_time is not None:
            records = records.filter(timestamp__lt=selection.before_time)
        up_to = checkpoint.numbered_up_to
        self.numbered = records.filter(sequence__isnull=False, sequence__lte=up_to)
        # Rows numbered after the start stay in this stretch: membership never changes.
        self.rest = records.filter(
            Q(sequence__isnull=True) | Q(sequence__gt=up_to), timestamp__lte=checkpoint.started_at
        )
        if selection.since_event is not None:
            self._from(self.position_of(selection.since_event), include=True)
        if selection.until_event is not None:
            self._to(self.position_of(selection.until_event))
        if checkpoint.last_sequence is not None or checkpoint.last_event_id is not None:
            self._from(_last(checkpoint), include=False)

    def position_of(self, event_id: UUID) -> Position:
        sequence, timestamp = (
            EventRecord.objects.using(self.alias)
            .filter(pk=event_id)
            .values_list("sequence", "timestamp")
            .get()
        )
        if sequence is not None and sequence <= self.checkpoint.numbered_up_to:
            return Position(sequence)
        return Position(None, timestamp, event_id)

    def _from(self, position: Position, include: bool) -> None:
        if position.sequence is not None:
            lookup = "sequence__gte" if include else "sequence__gt"
            self.numbered = self.numbered.filter(**{lookup: position.sequence})
        else:
            self.numbered = self.numbered.none()
            self.rest = self.rest.filter(_after(position, include))

    def _to(self, position: Position) -> None:
        if position.sequence is not None:
            self.numbered = self.numbered.filter(sequence__lte=position.sequence)
            self.rest = self.rest.none()
        else:
            self.rest = self.rest.filter(_before(position))

    def count(self) -> int:
        return self.numbered.count() + self.rest.count()

    def batches(self, size: int) -> Iterator[tuple[list[_Row], Position]]:
        """The events in replay order, ``size`` at a time, each with the position of its
        last event; each batch is read when the one before is done."""
        numbered = self.numbered.order_by("sequence").values_list(*_ROW)
        batch = numbered
        while rows := [_Row(*row) for row in batch[:size]]:
            last = Position(rows[-1].sequence)
            yield rows, last
            batch = numbered.filter(sequence__gt=last.sequence)
        rest = self.rest.order_by("timestamp", "id").values_list(*_ROW)
        batch = rest
        while rows := [_Row(*row) for row in batch[:size]]:
            last = Position(None, rows[-1].timestamp, rows[-1].id)
            yield rows, last
            batch = rest.filter(_after(last, include=False))


def _after(position: Position, include: bool) -> Q:
    """Events after ``position`` (or at it) in (timestamp, id) order."""
    same = {"timestamp": position.timestamp, "id__gte" if include else "id__gt": position.event_id}
    return Q(timestamp__gt=position.timestamp) | Q(**same)


def _before(position: Position) -> Q:
    """Events at ``position`` or before it in (timestamp, id) order."""
    same = Q(timestamp=position.timestamp, id__lte=position.event_id)
    return Q(timestamp__lt=position.timestamp) | same


def _last(checkpoint: HandlerReplay) -> Position:
    if checkpoint.last_sequence is not None:
        return Position(checkpoint.last_sequence)
    return Position(None, checkpoint.last_timestamp, checkpoint.last_event_id)


def _alias() -> str:
    return router.db_for_write(HandlerRun)


def unfinished(selection: Selection) -> HandlerReplay | None:
    """The replay of ``selection`` that stopped before its end, if any."""
    return (
        HandlerReplay.objects.using(_alias())
        .filter(handler=selection.handler, selection=selection.key())
        .order_by("-started_at")
        .first()
    )


def _fresh(selection: Selection) -> HandlerReplay:
    alias = _alias()
    up_to = EventRecord.objects.using(alias).aggregate(up_to=Max("sequence"))["up_to"] or 0
    return HandlerReplay(
        handler=selection.handler,
        selection=selection.key(),
        started_at=timezone.now(),
        numbered_up_to=up_to,
    )


def preview(selection: Selection) -> Preview:
    """What :func:`replay` would do now; reads only."""
    continues = unfinished(selection)
    plan = _Plan(selection, continues or _fresh(selection), _alias())
    started_at = plan.checkpoint.started_at
    counts: dict[str, int] = dict.fromkeys(RunStatus.values, 0)
    tried = 0
    # As replay() decides: done and dead left alone (unless forced), then runs tried
    # since the replay started, then the others run.
    recent = Q(finished_at__gte=started_at)
    if not selection.force:
        recent &= ~Q(status__in=[RunStatus.DONE, RunStatus.DEAD])
    for stretch in (plan.numbered, plan.rest):
        runs = HandlerRun.objects.using(plan.alias).filter(
            handler=selection.handler, event_id__in=stretch.values("id")
        )
        tried += runs.filter(recent).count()
        by_status = runs.exclude(recent).order_by().values_list("status").annotate(Count("pk"))
        for status, count in by_status:
            counts[status] += count
    events = plan.count()
    return Preview(
        events=events,
        missing=events - sum(counts.values()) - tried,
        waiting=counts[RunStatus.PENDING] + counts[RunStatus.RUNNING],
        done=counts[RunStatus.DONE],
        dead=counts[RunStatus.DEAD],
        tried=tried,
        force=selection.force,
        continues=continues,
    )


def replay(
    selection: Selection,
    dispatcher: EventDispatcher,
    batch_size: int = 500,
    restart: bool = False,
    on_batch: Callable[[Progress], None] | None = None,
    on_start: Callable[[Progress, HandlerReplay | None], None] | None = None,
) -> Progress:
    """Run ``selection``'s handler on each selected event, in log order; what it did.

    Continues the unfinished replay of the same selection, if any, unless ``restart``.
    ``on_start`` is called once the events are counted (with the replay it continues,
    if it does), ``on_batch`` after each batch. Runs that raise are recorded as the
    workers' would be (retried later, or dead); they do not stop the replay.
    """
    alias = _alias()
    continues = unfinished(selection)
    if continues is not None and restart:
        HandlerReplay.objects.using(alias).filter(pk=continues.pk).delete()
        continues = None
    checkpoint = continues or _fresh(selection)
    checkpoint.save(using=alias)
    plan = _Plan(selection, checkpoint, alias)
    progress = Progress(total=plan.count())
    if on_start is not None:
        on_start(progress, continues)
    default_attempts = conf.get_settings().DURABLE_MAX_ATTEMPTS
    attempts = {
        event_type: (handler.max_attempts or default_attempts)
        for event_type in selection.types
        if (handler := dispatcher.durable_handler(event_type, selection.handler)) is not None
    }
    for rows, last in plan.batches(batch_size):
        runs = {
            event_id: (run_id, status, finished_at)
            for event_id, run_id, status, finished_at in HandlerRun.objects.using(alias)
            .filter(handler=selection.handler, event_id__in=[row.id for row in rows])
            .values_list("event_id", "id", "status", "finished_at")
        }
        for row in rows:
            run = runs.get(row.id)
            if run is None:
                run = (_create(row, selection.handler, attempts[row.type], alias), "", None)
                progress.created += 1
            _one(run, selection.force, checkpoint.started_at, dispatcher, progress)
            progress.events += 1
        HandlerReplay.objects.using(alias).filter(pk=checkpoint.pk).update(
            last_sequence=last.sequence,
            last_timestamp=last.timestamp,
            last_event_id=last.event_id,
        )
        if on_batch is not None:
            on_batch(progress)
    HandlerReplay.objects.using(alias).filter(pk=checkpoint.pk).delete()
    return progress


def _create(row: _Row, handler: str, max_attempts: int, alias: str) -> UUID:
    """The event's run of ``handler``: inserted unless one appeared meanwhile; its id."""
    now = timezone.now()
    with transaction.atomic(using=alias):
        HandlerRun.objects.using(alias).bulk_create(
            [
                HandlerRun(
                    id=uuid7(),
                    event_id=row.id,
                    event_type=row.type,
                    handler=handler,
                    max_attempts=max_attempts,
                    created_at=now,
                    due_at=now,
                )
            ],
            ignore_conflicts=True,  # the (event, handler) constraint: get, don't create
        )
    run_id: UUID = (
        HandlerRun.objects.using(alias)
        .filter(event_id=row.id, handler=handler)
        .values_list("id", flat=True)
        .get()
    )
    return run_id


def _one(
    run: tuple[UUID, str, datetime | None],
    force: bool,
    started_at: datetime,
    dispatcher: EventDispatcher,
    progress: Progress,
) -> None:
    run_id, status, finished_at = run
    if status == RunStatus.DONE and not force:
        progress.already_done += 1
        return
    if status == RunStatus.DEAD and not force:
        progress.dead += 1
        return
    if finished_at is not None and finished_at >= started_at:
        progress.tried += 1
        return
    if force:
        _fresh_attempts(run_id)
    outcome = durable.execute(str(run_id), dispatcher, force=force)
    if outcome == "done":
        progress.ran += 1
    elif outcome in ("retrying", "dead"):
        progress.failed += 1
    elif outcome in ("skipped: the run is done", "skipped: another worker finished it"):
        progress.already_done += 1  # a worker was first
    else:
        progress.tried += 1


def _fresh_attempts(run_id: UUID) -> None:
    """A forced run starts its attempts over, as the admin's retry gives a dead one.

    A dead run is pending again (without the enqueue: this process runs it now); a done
    one stays done until ``execute(force=True)`` claims it.
    """
    runs = HandlerRun.objects.using(_alias()).filter(pk=run_id)
    runs.filter(status=RunStatus.DEAD).update(
        status=RunStatus.PENDING, attempts=0, due_at=timezone.now(), enqueued_at=None, task_id=""
    )
    runs.filter(status=RunStatus.DONE).update(attempts=0)
