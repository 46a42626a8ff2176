"""The demo site's own tests: run with the demo's settings (``--ds=project.settings``)."""

import io
import signal
import time
import uuid
from datetime import date, timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core import checks
from django.core.management import call_command
from django.db import connection
from django.utils import timezone
from pydantic import BaseModel

from eventbus import Event, get_event_dispatcher
from eventbus.catalog import catalog
from eventbus.durable import sweep
from eventbus.models import HandlerRun, RunStatus
from eventbus.testing import run_durable_handlers
from project.demo.models import Agent, Project, Ticket
from project.events import EVENT_PAYLOAD_MAP, AgentStatus, AppEvent, EventType, TicketStatus
from tests.demo.workers import start_worker, stop, worker_process

SAMPLES: dict[str, dict[str, Any]] = {
    "triage.finished": {
        "conversation_id": uuid.uuid4(),
        "title": "Login fails",
        "priority": "high",
    },
    "ticket.created": {
        "ticket_id": uuid.uuid4(),
        "title": "t",
        "status": "open",
        "priority": "low",
    },
    "ticket.assignee_updated": {
        "ticket_id": uuid.uuid4(),
        "old_assignee_id": None,
        "new_assignee_id": uuid.uuid4(),
    },
    "ticket.status_updated": {
        "ticket_id": uuid.uuid4(),
        "old_status": "open",
        "new_status": "waiting",
    },
    "ticket.escalated": {"ticket_id": uuid.uuid4(), "reason": "sla", "level": 3},
    "ticket.closed": {"ticket_id": uuid.uuid4(), "title": "t"},
    "agent.spawned": {"agent_id": uuid.uuid4(), "name": "Ada", "role": "support"},
    "agent.status_changed": {
        "agent_id": uuid.uuid4(),
        "old_status": "idle",
        "new_status": "working",
    },
    "agent.message": {
        "agent_id": uuid.uuid4(),
        "message_id": uuid.uuid4(),
        "role": "assistant",
        "content": "hé ✓",
    },
    "agent.terminated": {"agent_id": uuid.uuid4(), "reason": "done"},
    "issue.created": {"issue_id": uuid.uuid4(), "title": "Bug", "priority": "urgent"},
    "issue.updated": {"issue_id": uuid.uuid4(), "changed_fields": ["title", "priority"]},
    "issue.assigned": {"issue_id": uuid.uuid4(), "assignee_id": uuid.uuid4()},
    "issue.closed": {"issue_id": uuid.uuid4(), "resolution": "fixed"},
    "sprint.started": {
        "sprint_id": uuid.uuid4(),
        "name": "S1",
        "starts_on": date(2026, 11, 2),
        "ends_on": date(2026, 11, 16),
        "issue_ids": [uuid.uuid4()],
    },
    "sprint.completed": {
        "sprint_id": uuid.uuid4(),
        "completed_issue_ids": [uuid.uuid4()],
        "carried_over_issue_ids": [],
    },
    "approval.requested": {
        "approval_id": uuid.uuid4(),
        "requested_by": uuid.uuid4(),
        "action": "deploy",
        "reason": "hotfix",
    },
    "approval.granted": {"approval_id": uuid.uuid4(), "approver_id": uuid.uuid4()},
    "approval.denied": {
        "approval_id": uuid.uuid4(),
        "approver_id": uuid.uuid4(),
        "reason": "freeze",
    },
}


def test_catalog_has_all_19_types_each_with_a_typed_payload():
    assert len(EVENT_PAYLOAD_MAP) == 19 == len(AppEvent) + len(EventType)
    assert set(SAMPLES) == {member.value for member in EVENT_PAYLOAD_MAP}
    for model in EVENT_PAYLOAD_MAP.values():
        assert issubclass(model, BaseModel) and model.model_config["frozen"]
        for name, field in model.model_fields.items():
            assert field.annotation not in (dict, Any), f"{model.__name__}.{name} is untyped"


