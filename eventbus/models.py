"""The event log: one row per published event, written in the publisher's transaction."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.utils.translation import gettext_lazy as _

from .catalog import catalog
from .envelope import ActorType, Event, parse_traceparent
from .ids import key_text, parse_key, parse_key_text


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", _("pending")
    DELIVERED = "delivered", _("delivered")
    FAILED = "failed", _("failed after retries")


class EventRecord(models.Model):
    """A published event and its delivery beyond the process: one row of the event log.

    ``sequence`` is assigned after commit, in hand-off order, so replays follow
    the order in which events became visible, not the order they were created.
    """

    id = models.UUIDField(primary_key=True, editable=False)
    type = models.CharField(max_length=200)
    timestamp = models.DateTimeField()
    # Keys as canonical text (eventbus.ids.key_text): a UUID, an integer or a short string.
    # NULL is "no project/actor"; "" is not a key, so it never means that.
    project_id = models.CharField(max_length=64, null=True, blank=True)  # noqa: DJ001
    actor_id = models.CharField(max_length=64, null=True, blank=True)  # noqa: DJ001
    actor_type = models.CharField(
        max_length=10, choices=[(a.value, a.value) for a in ActorType], default=ActorType.SYSTEM
    )
    payload = models.JSONField()
    # The catalog's payload version when the row was written; read rows are upcast.
    payload_version = models.PositiveIntegerField(default=1, db_default=1)
    correlation_id = models.UUIDField()
    causation_id = models.UUIDField(null=True, blank=True)
    # The publisher's W3C trace context, so the relay and durable runs join its trace.
    traceparent = models.CharField(max_length=55, blank=True, default="", db_default="")

    status = models.CharField(
        max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    sequence = models.BigIntegerField(null=True, blank=True, unique=True, editable=False)

    class Meta:
        verbose_name = _("event")
        verbose_name_plural = _("event log")
        ordering = ("-timestamp",)
        indexes = (
            # The relay: due pending rows, oldest first.
            models.Index(
                fields=("status", "next_attempt_at", "timestamp"), name="eventbus_relay_idx"
            ),
            # Admin filters and date hierarchy.
            models.Index(fields=("type", "timestamp"), name="eventbus_type_ts_idx"),
            models.Index(fields=("timestamp",), name="eventbus_ts_idx"),
            models.Index(fields=("project_id", "sequence"), name="eventbus_project_seq_idx"),
            models.Index(fields=("correlation_id",), name="eventbus_correlation_idx"),
            models.Index(fields=("actor_type", "timestamp"), name="eventbus_actor_ts_idx"),
        )
        permissions = (("redeliver_eventrecord", "Can re-deliver events"),)

    def __str__(self) -> str:
        return f"{self.type} {self.id}"

    def to_event(self) -> Event[Any]:
        """Rebuild the :class:`Event`; raises if the row no longer fits the catalog."""
        return event_from_columns(*(getattr(self, name) for name in EVENT_COLUMNS))


# The columns that make up an event, in event_from_columns' order; the one place the
# row <-> event mapping lives (the log writes with event_to_columns, readers read with
# event_from_columns).
EVENT_COLUMNS = (
    "id",
    "type",
    "timestamp",
    "project_id",
    "actor_id",
    "actor_type",
    "payload",
    "correlation_id",
    "causation_id",
    "payload_version",
    "traceparent",
)


def event_from_columns(
    id: Any,
    type: str,
    timestamp: Any,
    project_id: Any,
    actor_id: Any,
    actor_type: str,
    payload: Any,
    correlation_id: Any,
    causation_id: Any,
    payload_version: int = 1,
    traceparent: str = "",
) -> Event[Any]:
    """An event from its row's values (``values_list(*EVENT_COLUMNS)`` gives them).

    The payload is upcast from its stored version and validated against the current
    model (rows outlive schema changes; :class:`UnreadablePayloadError` when it cannot
    be); the envelope columns are typed by the database already. Reading values rather
    than model instances is what lets the relay keep up with a backlog.
    """
    entry = catalog.resolve(type)
    return Event._trusted(
        {
            "id": id,
            "type": entry.member,
            "timestamp": timestamp,
            "project_id": None if project_id is None else _read_key(project_id),
            "actor_id": None if actor_id is None else _read_key(actor_id),
            "actor_type": ActorType(actor_type),
            "payload": entry.read_payload(payload, payload_version),
            "correlation_id": correlation_id,
            "causation_id": causation_id,
            # Checked as the JSON's is: a column edited by hand must not break a reader.
            "traceparent": parse_traceparent(traceparent) if traceparent else None,
        }
    )


def _read_key(value: Any) -> Any:
    return parse_key_text(value) if type(value) is str else parse_key(value)


def event_to_columns(event: Event[Any], payload: Any) -> dict[str, Any]:
    """The row values of ``event`` by column, with ``payload`` stored as given."""
    return {
        "id": event.id,
        "type": event.type.value,
        "timestamp": event.timestamp,
        "project_id": None if event.project_id is None else key_text(event.project_id),
        "actor_id": None if event.actor_id is None else key_text(event.actor_id),
        "actor_type": event.actor_type.value,
        "payload": payload,
        "correlation_id": event.correlation_id,
        "causation_id": event.causation_id,
        "payload_version": catalog.resolve(event.type).spec.version,
        "traceparent": event.traceparent or "",
    }


class HandlerFailure(models.Model):
    """An in-process handler that raised, so operators see it without reading logs.

    Keyed by event id rather than a foreign key: events that are not logged
    (``EventSpec(log=False)``) can fail too.
    """

    event_id = models.UUIDField(db_index=True)
    event_type = models.CharField(max_length=200)
    handler = models.CharField(max_length=300)
    error = models.TextField()
    traceback = models.TextField(blank=True)
    occurred_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        verbose_name = _("handler failure")
        ordering = ("-occurred_at",)

    def __str__(self) -> str:
        return f"{self.handler} on {self.event_type}"


class StreamHead(models.Model):
    """A channel's stream: its epoch and the last position given to one of its events.

    The relay locks a channel's head while it numbers that channel's events, until its
    transaction commits: so once a reader sees position N, every position below N is
    visible too (or was never given). ``epoch`` changes only when the stream starts
    over (a new database), and tells a resuming client its position means nothing here.
    """

    channel = models.CharField(max_length=90, primary_key=True)
    epoch = models.CharField(max_length=16)
    position = models.BigIntegerField(default=0)

    class Meta:
        verbose_name = _("channel stream")

    def __str__(self) -> str:
        return f"{self.channel} at {self.position}"


class StreamEntry(models.Model):
    """One event's position on one of its channels' streams.

    An event sent to two channels has two entries. Positions of a channel run 1, 2, 3...
    without holes, except where old events were pruned.
    """

    channel = models.CharField(max_length=90)
    position = models.BigIntegerField()
    event = models.ForeignKey(EventRecord, on_delete=models.CASCADE, related_name="entries")

    class Meta:
        verbose_name = _("stream entry")
        verbose_name_plural = _("stream entries")
        constraints = (
            models.UniqueConstraint(
                fields=("channel", "position"), name="eventbus_stream_position_unique"
            ),
            models.UniqueConstraint(
                fields=("event", "channel"), name="eventbus_stream_event_unique"
            ),
        )

    def __str__(self) -> str:
        return f"{self.channel} #{self.position}"


class RunStatus(models.TextChoices):
    PENDING = "pending", _("pending")
    RUNNING = "running", _("running")
    DONE = "done", _("done")
    DEAD = "dead", _("dead")


class HandlerRun(models.Model):
    """One durable handler's run on one event: its queue entry, its history and its inbox.

    The row is written with the event, in the publisher's transaction, and the task
    framework is told about it after the commit. The run's ``done`` mark commits in one
    transaction with the handler's own writes, so a run that repeats (a retry, a
    duplicate delivery, a replay) finds it and does nothing.

    ``event`` is not a database constraint: a run outlives its event's row when the
    log is pruned, and then ends dead with that reason instead of vanishing.
    """

    id = models.UUIDField(primary_key=True, editable=False)
    event = models.ForeignKey(
        EventRecord,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="handler_runs",
    )
    event_type = models.CharField(max_length=200)
    handler = models.CharField(max_length=300)
    status = models.CharField(max_length=10, choices=RunStatus.choices, default=RunStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField()
    created_at = models.DateTimeField()
    # When the next attempt may start: the publish time, or after a failure its backoff.
    due_at = models.DateTimeField()
    # When the task framework was last told, and the id it gave that task.
    enqueued_at = models.DateTimeField(null=True, blank=True)
    task_id = models.CharField(max_length=64, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    traceback = models.TextField(blank=True)

    class Meta:
        verbose_name = _("handler run")
        ordering = ("-created_at",)
        constraints = (
            models.UniqueConstraint(fields=("event", "handler"), name="eventbus_run_unique"),
        )
        indexes = (
            # The sweep: runs by status, oldest due first; the admin's status filter.
            models.Index(fields=("status", "due_at"), name="eventbus_run_due_idx"),
        )
        permissions = (("retry_handlerrun", "Can retry dead handler runs"),)

    def __str__(self) -> str:
        return f"{self.handler} on {self.event_type} {self.event_id}"

    @property
    def idempotency_key(self) -> str:
        """What a handler passes to other systems so a repeated run is recognised there."""
        return f"{self.event_id}:{self.handler}"


class HandlerReplay(models.Model):
    """An ``eventbus_replay`` that has not finished: what it replays, when it started, and
    the last event it finished with. Running the same command again continues from there;
    a replay that finishes deletes its row.

    ``started_at`` is what makes a continued ``--force`` replay correct: the runs it
    already ran again finished after it started, so the continuation leaves them alone,
    even those of the batch it was in when it stopped. Events come in two stretches:
    those numbered (``sequence``) up to ``numbered_up_to`` when it started, by sequence,
    then every other one by (timestamp, id); ``last_sequence`` is the position in the
    first, ``last_timestamp`` and ``last_event_id`` in the second.
    """

    handler = models.CharField(max_length=300)
    # The types, the bounds and --force, as text: what makes two commands "the same".
    selection = models.TextField()
    started_at = models.DateTimeField()
    numbered_up_to = models.BigIntegerField(default=0)
    last_sequence = models.BigIntegerField(null=True, blank=True)
    last_timestamp = models.DateTimeField(null=True, blank=True)
    last_event_id = models.UUIDField(null=True, blank=True)

    class Meta:
        verbose_name = _("handler replay")

    def __str__(self) -> str:
        return f"{self.handler} ({self.selection}) since {self.started_at:%Y-%m-%d %H:%M:%S}"
