"""The admin dashboard's numbers: traffic, delivery lag and failures from the log, and what
the metrics know (sockets, send errors), each drawn as a chart or said to be missing.

Every query reads one time range on an index: the log's timestamp, the failures'
``occurred_at``, the runs' status. The charts are ``eventbus.charts``'s; the page is
``EventRecordAdmin.dashboard_view``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import router
from django.db.models import Count, DurationField, ExpressionWrapper, F, Max, Min, QuerySet
from django.db.models.functions import TruncMinute
from django.utils import timezone
from django.utils.safestring import SafeString

from .charts import OTHER, PALETTE, Series, bar_chart
from .metrics import Metrics, get_metrics, multiprocess_dir, off_reason
from .models import DeliveryStatus, EventRecord, HandlerFailure, HandlerRun, RunStatus

TOP_TYPES = 6
"""Types drawn each in its colour; the others are stacked together as "other"."""


@dataclass(frozen=True)
class Window:
    """Time buckets ending now: ``count`` of ``minutes`` each."""

    end: datetime
    minutes: int
    count: int

    @property
    def start(self) -> datetime:
        return self.end - timedelta(minutes=self.minutes * self.count)

    def index(self, when: datetime) -> int | None:
        """The bucket ``when`` falls in, or None outside the window."""
        offset = (when - self.start).total_seconds() // (60 * self.minutes)
        return int(offset) if 0 <= offset < self.count else None

    def labels(self) -> list[str]:
        """Each bucket's start, local time (``HH:MM``)."""
        return [
            f"{timezone.localtime(self.start + timedelta(minutes=self.minutes * i)):%H:%M}"
            for i in range(self.count)
        ]


def _windows(now: datetime) -> tuple[Window, Window]:
    # Buckets end at the next whole minute, so that the newest one is this minute.
    end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    return Window(end, 1, 60), Window(end, 15, 96)


def traffic_chart(
    window: Window, chart_id: str, title: str, using: str | None = None
) -> SafeString:
    """Events per minute by type over ``window``: the top types, the rest as "other"."""
    rows = (
        EventRecord.objects.using(using)
        .filter(timestamp__gte=window.start, timestamp__lt=window.end)
        .annotate(minute=TruncMinute("timestamp"))
        .order_by()
        .values_list("minute", "type")
        .annotate(n=Count("pk"))
    )
    by_type: dict[str, list[float]] = defaultdict(lambda: [0.0] * window.count)
    totals: Counter[str] = Counter()
    for minute, event_type, n in rows:
        index = window.index(minute)
        if index is None:
            continue
        by_type[event_type][index] += n / window.minutes  # per minute, however wide the bar
        totals[event_type] += n
    # The top types, each in its colour; "other" only for two types or more.
    top = [name for name, _ in totals.most_common(TOP_TYPES + (len(totals) == TOP_TYPES + 1))]
    series = [Series(name, by_type[name], PALETTE[i]) for i, name in enumerate(top)]
    rest = [name for name in by_type if name not in top]
    if rest:
        other = [sum(by_type[name][i] for name in rest) for i in range(window.count)]
        series.append(Series(f"other ({len(rest)} types)", other, OTHER))
    return bar_chart(
        chart_id,
        title,
        window.labels(),
        series,
        "events/min",
        label_every=12 if window.count > 60 else 10,
    )


def lag_chart(window: Window, now: datetime, using: str | None = None) -> SafeString:
    """How long the events of each minute waited for the sink, at worst: delivered ones
    until their delivery, pending ones until now."""
    records = EventRecord.objects.using(using).filter(
        timestamp__gte=window.start, timestamp__lt=window.end
    )
    waited = [0.0] * window.count
    delivered = (
        records.filter(status=DeliveryStatus.DELIVERED)
        .annotate(minute=TruncMinute("timestamp"))
        .order_by()
        .values_list("minute")
        .annotate(
            worst=Max(
                ExpressionWrapper(F("delivered_at") - F("timestamp"), output_field=DurationField())
            )
        )
    )
    for minute, worst in delivered:
        index = window.index(minute)
        if index is not None and worst is not None:
            waited[index] = max(waited[index], worst.total_seconds())
    pending = (
        records.filter(status=DeliveryStatus.PENDING)
        .annotate(minute=TruncMinute("timestamp"))
        .order_by()
        .values_list("minute")
        .annotate(oldest=Min("timestamp"))
    )
    stuck = [0.0] * window.count
    for minute, oldest in pending:
        index = window.index(minute)
        if index is not None:
            stuck[index] = max(0.0, (now - oldest).total_seconds())
    series = [
        Series("delivered", waited, PALETTE[0]),
        Series(
            "still pending",
            [max(0.0, s - w) for s, w in zip(stuck, waited, strict=True)],
            PALETTE[5],
        ),
    ]
    return bar_chart("eventbus-lag", "Delivery lag, last hour", window.labels(), series, "s")