@pytest.mark.parametrize("event_type", sorted(SAMPLES))
def test_json_round_trip_for_every_demo_event(event_type):
    event = Event(
        type=event_type,
        payload=SAMPLES[event_type],
        project_id=uuid.uuid4(),
        actor_id=uuid.uuid4(),
        actor_type="agent",
    )
    restored = Event.model_validate_json(event.model_dump_json())
    assert restored == event
    assert type(restored.payload) is catalog.resolve(event_type).payload_model
    assert restored.type.value == event_type


def test_demo_payloads_refuse_extra_fields():
    from eventbus import EventSchemaError

    with pytest.raises(EventSchemaError, match="surprise"):
        get_event_dispatcher().build("ticket.closed", {**SAMPLES["ticket.closed"], "surprise": 1})


def test_demo_system_checks_are_clean(db):  # model checks may open a cursor (JSONField)
    assert [m for m in checks.run_checks() if m.level >= checks.WARNING] == []
    # The database checks too (as migrate runs them): the demo's SQLite is in WAL mode,
    # so its durable runs do not warn (eventbus.W011).
    found = checks.run_checks(databases=["default"])
    assert [m for m in found if m.level >= checks.WARNING] == []
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        assert cursor.fetchone()[0] == "wal"


def test_demo_migrations_are_in_sync(db):  # makemigrations reads the applied history
    """Every app of the demo, its own included: else migrate warns on each demo.sh after the first."""
    out = io.StringIO()
    try:
        call_command("makemigrations", "--check", "--dry-run", stdout=out)
    except SystemExit:
        pytest.fail(f"models and migrations differ:\n{out.getvalue()}")


@pytest.fixture
def demo(db):
    call_command("demo_setup", stdout=open("/dev/null", "w"))  # noqa: SIM115
    return Project.objects.get(name="Apollo")


def test_demo_setup_is_idempotent_and_prints_logins(db, capsys):
    call_command("demo_setup")
    call_command("demo_setup")
    out = capsys.readouterr().out
    assert "admin / admin" in out and "alice / alice" in out
    assert Project.objects.count() == 2 and Agent.objects.count() == 6


@pytest.mark.django_db(transaction=True)
def test_triage_flow_runs_through_events_only(demo, captured_events):
    get_event_dispatcher().publish(
        AppEvent.TRIAGE_FINISHED,
        {"conversation_id": uuid.uuid4(), "title": "Checkout broken", "priority": "urgent"},
        project_id=demo.pk,
        actor_type="user",
    )
    # Opening the ticket is durable: it waits for a worker.
    assert captured_events.types() == ["triage.finished"] and not Ticket.objects.exists()
    assert run_durable_handlers() == 1
    assert run_durable_handlers() == 0  # run once: the ticket opens once
    assert captured_events.types() == [
        "triage.finished",
        "ticket.created",
        "ticket.escalated",
        "ticket.status_updated",
        "ticket.assignee_updated",
        "agent.status_changed",
        "agent.message",
    ]
    root = captured_events[0]
    assert all(event.correlation_id == root.id for event in captured_events)
    assert captured_events[1].causation_id == root.id
    assert {e.causation_id for e in captured_events[2:]} == {captured_events[1].id}
    ticket = Ticket.objects.get()
    assert ticket.status == TicketStatus.IN_PROGRESS and ticket.assignee is not None
    assert ticket.assignee.status == AgentStatus.WORKING
    assert all(event.project_id == demo.pk for event in captured_events)


@pytest.mark.django_db(transaction=True)
def test_closing_a_ticket_emits_status_and_closed(demo, captured_events):
    ticket = Ticket.objects.create(project=demo, title="x")
    ticket.status = TicketStatus.CLOSED
    ticket.save()
    assert captured_events.types()[-2:] == ["ticket.status_updated", "ticket.closed"]


