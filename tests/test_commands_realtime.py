"""Management commands for the real-time side: eventbus_emit and eventbus_tail.

eventbus_tail's live tests run it against the suite's Redis: in a thread of this process
(its own event loop, as from a shell), and once as a subprocess, to stop it with Ctrl-C.
"""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from io import StringIO
from typing import Any
from uuid import uuid4

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings

from eventbus.bus import EventBus
from eventbus.models import DeliveryStatus, EventRecord
from eventbus.sinks import load_sink
from eventbus.wire import public_json
from tests.services import REPO_ROOT, RedisServer
from tests.testapp.events import ShopEvent

pytestmark = pytest.mark.django_db(transaction=True)

PROJECT = uuid4()
CHANNEL = EventBus.get_project_channel(PROJECT)
TIMEOUT = 10.0


def emit(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("eventbus_emit", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def tail(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("eventbus_tail", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


# -- eventbus_emit ------------------------------------------------------------------------


def test_emit_publishes_one_event(captured_events):
    actor = uuid4()
    out, err = emit(
        "order.placed",
        "--payload",
        '{"order_id": 7, "title": "seven"}',
        "--project",
        str(PROJECT),
        "--actor-id",
        str(actor),
        "--actor-type",
        "user",
    )
    [event] = captured_events
    assert out == f"published order.placed {event.id}\n" and err == ""
    assert (event.type, event.project_id, event.actor_id, event.actor_type) == (
        ShopEvent.ORDER_PLACED,
        PROJECT,
        actor,
        "user",
    )
    assert (event.payload.order_id, event.payload.title, event.payload.quantity) == (7, "seven", 1)
    row = EventRecord.objects.get()
    assert (row.id, row.status) == (event.id, DeliveryStatus.DELIVERED)


def test_emit_defaults_to_a_system_event_without_project(captured_events):
    emit("order.deleted", "--payload", '{"order_id": 1}')
    [event] = captured_events
    assert (event.project_id, event.actor_id, event.actor_type) == (None, None, "system")


BAD_EMITS = [
    (
        ["order.exploded", "--payload", "{}"],
        r"Unknown event type 'order\.exploded'\. Known types: .*order\.placed",
    ),
    (["order.placed", "--payload", "{order_id: 1}"], r"--payload is not valid JSON: "),
    (["order.placed", "--payload", ""], r"--payload is not valid JSON: "),
    (["order.placed", "--payload", "[1, 2]"], r"--payload must be a JSON object, not list"),
    (
        ["order.placed", "--payload", '{"order_id": "seven", "quantity": "many"}'],
        r"Invalid payload for 'order\.placed':\n  order_id: .*\n  title: Field required\n  quantity: ",
    ),
    (
        ["order.placed", "--payload", json.dumps({"order_id": 1, "title": "x" * 70_000})],
        r"over the limit of 65536",
    ),
    (
        ["order.deleted", "--payload", '{"order_id": 1}', "--project", "no pe"],
        r"--project: 'no pe' is not a valid key: use a UUID, an integer, or 1 to 64 letters",
    ),
    (
        ["order.deleted", "--payload", '{"order_id": 1}', "--actor-id", "a.b"],
        r"--actor-id: 'a\.b' is not a valid key",
    ),
    (
        ["order.deleted", "--payload", '{"order_id": 1}', "--project", "x" * 65],
        r"--project: 'x{65}' is not a valid key",
    ),
    (
        ["order.deleted", "--payload", '{"order_id": 1}', "--actor-type", "robot"],
        r"invalid choice: 'robot'",
    ),
]


@pytest.mark.parametrize(("args", "message"), BAD_EMITS)
def test_emit_refuses_bad_input_and_publishes_nothing(captured_events, args, message):
    with pytest.raises(CommandError, match=message):
        emit(*args)
    assert captured_events == []
    assert not EventRecord.objects.exists()


@override_settings(EVENTBUS={"CATALOGS": [], "SINK": "tests.sinks.FlakySink"})
def test_emit_says_when_the_event_is_not_delivered_yet():
    sink = load_sink("tests.sinks.FlakySink")
    sink.failing = True
    try:
        out, err = emit("order.deleted", "--payload", '{"order_id": 1}')
    finally:
        sink.failing = False
    assert out.startswith("published order.deleted ")
    assert (
        err
        == "not delivered yet (ConnectionError: sink is down); manage.py eventbus_relay retries it.\n"
    )
    assert EventRecord.objects.get().status == DeliveryStatus.PENDING


# -- eventbus_tail: arguments ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "Name at least one channel, or use --project KEY or --agent KEY"),
        (["bad channel!"], "'bad channel!' is not a valid channel name"),
        ([CHANNEL, "x" * 91], f"'{'x' * 91}' is not a valid channel name"),
        (["--project", "no pe"], "--project: 'no pe' is not a valid key"),
        (["--agent", "1.5"], "--agent: '1.5' is not a valid key"),
        ([CHANNEL, "--max-events", "0"], "--max-events must be at least 1"),
        ([CHANNEL, "--max-seconds", "0"], "--max-seconds must be more than 0"),
        ([CHANNEL, "--format", "xml"], "invalid choice: 'xml'"),
    ],
)
def test_tail_refuses_bad_arguments(args, message):
    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(".", r"\.")):
        tail(*args)


def test_tail_stops_after_max_seconds_when_nothing_happens():
    agent = uuid4()
    started = time.monotonic()
    out, err = tail("--project", str(PROJECT), "--agent", str(agent), "--max-seconds", "0.3")
    assert 0.3 <= time.monotonic() - started < 5
    assert out == ""
    channels = f"{CHANNEL}, {EventBus.get_agent_channel(agent)}"
    assert err == f"listening on {channels}; Ctrl-C to stop\nstopped after 0 event(s)\n"


# -- eventbus_tail: live, over Redis -----------------------------------------------------------


@pytest.fixture
def redis_layer(redis_url: str) -> Iterator[str]:
    layers = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [redis_url]},
        }
    }
    with override_settings(CHANNEL_LAYERS=layers):
        yield redis_url