def failures_chart(window: Window, using: str | None = None) -> SafeString:
    """In-process handler failures and durable runs that died, per bucket of ``window``."""
    failures = _counts(
        HandlerFailure.objects.using(using).filter(
            occurred_at__gte=window.start, occurred_at__lt=window.end
        ),
        "occurred_at",
        window,
    )
    dead = _counts(
        HandlerRun.objects.using(using).filter(
            status=RunStatus.DEAD, finished_at__gte=window.start, finished_at__lt=window.end
        ),
        "finished_at",
        window,
    )
    series = [
        Series("in-process handler failures", failures, PALETTE[5]),
        Series("durable runs dead", dead, PALETTE[3]),
    ]
    return bar_chart(
        "eventbus-failures",
        "Handler failures and dead runs, last day",
        window.labels(),
        series,
        "per hour",
        label_every=3,
    )


def _counts(rows: QuerySet[Any], column: str, window: Window) -> list[float]:
    """Rows per bucket of ``window``, counted by the minute in the database (whole minutes
    fit every time zone's offset, which whole hours do not)."""
    values = [0.0] * window.count
    for minute, n in (
        rows.annotate(minute=TruncMinute(column))
        .order_by()
        .values_list("minute")
        .annotate(n=Count("pk"))
    ):
        index = window.index(minute)
        if index is not None:
            values[index] += n
    return values


@dataclass(frozen=True)
class Live:
    """What the metrics say now, or why they cannot say it."""

    available: bool
    scope: str = ""  # which processes the numbers cover
    why: str = ""  # when not available
    numbers: dict[str, float] = field(default_factory=dict)


# (metric family, label of the row) for the dashboard's table of totals.
LIVE_ROWS = (
    ("eventbus_websocket_connections", "open WebSockets"),
    ("eventbus_websocket_subscriptions", "channel subscriptions"),
    ("eventbus_relay_delivered", "events delivered to the sink"),
    ("eventbus_send_errors", "sends to the sink that raised"),
    ("eventbus_channel_layer_dropped_messages", "messages dropped by the channel layer"),
    ("eventbus_websocket_too_slow", "sockets closed for falling behind"),
    ("eventbus_resets", "resets sent"),
    ("eventbus_rate_limited", "actions refused by a limit"),
)


def live_numbers() -> Live:
    """Sockets and totals from the metrics: every process's when they share a
    ``PROMETHEUS_MULTIPROC_DIR``, else this process's only."""
    metrics = get_metrics()
    if not isinstance(metrics, Metrics):
        return Live(False, why=off_reason().strip())
    path = multiprocess_dir()
    families: Iterable[Any]
    if path is not None:
        from prometheus_client.multiprocess import MultiProcessCollector

        metrics.flush()
        collector = MultiProcessCollector(None, path=path)  # type: ignore[no-untyped-call]
        families = collector.collect()  # type: ignore[no-untyped-call]
        scope = "every process writing to PROMETHEUS_MULTIPROC_DIR"
    else:
        families = metrics.metric_families(name for name, _ in LIVE_ROWS)
        scope = "this server process only (set PROMETHEUS_MULTIPROC_DIR to see all of them)"
    numbers: dict[str, float] = dict.fromkeys((name for name, _ in LIVE_ROWS), 0.0)
    for family in families:
        if family.name not in numbers:
            continue
        for sample in family.samples:
            if sample.name in (family.name, f"{family.name}_total"):
                numbers[family.name] += sample.value
    return Live(True, scope=scope, numbers=numbers)


def context(now: datetime | None = None) -> dict[str, Any]:
    """Everything the dashboard template shows."""
    from .backlog import read_backlog
    from .health import Thresholds, judge

    now = now or timezone.now()
    using = router.db_for_read(EventRecord)
    hour, day = _windows(now)
    backlog = read_backlog(using, now)
    health = judge(backlog, Thresholds.from_settings())
    live = live_numbers()
    return {
        "backlog": backlog,
        "health": health,
        "live": live,
        "live_rows": [(label, live.numbers.get(name, 0.0)) for name, label in LIVE_ROWS],
        "hour_chart": traffic_chart(
            hour, "eventbus-traffic-hour", "Events per minute, last hour", using
        ),
        "day_chart": traffic_chart(
            day, "eventbus-traffic-day", "Events per minute, last day (15 min bars)", using
        ),
        "lag_chart": lag_chart(hour, now, using),
        "failures_chart": failures_chart(Window(day.end, 60, 24), using),
        "now": now,
    }
