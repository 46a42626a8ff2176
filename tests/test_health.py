"""Delivery health (eventbus.health): manage.py eventbus_health's exit status and the view.

Each way to be unhealthy is made for real in the database, then judged by the command
(in-process, and in a subprocess for the exit status a probe sees) and the view.
"""

import json
import os
import subprocess
import sys
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import OperationalError, connection
from django.test import RequestFactory, override_settings
from django.utils import timezone

from eventbus import health
from eventbus.health import Thresholds, check_health, health_view
from eventbus.ids import uuid7
from eventbus.models import DeliveryStatus, EventRecord, HandlerRun, RunStatus

pytestmark = [pytest.mark.django_db, pytest.mark.db_heavy]

REPO_ROOT = Path(__file__).resolve().parent.parent


def event(status: str = DeliveryStatus.DELIVERED, age: float = 0.0, error: str = "") -> EventRecord:
    event_id = uuid7()
    return EventRecord.objects.create(
        id=event_id,
        type="order.deleted",
        timestamp=timezone.now() - timedelta(seconds=age),
        payload={"order_id": 1},
        correlation_id=event_id,
        status=status,
        last_error=error,
    )


def dead_run() -> HandlerRun:
    record = event()
    now = timezone.now()
    return HandlerRun.objects.create(
        id=uuid7(),
        event=record,
        event_type=record.type,
        handler="tests.testapp.handlers.notify_payment",
        status=RunStatus.DEAD,
        attempts=3,
        max_attempts=3,
        created_at=now,
        due_at=now,
        finished_at=now,
        last_error="RuntimeError: notify failed",
    )


def run(*args: str) -> tuple[int, str, str]:
    """The command in-process: its exit status, stdout and stderr."""
    out, err = StringIO(), StringIO()
    try:
        call_command("eventbus_health", *args, stdout=out, stderr=err)
    except SystemExit as exc:
        return int(exc.code or 0), out.getvalue(), err.getvalue()
    except CommandError as exc:
        return exc.returncode, out.getvalue(), str(exc)
    return 0, out.getvalue(), err.getvalue()


def test_a_healthy_bus_exits_0():
    event(), event(DeliveryStatus.PENDING, age=1)
    code, out, err = run()
    assert code == 0 and err == ""
    assert out.splitlines()[-1] == "healthy"
    assert "relay: lag 1.0 s, 1 pending, 0 retrying, 0 failed" in out


def test_relay_lag_over_the_threshold_is_unhealthy():
    event(DeliveryStatus.PENDING, age=120)
    code, _, err = run()
    assert code == 1
    assert "unhealthy: Relay lag is 120." in err and "over 60 s" in err
    assert "Is manage.py eventbus_relay running" in err
    assert run("--max-lag", "300")[0] == 0
    with override_settings(EVENTBUS={"CATALOGS": [], "HEALTH_MAX_LAG": 600}):
        assert run()[0] == 0


def test_dead_durable_runs_are_unhealthy():
    dead_run()
    code, _, err = run()
    assert code == 1 and "1 durable run(s) are dead (more than 0)" in err
    assert run("--max-dead-runs", "1")[0] == 0
    with override_settings(EVENTBUS={"CATALOGS": [], "HEALTH_MAX_DEAD_RUNS": 1}):
        assert run()[0] == 0


def test_failed_events_are_unhealthy():
    event(DeliveryStatus.FAILED, error="ConnectionError: down")
    event(DeliveryStatus.FAILED, error="ConnectionError: down")
    code, _, err = run()
    assert code == 1 and "2 event(s) failed delivery" in err
    assert run("--max-failed-events", "1")[0] == 1
    assert run("--max-failed-events", "2")[0] == 0
    with override_settings(EVENTBUS={"CATALOGS": [], "HEALTH_MAX_FAILED_EVENTS": 2}):
        assert run()[0] == 0


def test_failing_sends_are_unhealthy_while_they_wait_for_a_retry():
    event(DeliveryStatus.PENDING, age=2, error="ConnectionError: sink is down")
    code, _, err = run()
    assert code == 1 and "Sends are failing: 1 event(s) wait for a retry" in err
    assert run("--max-retrying", "1")[0] == 0
    with override_settings(EVENTBUS={"CATALOGS": [], "HEALTH_MAX_RETRYING": 1}):
        assert run()[0] == 0