class TailThread(threading.Thread):
    """``manage.py eventbus_tail ARGS`` in a thread, with its own event loop."""

    def __init__(self, *args: str) -> None:
        super().__init__(daemon=True)
        self.args = args
        self.out, self.err = StringIO(), StringIO()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            call_command("eventbus_tail", *self.args, stdout=self.out, stderr=self.err)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def wait_listening(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        while "listening on" not in self.err.getvalue():
            assert self.is_alive() and time.monotonic() < deadline, (
                self.error or self.err.getvalue()
            )
            time.sleep(0.02)

    def finish(self) -> list[str]:
        self.join(TIMEOUT)
        assert not self.is_alive(), "eventbus_tail did not stop"
        assert self.error is None, self.error
        return self.out.getvalue().splitlines()


@pytest.mark.redis
def test_tail_prints_each_event_as_public_json(redis_layer, captured_events):
    tailer = TailThread(
        "--project", str(PROJECT), "--max-events", "2", "--max-seconds", str(TIMEOUT)
    )
    tailer.start()
    tailer.wait_listening()
    emit("order.deleted", "--payload", '{"order_id": 1}', "--project", str(uuid4()))  # elsewhere
    emit("order.placed", "--payload", '{"order_id": 2, "title": "two"}', "--project", str(PROJECT))
    payload = {"note_id": str(uuid4()), "text": "hi", "author_email": "secret@example.com"}
    emit("note.added", "--payload", json.dumps(payload), "--project", str(PROJECT))
    lines = tailer.finish()
    _, placed, note = captured_events
    assert lines == [public_json(placed), public_json(note)]
    assert json.loads(lines[1])["payload"] == {"note_id": payload["note_id"], "text": "hi"}
    assert tailer.err.getvalue().endswith("stopped after 2 event(s)\n")


@pytest.mark.redis
def test_tail_text_format(redis_layer, captured_events):
    actor = uuid4()
    tailer = TailThread(
        CHANNEL, "--format", "text", "--max-events", "1", "--max-seconds", str(TIMEOUT)
    )
    tailer.start()
    tailer.wait_listening()
    emit(
        "order.placed",
        "--payload",
        '{"order_id": 3, "title": "three"}',
        "--project",
        str(PROJECT),
        "--actor-id",
        str(actor),
        "--actor-type",
        "user",
    )
    [line] = tailer.finish()
    [event] = captured_events
    timestamp = event.timestamp.isoformat().replace("+00:00", "Z")
    assert line == (
        f"{timestamp} order.placed {event.id} project={PROJECT} actor=user:{actor} "
        '{"order_id":3,"title":"three","quantity":1}'
    )


def read_lines(stream: Any, into: "queue.Queue[str]") -> None:
    for line in iter(stream.readline, ""):
        into.put(line.rstrip("\n"))


@pytest.mark.redis
def test_tail_stops_cleanly_on_ctrl_c(redis_layer, redis_server: RedisServer, captured_events):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "EVENTBUS_TEST_REDIS_URL": redis_layer,
        # The tail reads where each stream stands from the log: the test's database.
        "EVENTBUS_TEST_DB_NAME": str(connection.settings_dict["NAME"]),
        "PYTHONPATH": str(REPO_ROOT),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "django", "eventbus_tail", "--project", str(PROJECT)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out: queue.Queue[str] = queue.Queue()
    err: queue.Queue[str] = queue.Queue()
    readers = [
        threading.Thread(target=read_lines, args=(stream, lines), daemon=True)
        for stream, lines in ((process.stdout, out), (process.stderr, err))
    ]
    for reader in readers:
        reader.start()
    try:
        assert err.get(timeout=20).startswith(f"listening on {CHANNEL}")
        emit("order.deleted", "--payload", '{"order_id": 4}', "--project", str(PROJECT))
        [event] = captured_events
        assert out.get(timeout=TIMEOUT) == public_json(event)
        process.send_signal(signal.SIGINT)
        assert process.wait(TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)
    for reader in readers:
        reader.join(TIMEOUT)
    assert list(err.queue) == ["stopped after 1 event(s)"]  # and no traceback
    assert out.empty()
    client = redis_server.client()
    try:
        assert client.zcard(f"asgi:group:{CHANNEL}") == 0  # it left its group on the way out
    finally:
        client.close()
