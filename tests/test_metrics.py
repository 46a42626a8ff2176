"""Prometheus metrics (eventbus.metrics): counts that move with real traffic, the views that
expose them, several processes added up, and a process without the optional packages.

The process's counters only grow, so each test reads how much they moved.
"""

import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from channels.testing import WebsocketCommunicator
from django.db import connection
from django.test import RequestFactory, override_settings
from django.utils import timezone
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from eventbus import Event, get_event_dispatcher, metrics
from eventbus.bus import EventBus
from eventbus.consumers import EventStreamConsumer
from eventbus.metrics import Metrics, metrics_view
from eventbus.models import DeliveryStatus, EventRecord, HandlerRun, RunStatus
from eventbus.relay import Relay
from eventbus.sinks import load_sink
from tests.services import free_port
from tests.testapp.events import ShopEvent
from tests.testapp.models import Membership

REPO_ROOT = Path(__file__).resolve().parent.parent
FLAKY = "tests.sinks.FlakySink"


def process_metrics() -> Metrics:
    recorder = metrics.get_metrics()
    assert isinstance(recorder, Metrics), "the suite runs with prometheus-client installed"
    return recorder


class Reading:
    """The process's eventbus counters, read after a flush (not the database's gauges)."""

    def __init__(self) -> None:
        self.metrics = process_metrics()
        self.registry = CollectorRegistry()
        for value in vars(self.metrics).values():
            if isinstance(value, MetricWrapperBase):
                self.registry.register(value)

    def __call__(self, name: str, **labels: str) -> float:
        self.metrics.flush()
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def read() -> Reading:
    return Reading()


def moved(read: Reading, name: str, action: Any, **labels: str) -> float:
    before = read(name, **labels)
    action()
    return read(name, **labels) - before


@pytest.fixture
def sink():
    flaky = load_sink(FLAKY)
    flaky.clear()
    flaky.failing = False
    with override_settings(EVENTBUS={"CATALOGS": [], "SINK": FLAKY}):
        yield flaky
    flaky.failing = False


# -- the dispatcher ---------------------------------------------------------------------


def handler_name(func: Any) -> str:
    return f"{func.__module__}.{func.__qualname__}"


def ok(event: Event[Any]) -> None:
    pass


def broken(event: Event[Any]) -> None:
    raise RuntimeError("broken handler")


@pytest.mark.django_db(transaction=True)
def test_publishing_counts_events_by_type_and_handler_runs_and_failures(dispatcher, sink, read):
    dispatcher.subscribe(ShopEvent.ORDER_DELETED, ok)
    dispatcher.subscribe(ShopEvent.ORDER_DELETED, broken)
    dispatcher.subscribe(ShopEvent.METRIC_SAMPLED, ok)
    before = {
        "deleted": read("eventbus_events_published_total", type="order.deleted"),
        "deleted stored": read("eventbus_events_stored_total", type="order.deleted"),
        "sampled": read("eventbus_events_published_total", type="metric.sampled"),
        "sampled stored": read("eventbus_events_stored_total", type="metric.sampled"),
        "ok": read("eventbus_handler_runs_total", handler=handler_name(ok)),
        "broken": read("eventbus_handler_runs_total", handler=handler_name(broken)),
        "broken failed": read("eventbus_handler_failures_total", handler=handler_name(broken)),
    }
    for n in range(3):
        dispatcher.publish(ShopEvent.ORDER_DELETED, {"order_id": n})
    for n in range(2):  # a type kept out of the log
        dispatcher.publish(ShopEvent.METRIC_SAMPLED, {"name": "load", "value": n})
    after = {
        "deleted": read("eventbus_events_published_total", type="order.deleted"),
        "deleted stored": read("eventbus_events_stored_total", type="order.deleted"),
        "sampled": read("eventbus_events_published_total", type="metric.sampled"),
        "sampled stored": read("eventbus_events_stored_total", type="metric.sampled"),
        "ok": read("eventbus_handler_runs_total", handler=handler_name(ok)),
        "broken": read("eventbus_handler_runs_total", handler=handler_name(broken)),
        "broken failed": read("eventbus_handler_failures_total", handler=handler_name(broken)),
    }
    assert {key: after[key] - before[key] for key in before} == {
        "deleted": 3,
        "deleted stored": 3,
        "sampled": 2,
        "sampled stored": 0,
        "ok": 5,
        "broken": 3,
        "broken failed": 3,
    }


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_publish_counts_nothing(dispatcher, sink, read):
    from django.db import transaction

    def rolled_back() -> None:
        with pytest.raises(RuntimeError), transaction.atomic():
            dispatcher.publish(ShopEvent.ORDER_DELETED, {"order_id": 1})
            raise RuntimeError

    assert moved(read, "eventbus_events_published_total", rolled_back, type="order.deleted") == 0