def test_every_problem_is_said_at_once():
    event(DeliveryStatus.PENDING, age=120, error="ConnectionError: down")
    event(DeliveryStatus.FAILED)
    dead_run()
    code, _, err = run()
    assert code == 1
    assert err.count("unhealthy: ") == 4


def test_without_a_sink_pending_events_are_not_lag():
    event(DeliveryStatus.PENDING, age=3600, error="RuntimeError: no sink")
    with override_settings(EVENTBUS={"CATALOGS": [], "SINK": None}):
        code, out, _ = run()
    assert code == 0
    assert "note: EVENTBUS['SINK'] is None" in out


def test_a_database_that_cannot_be_read_is_unhealthy(monkeypatch):
    def unreachable(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(health, "read_backlog", unreachable)
    code, _, err = run()
    assert code == 1
    assert "The event log cannot be read: OperationalError: could not connect" in err


def test_json_reports_the_numbers_the_thresholds_and_the_problems():
    event(DeliveryStatus.PENDING, age=90)
    dead_run()
    code, out, _ = run("--json", "--max-lag", "30.5")
    assert code == 1
    report = json.loads(out)
    assert report["status"] == "unhealthy" and len(report["problems"]) == 2
    assert 90 <= report["relay"]["lag_seconds"] < 120
    assert report["relay"]["pending_events"] == 1
    assert report["durable_runs"] == {"pending": 0, "running": 0, "dead": 1}
    assert report["thresholds"] == {
        "max_lag_seconds": 30.5,
        "max_dead_runs": 0,
        "max_failed_events": 0,
        "max_retrying": 0,
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-lag", "soon"], "--max-lag must be a number of seconds, not 'soon'"),
        (["--max-lag", "0"], "--max-lag must be a positive number of seconds, not 0"),
        (["--max-lag", "-5"], "--max-lag must be a positive number of seconds, not -5"),
        (["--max-lag", "nan"], "--max-lag must be a positive number of seconds, not nan"),
        (["--max-lag", "inf"], "--max-lag must be a positive number of seconds, not inf"),
        (["--max-dead-runs", "-1"], "--max-dead-runs must be 0 or more, not -1"),
        (["--max-dead-runs", "many"], "--max-dead-runs must be a whole number, not 'many'"),
        (["--max-failed-events", "1.5"], "--max-failed-events must be a whole number, not '1.5'"),
        (["--max-retrying", "-2"], "--max-retrying must be 0 or more, not -2"),
    ],
)
def test_bad_thresholds_are_refused_with_status_2(args, message):
    code, _, err = run(*args)
    assert code == 2
    assert message in err


@pytest.mark.django_db(transaction=True)
def test_the_exit_status_a_probe_sees():
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "EVENTBUS_TEST_DB_NAME": str(connection.settings_dict["NAME"]),
        "PYTHONPATH": str(REPO_ROOT),
    }

    def probe(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "django", "eventbus_health", *args],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    assert probe().returncode == 0
    event(DeliveryStatus.PENDING, age=120)
    done = probe()
    assert done.returncode == 1 and "unhealthy: Relay lag" in done.stderr
    assert probe("--max-lag", "600").returncode == 0
    bad = probe("--max-lag", "-1")
    assert bad.returncode == 2 and "--max-lag must be a positive number" in bad.stderr


def test_the_view_answers_200_when_healthy_and_503_with_the_problems_when_not():
    request = RequestFactory().get("/health")
    healthy = health_view(request)
    assert healthy.status_code == 200 and json.loads(healthy.content)["status"] == "ok"
    event(DeliveryStatus.FAILED)
    sick = health_view(request)
    assert sick.status_code == 503
    body = json.loads(sick.content)
    assert body["status"] == "unhealthy"
    assert body["problems"] == [
        "1 event(s) failed delivery after RELAY_MAX_ATTEMPTS (more than 0): re-deliver "
        "them from the admin."
    ]


def test_thresholds_come_from_the_settings_unless_given():
    with override_settings(
        EVENTBUS={"CATALOGS": [], "HEALTH_MAX_LAG": 5, "HEALTH_MAX_RETRYING": 2}
    ):
        assert Thresholds.from_settings(max_dead_runs=4, max_lag=None) == Thresholds(
            max_lag=5, max_dead_runs=4, max_failed_events=0, max_retrying=2
        )
    assert check_health(Thresholds(1, 0, 0, 0)).ok
