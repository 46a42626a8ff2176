"""The admin dashboard (eventbus.dashboard): its charts drawn from real rows, what the
metrics add, and the page at 1280 px in Chromium."""

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from eventbus import metrics
from eventbus.dashboard import Window, failures_chart, lag_chart, live_numbers, traffic_chart
from eventbus.ids import uuid7
from eventbus.models import DeliveryStatus, EventRecord, HandlerFailure, HandlerRun, RunStatus
from tests.fixtures_services import AsgiServerFactory
from tests.test_admin import SCREENSHOT_DIR, assert_no_overflow, open_at_1280

# The charts' queries differ by database: they run on PostgreSQL too (db_heavy). The
# browser test does not: a server process's session outlives it there, as test_admin's.
pytestmark = pytest.mark.django_db

DASHBOARD = "admin:eventbus_eventrecord_dashboard"
NOW = datetime(2026, 11, 30, 12, 0, 30, tzinfo=UTC)


def record(event_type: str = "order.placed", at: datetime = NOW, **fields: Any) -> EventRecord:
    event_id = uuid7()
    return EventRecord.objects.create(
        id=event_id,
        type=event_type,
        timestamp=at,
        payload={},
        correlation_id=event_id,
        **{"status": DeliveryStatus.DELIVERED, **fields},
    )


def bars(svg: str) -> list[str]:
    """The tooltip of every bar of a chart, in drawing order."""
    root = ET.fromstring(svg[: svg.index("</svg>") + len("</svg>")])
    return [rect.find("title").text for rect in root.iter("rect")]


def bar_at(svg: str, label: str) -> list[str]:
    """The tooltips of the bars of one bucket (one per series), split in lines."""
    return [tip.split("\n") for tip in bars(svg) if tip.split("\n")[0] == label]


HOUR = Window(NOW.replace(second=0) + timedelta(minutes=1), 1, 60)


@pytest.mark.db_heavy
def test_traffic_counts_events_per_minute_by_type_the_rest_as_other():
    five_ago = NOW - timedelta(minutes=5)
    for _ in range(3):
        record("order.placed", five_ago)
    for _ in range(2):
        record("note.added", five_ago + timedelta(seconds=20))
    for n in range(7):  # seven more types, one event each, in the minute before
        record(f"type.{n}", five_ago - timedelta(minutes=1))
    record("order.placed", NOW - timedelta(hours=2))  # outside the hour
    svg = traffic_chart(HOUR, "chart", "Events")
    label = f"{timezone.localtime(five_ago):%H:%M}"
    [tip] = {tuple(t) for t in bar_at(svg, label)}
    assert list(tip) == [label, "order.placed: 3 events/min", "note.added: 2 events/min"]
    before = f"{timezone.localtime(five_ago - timedelta(minutes=1)):%H:%M}"
    [tip] = {tuple(t) for t in bar_at(svg, before)}
    # The six biggest types have a colour each, the other three share grey.
    assert len(tip) == 1 + 4 + 1  # four types of their own, and three as "other"
    assert tip[-1] == "other (3 types): 3 events/min"
    assert 'class="eventbus-legend"' in svg and "other (3 types)" in svg


@pytest.mark.db_heavy
def test_the_day_shows_events_per_minute_in_15_minute_bars():
    day = Window(HOUR.end, 15, 96)
    start = day.start + timedelta(minutes=15 * 90)
    for n in range(30):
        record("order.placed", start + timedelta(seconds=20 * n))  # 30 events in 10 minutes
    tips = {
        tuple(t)
        for t in bar_at(traffic_chart(day, "chart", "Day"), f"{timezone.localtime(start):%H:%M}")
    }
    assert tips == {(f"{timezone.localtime(start):%H:%M}", "order.placed: 2 events/min")}


@pytest.mark.db_heavy
def test_lag_is_how_long_each_minutes_events_waited_for_the_sink():
    sent = NOW - timedelta(minutes=10)
    record(at=sent, delivered_at=sent + timedelta(seconds=4))
    record(at=sent + timedelta(seconds=5), delivered_at=sent + timedelta(seconds=6))
    stuck = NOW - timedelta(minutes=2)
    record(at=stuck, status=DeliveryStatus.PENDING)
    svg = lag_chart(HOUR, NOW)
    [tip] = bar_at(svg, f"{timezone.localtime(sent):%H:%M}")
    assert tip[1:] == ["delivered: 4 s"]
    [tip] = bar_at(svg, f"{timezone.localtime(stuck):%H:%M}")
    assert tip[1:] == ["still pending: 120 s"]


@pytest.mark.db_heavy
def test_failures_and_dead_runs_per_hour():
    day = Window(HOUR.end, 60, 24)
    hour_ago = NOW - timedelta(minutes=90)
    for _ in range(2):
        failure = HandlerFailure.objects.create(
            event_id=uuid4(), event_type="order.placed", handler="shop.handlers.notify", error="x"
        )
        HandlerFailure.objects.filter(pk=failure.pk).update(occurred_at=hour_ago)
    event = record()
    HandlerRun.objects.create(
        id=uuid7(), event=event, event_type=event.type, handler="shop.handlers.bill",
        status=RunStatus.DEAD, attempts=5, max_attempts=5, created_at=NOW, due_at=NOW,
        finished_at=hour_ago,
    )  # fmt: skip
    svg = failures_chart(day)
    tip = bar_at(svg, day.labels()[day.index(hour_ago)])[0]
    assert tip[1:] == ["in-process handler failures: 2 per hour", "durable runs dead: 1 per hour"]


