"""What waits or failed, read from the database: the relay's backlog and lag, durable runs.

Read when asked (the metrics at scrape time, the health check, the admin dashboard), in
three queries, each on an index: the log's (status, next_attempt_at, timestamp) and the
runs' (status, due_at). Their cost follows what waits or failed, not the log's size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.db import router
from django.db.models import Count, Min, Q
from django.utils import timezone

from .models import DeliveryStatus, EventRecord, HandlerRun, RunStatus

RUN_STATUSES = (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.DEAD)
"""The run statuses counted (done runs are the log's history, and grow without bound)."""


@dataclass(frozen=True)
class Backlog:
    """The log's undelivered events and the durable runs not done, at ``read_at``."""

    read_at: datetime
    pending_events: int = 0
    oldest_pending: datetime | None = None
    # Pending, and the last send to the sink raised: they wait for the relay's retry.
    retrying_events: int = 0
    failed_events: int = 0
    runs: dict[str, int] = field(default_factory=dict)

    @property
    def lag_seconds(self) -> float:
        """How long the oldest pending event has waited for the sink (0 when none waits)."""
        if self.oldest_pending is None:
            return 0.0
        return max(0.0, (self.read_at - self.oldest_pending).total_seconds())

    @property
    def dead_runs(self) -> int:
        return self.runs.get(RunStatus.DEAD, 0)

    @property
    def pending_runs(self) -> int:
        return self.runs.get(RunStatus.PENDING, 0)


def read_backlog(using: str | None = None, now: datetime | None = None) -> Backlog:
    """The backlog now; raises what the database raises."""
    alias = using or router.db_for_read(EventRecord)
    records = EventRecord.objects.using(alias)
    pending = records.filter(status=DeliveryStatus.PENDING).aggregate(
        n=Count("pk"), oldest=Min("timestamp"), retrying=Count("pk", filter=~Q(last_error=""))
    )
    failed = records.filter(status=DeliveryStatus.FAILED).count()
    runs = dict.fromkeys((str(status) for status in RUN_STATUSES), 0)
    runs.update(
        HandlerRun.objects.using(router.db_for_read(HandlerRun))
        .filter(status__in=RUN_STATUSES)
        .order_by()
        .values_list("status")
        .annotate(n=Count("pk"))
        .values_list("status", "n")
    )
    return Backlog(
        read_at=now or timezone.now(),
        pending_events=pending["n"],
        oldest_pending=pending["oldest"],
        retrying_events=pending["retrying"],
        failed_events=failed,
        runs=runs,
    )