def test_index_and_flow_views(demo, client, django_capture_on_commit_callbacks):
    from django.contrib.auth import get_user_model

    assert client.get("/").status_code == 302  # login required
    client.force_login(get_user_model().objects.get(username="alice"))
    response = client.get("/")
    assert response.status_code == 200 and b"Apollo" in response.content
    assert b"Borealis" not in response.content
    borealis = Project.objects.get(name="Borealis")
    assert client.post(f"/projects/{borealis.pk}/flow/").status_code == 404  # not a member
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(f"/projects/{demo.pk}/flow/").status_code == 302
    assert not Ticket.objects.exists()
    with django_capture_on_commit_callbacks(execute=True):
        assert run_durable_handlers() == 1
    assert Ticket.objects.filter(project=demo).count() == 1


def test_the_demo_serves_metrics_and_health(demo, client, django_capture_on_commit_callbacks):
    import json

    from prometheus_client.parser import text_string_to_metric_families

    client.force_login(get_user_model().objects.get(username="alice"))
    with django_capture_on_commit_callbacks(execute=True):
        client.post(f"/projects/{demo.pk}/flow/")
    client.logout()  # neither asks who is there
    text = client.get("/metrics").content.decode()
    published = {
        sample.labels["type"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "eventbus_events_published_total"
    }
    assert published.get("triage.finished", 0) >= 1
    health = client.get("/health/eventbus")
    assert health.status_code in (200, 503)
    assert json.loads(health.content)["durable_runs"]["pending"] == 1  # the flow's ticket


def test_members_sign_in_through_the_demo_login_page(demo, client):
    """alice is no staff member: the admin's login would refuse her; the demo's own does not."""
    page = client.get("/live/")
    assert page.status_code == 302 and page["Location"].startswith("/accounts/login/")
    assert b"alice / alice" in client.get("/accounts/login/").content
    response = client.post("/accounts/login/", {"username": "alice", "password": "alice"})
    assert response.status_code == 302 and response["Location"] == "/live/"
    assert client.get("/live/").status_code == 200
    refused = client.post("/accounts/login/", {"username": "alice", "password": "nope"})
    assert b"Wrong username or password" in refused.content


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_flow_still_opens_exactly_one_ticket_per_triage(demo):
    """SIGKILL the demo's worker while it opens tickets; a new worker and the sweep finish
    the flow, and every triage has exactly one ticket."""
    triages = 20
    for n in range(triages):
        get_event_dispatcher().publish(
            AppEvent.TRIAGE_FINISHED,
            {"conversation_id": uuid.uuid4(), "title": f"triage {n}", "priority": "low"},
            project_id=demo.pk,
        )
    assert HandlerRun.objects.filter(status=RunStatus.PENDING).count() == triages
    worker = start_worker()
    try:
        deadline = time.monotonic() + 60
        while not Ticket.objects.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        stop(worker, signal.SIGKILL)
    finally:
        stop(worker, signal.SIGKILL)
    opened_before_kill = Ticket.objects.count()
    assert opened_before_kill > 0
    # Runs the killed worker had started are found by the sweep once DURABLE_RUN_TIMEOUT
    # has passed (here: as if it had), and enqueued again for the next worker.
    sweep(now=timezone.now() + timedelta(seconds=601))
    with worker_process():
        deadline = time.monotonic() + 60
        while (
            HandlerRun.objects.exclude(status=RunStatus.DONE).exists()
            and time.monotonic() < deadline
        ):
            sweep()  # the relay's sweep, which the demo runs too
            time.sleep(0.1)
    assert HandlerRun.objects.filter(status=RunStatus.DONE).count() == triages
    titles = list(Ticket.objects.values_list("title", flat=True))
    assert sorted(titles) == sorted(f"triage {n}" for n in range(triages))
    print(
        f"opened {opened_before_kill} of {triages} tickets before the SIGKILL; {len(titles)} after"
    )