def test_live_numbers_come_from_this_process_or_every_process(tmp_path, monkeypatch):
    recorder = metrics.get_metrics()
    recorder.socket_opened()
    try:
        live = live_numbers()
        assert live.available and live.scope.startswith("this server process only")
        assert live.numbers["eventbus_websocket_connections"] >= 1
    finally:
        recorder.socket_closed()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # no process wrote there
    live = live_numbers()
    assert live.scope == "every process writing to PROMETHEUS_MULTIPROC_DIR"
    assert live.numbers["eventbus_websocket_connections"] == 0


@pytest.mark.db_heavy
def test_the_page_is_linked_from_the_log_and_shows_each_chart(admin_client):
    record(at=timezone.now())
    record(at=timezone.now() - timedelta(minutes=3), status=DeliveryStatus.FAILED)
    listing = admin_client.get(reverse("admin:eventbus_eventrecord_changelist"))
    assert f'href="{reverse(DASHBOARD)}"'.encode() in listing.content
    page = admin_client.get(reverse(DASHBOARD))
    assert page.status_code == 200
    html = page.content.decode()
    for chart in (
        "eventbus-traffic-hour",
        "eventbus-traffic-day",
        "eventbus-lag",
        "eventbus-failures",
    ):
        assert f'id="{chart}"' in html
    assert "Unhealthy" in html and "1 event(s) failed delivery" in html
    assert "open WebSockets" in html and "this server process only" in html
    assert page.context["backlog"].failed_events == 1


def test_without_metrics_the_page_says_sockets_are_unavailable(admin_client, monkeypatch):
    monkeypatch.setattr(metrics, "_metrics", metrics.NO_METRICS)
    html = admin_client.get(reverse(DASHBOARD)).content.decode()
    assert 'title="eventbus metrics are off: install prometheus-client' in html
    assert "Unavailable:" in html


def test_the_page_needs_the_view_permission(client, django_user_model):
    staff = django_user_model.objects.create_user("staff", password="x", is_staff=True)
    client.force_login(staff)
    assert client.get(reverse(DASHBOARD)).status_code == 403


@pytest.mark.db_heavy
def test_the_page_reads_a_fixed_number_of_queries(admin_client, django_assert_max_num_queries):
    for n in range(50):
        record(f"type.{n % 9}", timezone.now() - timedelta(minutes=n))
    with django_assert_max_num_queries(14):
        assert admin_client.get(reverse(DASHBOARD)).status_code == 200


# -- in the browser ------------------------------------------------------------------------


def busy_day() -> None:
    """A day as a busy project logs it: many types, a stall, failures and dead runs."""
    now = timezone.now()
    types = [
        "triage.finished", "ticket.created", "ticket.assignee_updated",
        "agent.status_changed", "agent.message", "approval.requested",
        "approval.granted", "chat.message_posted", "chat.message_edited",
    ]  # fmt: skip
    rows = []
    for n in range(1500):
        at = now - timedelta(seconds=57 * n)
        event_id = uuid7()
        late = timedelta(seconds=40 if 200 < n < 230 else 0.05)
        rows.append(
            EventRecord(
                id=event_id, type=types[(n * 7) % len(types) if n % 3 else 0], timestamp=at,
                payload={}, correlation_id=event_id, status=DeliveryStatus.DELIVERED,
                delivered_at=at + late,
            )
        )  # fmt: skip
    EventRecord.objects.bulk_create(rows)
    record("ticket.created", now - timedelta(seconds=95), status=DeliveryStatus.PENDING)
    for n in range(12):
        failure = HandlerFailure.objects.create(
            event_id=uuid4(), event_type="ticket.created",
            handler="helpdesk.notifications.handlers.notify_the_assignee_by_email", error="SMTP",
        )  # fmt: skip
        HandlerFailure.objects.filter(pk=failure.pk).update(
            occurred_at=now - timedelta(minutes=40 * n)
        )
    for n in range(3):
        event = rows[n * 10]
        HandlerRun.objects.create(
            id=uuid7(), event=event, event_type=event.type,
            handler="billing.projections.handlers.rebuild_invoice_totals",
            status=RunStatus.DEAD, attempts=5, max_attempts=5, created_at=now, due_at=now,
            finished_at=now - timedelta(hours=3 * n),
        )  # fmt: skip


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_dashboard_fits_a_1280_px_screen(
    admin_user: Any, chromium_page: Any, asgi_server_factory: AsgiServerFactory
) -> None:
    busy_day()
    page = chromium_page
    open_at_1280(
        admin_user, page, asgi_server_factory, reverse(DASHBOARD), "admin-dashboard-1280.png"
    )
    assert connection.vendor  # the server process reads the test's database
    assert_no_overflow(page)
    charts = page.evaluate(
        """() => [...document.querySelectorAll("svg.eventbus-chart")].map(svg => {
             const box = svg.getBoundingClientRect();
             return {id: svg.id, width: box.width, height: box.height,
                     within: box.right <= document.documentElement.clientWidth,
                     bars: svg.querySelectorAll("rect").length};
           })"""
    )
    assert [c["id"] for c in charts] == [
        "eventbus-traffic-hour",
        "eventbus-traffic-day",
        "eventbus-lag",
        "eventbus-failures",
    ]
    for chart in charts:
        assert chart["within"] and chart["width"] >= 600 and chart["height"] >= 150, chart
        assert chart["bars"] > 0, chart
    # A bar's tooltip says its time and its numbers.
    tip = page.evaluate("document.querySelector('#eventbus-lag rect title').textContent")
    assert " s" in tip
    assert page.locator(".eventbus-health.unhealthy").is_visible()
    assert page.locator(".eventbus-legend li").count() >= 7
    page.screenshot(path=SCREENSHOT_DIR / "admin-dashboard-1280.png", full_page=True)