@pytest.mark.django_db(transaction=True)
async def test_apublish_counts_as_publish(dispatcher, sink, read):
    from asgiref.sync import sync_to_async

    async def handler(event: Event[Any]) -> None:
        pass

    dispatcher.subscribe(ShopEvent.ORDER_DELETED, handler)
    before = await sync_to_async(read)("eventbus_handler_runs_total", handler=handler_name(handler))
    await dispatcher.apublish(ShopEvent.ORDER_DELETED, {"order_id": 1})
    await dispatcher.drain()
    after = await sync_to_async(read)("eventbus_handler_runs_total", handler=handler_name(handler))
    assert after - before == 1


def test_counts_of_threads_publishing_at_once_are_exact(read):
    import threading

    recorder = process_metrics()
    entry = get_event_dispatcher().catalog.resolve(ShopEvent.ORDER_PLACED)
    before = read("eventbus_events_published_total", type="order.placed")

    def publish_many() -> None:
        for _ in range(20_000):
            recorder.published(entry)

    threads = [threading.Thread(target=publish_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        recorder.flush()  # flushes racing the counting threads lose nothing
    assert read("eventbus_events_published_total", type="order.placed") - before == 80_000


def test_the_tally_of_handlers_that_are_gone_is_dropped_without_losing_a_count(read, monkeypatch):
    from eventbus.inspection import Handler

    recorder = process_metrics()
    monkeypatch.setattr(metrics, "RETIRE_SECONDS", 0.0)
    handlers = (Handler(func=ok, name="tests.gone", is_async=False, wants_payload=False),)
    before = read("eventbus_handler_runs_total", handler="tests.gone")
    recorder.dispatched(handlers)
    tally = recorder._dispatched[id(handlers)]
    recorder.flush()
    time.sleep(0.01)
    recorder.flush()  # idle since the last count: it leaves the dispatcher's dict
    assert id(handlers) not in recorder._dispatched
    tally.bump()  # a thread that took it from the dict just before
    assert read("eventbus_handler_runs_total", handler="tests.gone") - before == 2
    assert tally not in recorder._retired  # read once more, then gone


# -- the relay and the durable runs ------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_relay_counts_deliveries_and_send_errors_by_path(dispatcher, sink, read):
    sent = {
        path: read("eventbus_relay_delivered_total", path=path) for path in ("hand_off", "relay")
    }
    errors = read("eventbus_send_errors_total", path="hand_off")
    sink.failing = True
    dispatcher.publish(ShopEvent.ORDER_DELETED, {"order_id": 1})
    dispatcher.publish(ShopEvent.ORDER_DELETED, {"order_id": 2})
    assert read("eventbus_send_errors_total", path="hand_off") - errors == 2
    sink.failing = False
    dispatcher.publish(ShopEvent.ORDER_DELETED, {"order_id": 3})
    Relay().run_once(now=timezone.now() + timedelta(seconds=60))
    assert read("eventbus_relay_delivered_total", path="hand_off") - sent["hand_off"] == 1
    assert read("eventbus_relay_delivered_total", path="relay") - sent["relay"] == 2


@pytest.mark.django_db
def test_durable_executions_are_counted_by_handler_and_outcome(
    read, django_capture_on_commit_callbacks
):
    from eventbus.durable import execute

    notify = "tests.testapp.handlers.notify_payment"
    with django_capture_on_commit_callbacks(execute=True):
        event = get_event_dispatcher().publish(
            ShopEvent.PAYMENT_RECEIVED, {"payment_id": 1, "fail_times": 1}
        )
    run = HandlerRun.objects.get(event_id=event.id, handler=notify)
    outcomes = ("done", "retrying", "skipped")
    before = {
        o: read("eventbus_durable_executions_total", handler=notify, outcome=o) for o in outcomes
    }
    assert execute(str(run.id)) == "retrying"
    HandlerRun.objects.filter(pk=run.pk).update(due_at=timezone.now())
    assert execute(str(run.id)) == "done"
    assert execute(str(run.id)).startswith("skipped")
    after = {
        o: read("eventbus_durable_executions_total", handler=notify, outcome=o) for o in outcomes
    }
    assert {o: after[o] - before[o] for o in outcomes} == {"done": 1, "retrying": 1, "skipped": 1}


@pytest.mark.redis
async def test_messages_the_channel_layer_drops_are_counted(redis_url, read):
    from asgiref.sync import sync_to_async
    from channels_redis.core import RedisChannelLayer

    from eventbus.layers import group_send_many

    layer = RedisChannelLayer(hosts=[redis_url], capacity=5)
    try:
        channel = await layer.new_channel()
        await layer.group_add("group.full", channel)
        before = await sync_to_async(read)("eventbus_channel_layer_dropped_messages_total")
        await group_send_many(layer, [("group.full", {"type": "m", "n": n}) for n in range(12)])
        after = await sync_to_async(read)("eventbus_channel_layer_dropped_messages_total")
        assert after - before == 7
    finally:
        await layer.flush()


# -- sockets -----------------------------------------------------------------------------

PROJECT = uuid4()
CHANNEL = EventBus.get_project_channel(PROJECT)
SOCKETS = {
    "CATALOGS": [],
    "AUTHORIZE": "tests.testapp.authorization.may_subscribe",
    "WS_REAUTHORIZE_SECONDS": 3600,
}


async def connect(user: Any) -> WebsocketCommunicator:
    socket = WebsocketCommunicator(EventStreamConsumer.as_asgi(), "/ws/events/")
    socket.scope["user"] = user
    connected, _ = await socket.connect(timeout=5)
    assert connected
    return socket


async def ask(socket: WebsocketCommunicator, frame: dict[str, Any]) -> dict[str, Any]:
    await socket.send_to(text_data=json.dumps(frame))
    return json.loads(await socket.receive_from(timeout=5))


@pytest.fixture
def member(django_user_model):
    user = django_user_model.objects.create(username="member")
    Membership.objects.create(user=user, project_id=PROJECT)
    return user


@pytest.mark.django_db(transaction=True)
@override_settings(EVENTBUS=SOCKETS)
async def test_open_sockets_and_subscriptions_follow_the_sockets(member, read):
    from asgiref.sync import sync_to_async

    value = sync_to_async(read)
    sockets, subscriptions = (
        await value("eventbus_websocket_connections"),
        await value("eventbus_websocket_subscriptions"),
    )
    first, second = await connect(member), await connect(member)
    assert await value("eventbus_websocket_connections") == sockets + 2
    assert (await ask(first, {"action": "subscribe", "channel": CHANNEL}))["type"] == "subscribed"
    assert (await ask(second, {"action": "subscribe", "channel": CHANNEL}))["type"] == "subscribed"
    other = EventBus.get_project_channel(uuid4())
    assert (await ask(first, {"action": "subscribe", "channel": other}))["code"] == "forbidden"
    assert await value("eventbus_websocket_subscriptions") == subscriptions + 2
    assert (await ask(first, {"action": "unsubscribe", "channel": CHANNEL}))[
        "type"
    ] == "unsubscribed"
    assert await value("eventbus_websocket_subscriptions") == subscriptions + 1
    await second.disconnect()
    await first.disconnect()
    assert await value("eventbus_websocket_connections") == sockets
    assert await value("eventbus_websocket_subscriptions") == subscriptions


@pytest.mark.django_db(transaction=True)
@override_settings(EVENTBUS={**SOCKETS, "PRESENCE": "tests.testapp.presence.presence"})
async def test_present_connections_and_presence_changes_are_counted(member, read):
    from asgiref.sync import sync_to_async

    value = sync_to_async(read)
    present = await value("eventbus_presence_connections")
    joins = await value("eventbus_presence_changes_total", kind="join")
    leaves = await value("eventbus_presence_changes_total", kind="leave")
    first, second = await connect(member), await connect(member)
    for socket in (first, second):
        assert (await ask(socket, {"action": "subscribe", "channel": CHANNEL}))[
            "type"
        ] == "subscribed"
    assert await value("eventbus_presence_connections") == present + 2
    assert await value("eventbus_presence_changes_total", kind="join") == joins + 1  # one user
    await first.disconnect()
    await second.disconnect()
    assert await value("eventbus_presence_connections") == present
    assert await value("eventbus_presence_changes_total", kind="leave") == leaves + 1


@pytest.mark.django_db(transaction=True)
@override_settings(EVENTBUS={**SOCKETS, "RESUME_MAX_EVENTS": 2, "WS_FRAMES_PER_MINUTE": 2})
async def test_resumes_resets_and_rate_limits_are_counted(member, read):
    from asgiref.sync import sync_to_async

    from eventbus import apublish

    value = sync_to_async(read)
    names = [
        ("eventbus_resume_replays_total", {}),
        ("eventbus_resume_replayed_events_total", {}),
        ("eventbus_resets_total", {"reason": "since_unknown"}),
        ("eventbus_resets_total", {"reason": "too_many_missed"}),
        ("eventbus_rate_limited_total", {"limit": "frames"}),
    ]
    before = [await value(name, **labels) for name, labels in names]
    seen = await apublish(ShopEvent.ORDER_DELETED, {"order_id": 0}, project_id=PROJECT)
    await apublish(ShopEvent.ORDER_DELETED, {"order_id": 1}, project_id=PROJECT)
    socket = await connect(member)
    try:
        # 1: a resume answered from the log, one event replayed.
        frame = await ask(
            socket, {"action": "subscribe", "channel": CHANNEL, "since": str(seen.id)}
        )
        assert frame["replayed"] == 1
        await socket.receive_from(timeout=5)
        # 2: a resume from an event the log does not have: a reset.
        other = await connect(member)
        await ask(other, {"action": "subscribe", "channel": CHANNEL, "since": str(uuid4())})
        assert json.loads(await other.receive_from(timeout=5))["reason"] == "since_unknown"
        await other.disconnect()
        # 3: more missed than RESUME_MAX_EVENTS: a reset of another reason.
        for n in (2, 3):
            await apublish(ShopEvent.ORDER_DELETED, {"order_id": n}, project_id=PROJECT)
        third = await connect(member)
        await ask(third, {"action": "subscribe", "channel": CHANNEL, "since": str(seen.id)})
        assert json.loads(await third.receive_from(timeout=5))["reason"] == "too_many_missed"
        await third.disconnect()
        # 4: frames over WS_FRAMES_PER_MINUTE (2: the subscribe, then a ping).
        for _ in (2, 3):
            await socket.receive_from(timeout=5)  # the live orders
        assert (await ask(socket, {"action": "ping"}))["type"] == "pong"
        assert (await ask(socket, {"action": "ping"}))["code"] == "rate_limited"
    finally:
        await socket.disconnect()
    after = [await value(name, **labels) for name, labels in names]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1, 1, 1]


@pytest.mark.django_db(transaction=True)
@override_settings(EVENTBUS={**SOCKETS, "WS_MAX_CONNECTIONS_PER_USER": 1})
async def test_refused_connections_are_counted_by_limit(member, read):
    from asgiref.sync import sync_to_async

    value = sync_to_async(read)
    before = await value("eventbus_rate_limited_total", limit="connections")
    sockets = await value("eventbus_websocket_connections")
    first = await connect(member)
    refused = await connect(member)  # accepted, then closed with 4429
    assert (await refused.receive_output(timeout=5))["code"] == 4429
    assert await value("eventbus_rate_limited_total", limit="connections") == before + 1
    assert (
        await value("eventbus_websocket_connections") == sockets + 1
    )  # the refused one is not open
    await first.disconnect()


# -- exposing them -----------------------------------------------------------------------


def scrape(**env: str) -> tuple[int, str, dict[str, Any]]:
    """The metrics view's answer: status, content type and the families by name."""
    request = RequestFactory().get("/metrics")
    old = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        response = metrics_view(request)
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    text = response.content.decode()
    families = (
        {family.name: family for family in text_string_to_metric_families(text)}
        if response.status_code == 200
        else {}
    )
    return response.status_code, response["Content-Type"], families


def sample(families: dict[str, Any], name: str, **labels: str) -> float | None:
    for family in families.values():
        for item in family.samples:
            if item.name == name and all(item.labels.get(k) == v for k, v in labels.items()):
                return float(item.value)
    return None


@pytest.mark.db_heavy
@pytest.mark.django_db(transaction=True)
def test_the_view_serves_the_counts_and_the_backlog_read_from_the_database(sink):
    publish = get_event_dispatcher().publish
    publish(ShopEvent.ORDER_DELETED, {"order_id": 1})
    sink.failing = True
    stuck = publish(ShopEvent.ORDER_DELETED, {"order_id": 2})
    EventRecord.objects.filter(id=stuck.id).update(timestamp=timezone.now() - timedelta(seconds=90))
    failed = publish(ShopEvent.ORDER_DELETED, {"order_id": 3})
    EventRecord.objects.filter(id=failed.id).update(status=DeliveryStatus.FAILED)
    sink.failing = False
    event = publish(ShopEvent.PAYMENT_RECEIVED, {"payment_id": 1})
    HandlerRun.objects.filter(event_id=event.id).update(status=RunStatus.DEAD)
    status, content_type, families = scrape()
    assert status == 200 and content_type.startswith("text/plain; version=")
    assert sample(families, "eventbus_events_published_total", type="order.deleted") >= 3
    assert sample(families, "eventbus_send_errors_total", path="hand_off") >= 2
    assert 89 <= sample(families, "eventbus_relay_lag_seconds") < 200
    assert sample(families, "eventbus_relay_pending_events") == 1
    assert sample(families, "eventbus_relay_retrying_events") == 1
    assert sample(families, "eventbus_relay_failed_events") == 1
    assert sample(families, "eventbus_durable_runs", status="dead") == 3
    assert sample(families, "eventbus_durable_runs", status="pending") == 0
    assert families["eventbus_websocket_connections"].type == "gauge"
    assert families["eventbus_handler_runs"].type == "counter"


def test_the_view_speaks_openmetrics_when_asked():
    request = RequestFactory().get(
        "/metrics", HTTP_ACCEPT="application/openmetrics-text; version=1.0.0"
    )
    response = metrics_view(request)
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.decode().rstrip().endswith("# EOF")


@pytest.mark.django_db(transaction=True)
def test_the_relay_serves_its_metrics_on_a_port_of_its_own():
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "EVENTBUS_TEST_DB_NAME": str(connection.settings_dict["NAME"]),
        "PYTHONPATH": str(REPO_ROOT),
    }
    relay = subprocess.Popen(
        [sys.executable, "-m", "django", "eventbus_relay", "--max-seconds", "20",
         "--metrics-port", str(port), "--metrics-addr", "127.0.0.1"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert relay.stdout.readline().strip() == f"metrics on http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        names = {family.name for family in text_string_to_metric_families(text)}
        assert {
            "eventbus_relay_lag_seconds",
            "eventbus_relay_delivered",
            "eventbus_durable_runs",
        } <= names
    finally:
        relay.terminate()
        relay.wait(20)


def test_a_bad_metrics_port_is_refused():
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="--metrics-port must be a TCP port"):
        call_command("eventbus_relay", "--once", "--metrics-port", "70000")


# -- several processes --------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import os, sys
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    import django
    django.setup()
    from eventbus import get_event_dispatcher, metrics
    from tests.testapp.events import ShopEvent

    count, sockets = int(sys.argv[1]), int(sys.argv[2])
    for n in range(count):
        get_event_dispatcher().publish(ShopEvent.ORDER_PLACED, {"order_id": n, "title": "x"})
    for _ in range(sockets):
        metrics.get_metrics().socket_opened()
    print("published", flush=True)
    sys.stdin.readline()  # alive until the test says so; the flush thread writes meanwhile
    """
)


def writer(directory: Path, count: int, sockets: int) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
        "EVENTBUS_TEST_SETTINGS_OVERRIDE": json.dumps({"LOG": False, "SINK": None}),
        "PYTHONPATH": str(REPO_ROOT),
    }
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(count), str(sockets)],
        cwd=REPO_ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout.readline().strip() == "published"
    return process


@pytest.mark.django_db
def test_multiprocess_mode_adds_up_the_counts_of_every_process(tmp_path):
    from prometheus_client.multiprocess import mark_process_dead

    one, two = writer(tmp_path, 3, 1), writer(tmp_path, 4, 2)
    try:
        # While they run: their flush thread has written within FLUSH_SECONDS.
        deadline = time.monotonic() + 10
        while True:
            _, _, families = scrape(PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
            published = sample(families, "eventbus_events_published_total", type="order.placed")
            if published == 7 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert published == 7
        runs = sample(
            families, "eventbus_handler_runs_total", handler="tests.testapp.handlers.remember_order"
        )
        assert runs == 7
        # Open sockets are each process's own (pid), as Prometheus's "liveall" keeps them.
        sockets = {
            item.labels["pid"]: item.value
            for item in families["eventbus_websocket_connections"].samples
        }
        assert sockets == {str(one.pid): 1.0, str(two.pid): 2.0}
        # The backlog is read once, by the process that serves the scrape.
        assert sample(families, "eventbus_relay_pending_events") == 0
    finally:
        for process in (one, two):
            process.communicate("\n", timeout=20)
    # A process that is gone: its counts stay, its gauges go once it is marked dead (a
    # server's child-exit hook does it, see the README).
    mark_process_dead(one.pid, str(tmp_path))
    _, _, families = scrape(PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    assert sample(families, "eventbus_events_published_total", type="order.placed") == 7
    sockets = {
        item.labels["pid"]: item.value
        for item in families["eventbus_websocket_connections"].samples
    }
    assert sockets == {str(two.pid): 2.0}


# -- without prometheus-client and OpenTelemetry ----------------------------------------------

WITHOUT_EXTRAS = textwrap.dedent(
    """
    import importlib.abc, json, os, sys

    class Missing(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("prometheus_client", "opentelemetry"):
                raise ModuleNotFoundError(f"No module named {name!r}")
            return None

    if sys.argv[1] == "missing":
        sys.meta_path.insert(0, Missing())
    # Other packages import them when they can (redis-py, django-rq): count eventbus's own.
    import builtins
    real_import, by_eventbus = builtins.__import__, set()

    def watched(name, globals=None, *args, **kwargs):
        if (globals or {}).get("__name__", "").startswith("eventbus") and name.split(".")[
            0
        ] in ("prometheus_client", "opentelemetry"):
            by_eventbus.add(name.split(".")[0])
        return real_import(name, globals, *args, **kwargs)

    builtins.__import__ = watched
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    import django
    django.setup()
    from django.core.management import call_command
    from django.test import RequestFactory
    from eventbus import get_event_dispatcher, metrics, tracing
    from eventbus.dashboard import live_numbers
    from eventbus.health import check_health
    from eventbus.relay import Relay
    from eventbus.sinks import load_sink
    from tests.testapp.events import ShopEvent

    dispatcher = get_event_dispatcher()
    event = dispatcher.publish(ShopEvent.ORDER_DELETED, {"order_id": 1})
    Relay().run_once()
    response = metrics.metrics_view(RequestFactory().get("/metrics"))
    print(json.dumps({
        "stages": [dispatcher.stages.metrics is None, dispatcher.stages.tracing is None],
        "recorder": metrics.get_metrics() is metrics.NO_METRICS,
        "tracing": tracing.get_tracing() is None,
        "delivered": [e.id == event.id for e in load_sink("eventbus.sinks.InMemorySink").events],
        "traceparent": event.traceparent,
        "view": [response.status_code, response.content.decode()],
        "healthy": check_health().ok,
        "live": live_numbers().why,
        "imported": sorted(by_eventbus),
    }))
    """
)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("how", "settings", "why"),
    [
        ("missing", {}, "install prometheus-client"),
        ("installed", {"METRICS": False, "TRACING": False}, "EVENTBUS['METRICS'] is False"),
    ],
)
def test_without_the_extras_or_with_them_off_nothing_breaks_and_nothing_is_imported(
    how, settings, why
):
    env = {
        **os.environ,
        "EVENTBUS_TEST_DB_NAME": str(connection.settings_dict["NAME"]),
        "EVENTBUS_TEST_SETTINGS_OVERRIDE": json.dumps(
            {"SINK": "eventbus.sinks.InMemorySink", **settings}
        ),
        "PYTHONPATH": str(REPO_ROOT),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRAS, how],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["stages"] == [True, True]
    assert report["recorder"] and report["tracing"]
    assert report["delivered"] == [True] and report["traceparent"] is None
    assert report["view"][0] == 503 and why in report["view"][1]
    assert report["healthy"] is True
    assert why in report["live"]
    # Off, eventbus never imports them; missing, it tried once, at start-up, and went on.
    assert report["imported"] == (
        [] if how == "installed" else ["opentelemetry", "prometheus_client"]
    )
