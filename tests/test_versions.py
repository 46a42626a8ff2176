"""Versioned payloads: rows stored under v1 read as v3 everywhere, through upcasters.

A type is published under v1; then the catalog moves it to v3 (a field renamed, a
required field added, a field split, a type changed), as a deploy would. Replay and
resume, re-delivery, durable handler runs and ``eventbus_verify_log`` must all see v3
payloads, and a row that cannot be upcast is isolated without stopping the rest.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator
from io import StringIO
from typing import Any
from uuid import uuid4

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.utils import timezone
from pydantic import BaseModel, ConfigDict

from eventbus import Event, get_event_dispatcher, publish
from eventbus.catalog import CatalogEntry, EventSpec, catalog
from eventbus.channel_names import project_channel
from eventbus.checks import version_messages
from eventbus.durable import execute
from eventbus.exceptions import UnreadablePayloadError
from eventbus.models import DeliveryStatus, EventRecord, HandlerRun
from eventbus.relay import Relay, redeliver
from eventbus.replay import load_replay
from eventbus.sinks import InMemorySink
from eventbus.streams import read_after

pytestmark = pytest.mark.django_db(transaction=True)


class Customer(enum.StrEnum):
    SIGNED_UP = "customer.signed_up"


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class SignedUpV1(Frozen):
    name: str
    email: str
    amount: str  # "12.50"


class SignedUpV3(Frozen):
    first_name: str  # v2 renamed name to full_name; v3 split it
    last_name: str
    email: str
    plan: str  # added, required, in v2
    amount_cents: int  # v3: a string of euros became an integer of cents


def v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    payload["full_name"] = payload.pop("name")
    payload["plan"] = "free"
    return payload


def v2_to_v3(payload: dict[str, Any]) -> dict[str, Any]:
    first, _, last = payload.pop("full_name").partition(" ")
    payload["first_name"], payload["last_name"] = first, last
    payload["amount_cents"] = round(float(payload.pop("amount")) * 100)
    return payload


V3 = EventSpec(SignedUpV3, version=3, upcasters={1: v1_to_v2, 2: v2_to_v3})
EXPECTED = {
    "first_name": "Ada",
    "last_name": "Lovelace",
    "email": "ada@example.com",
    "plan": "free",
    "amount_cents": 1250,
}
seen: list[Event[Any]] = []


def remember(event: Event[Any]) -> None:
    """A durable handler subscribed while the type is at v1; it runs after the move."""
    seen.append(event)


def move_to(spec: EventSpec) -> None:
    """What a deploy of the new catalog does: the type's entry now carries ``spec``."""
    old = catalog.resolve(Customer.SIGNED_UP)
    catalog._entries[old.name] = CatalogEntry(Customer.SIGNED_UP, spec, old.source)


@pytest.fixture
def v1() -> Iterator[str]:
    """The type at v1, with the durable handler; removed again after the test."""
    catalog.register({Customer.SIGNED_UP: SignedUpV1}, source="tests.test_versions")
    dispatcher = get_event_dispatcher()
    dispatcher.subscribe(Customer.SIGNED_UP, remember, durable=True)
    seen.clear()
    try:
        yield Customer.SIGNED_UP.value
    finally:
        dispatcher.unsubscribe(Customer.SIGNED_UP, remember)
        catalog._entries.pop(Customer.SIGNED_UP.value, None)


def sign_up(project: Any, name: str = "Ada Lovelace", amount: str = "12.50") -> Event[Any]:
    return publish(
        Customer.SIGNED_UP,
        {"name": name, "email": "ada@example.com", "amount": amount},
        project_id=project,
    )


def test_rows_published_under_v1_read_as_v3_in_replay_and_resume(v1):
    project = uuid4()
    events = [sign_up(project) for _ in range(3)]
    assert set(EventRecord.objects.values_list("payload_version", flat=True)) == {1}
    move_to(V3)
    channel = project_channel(project)
    entries = read_after(channel, 0, 10)
    assert [entry.event.id for entry in entries] == [event.id for event in events]
    assert all(entry.event.payload.model_dump() == EXPECTED for entry in entries)
    # A resuming socket's replay: the frames carry the v3 payload.
    replay = load_replay(channel, 1, None, None, lambda _type: True, 100)
    assert replay.reset is None and len(replay.frames) == 2
    assert all(json.loads(frame)["event"]["payload"] == EXPECTED for frame in replay.frames)
    # The stored rows are not rewritten.
    stored = EventRecord.objects.get(pk=events[0].id)
    assert stored.payload == {"name": "Ada Lovelace", "email": "ada@example.com", "amount": "12.50"}
    assert stored.payload_version == 1
    assert stored.to_event().payload.model_dump() == EXPECTED


def test_redelivery_and_durable_runs_see_v3(v1):
    event = sign_up(uuid4())
    move_to(V3)
    assert redeliver([event.id]) == 1
    sink = InMemorySink()
    report = Relay(sink=sink).run_once(now=timezone.now())
    assert report.delivered == [event.id]
    assert sink.events[0].payload.model_dump() == EXPECTED
    run = HandlerRun.objects.get(event_id=event.id)
    assert execute(str(run.id)) == "done"
    assert [e.payload.model_dump() for e in seen] == [EXPECTED]


def test_rows_published_under_v3_are_stored_as_v3(v1):
    move_to(V3)
    event = publish(Customer.SIGNED_UP, EXPECTED, project_id=uuid4())
    row = EventRecord.objects.get(pk=event.id)
    assert row.payload_version == 3 and row.payload == EXPECTED
    assert row.to_event().payload.model_dump() == EXPECTED


def test_an_unreadable_row_is_isolated_and_the_rest_flows(v1):
    good = sign_up(uuid4())
    bad = sign_up(uuid4(), amount="twelve")  # v2_to_v3 cannot make cents of it
    move_to(V3)
    EventRecord.objects.update(status=DeliveryStatus.PENDING, next_attempt_at=None)
    sink = InMemorySink()
    later = timezone.now() + timezone.timedelta(minutes=1)
    report = Relay(sink=sink).run_once(now=later)
    assert report.delivered == [good.id] and report.corrupted == [bad.id]
    row = EventRecord.objects.get(pk=bad.id)
    assert row.status == DeliveryStatus.FAILED
    assert "the upcaster from version 2 to 3 raised ValueError" in row.last_error
    with pytest.raises(UnreadablePayloadError, match="upcaster from version 2 to 3"):
        row.to_event()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (EventSpec(SignedUpV3, version=3, upcasters={1: v1_to_v2}), "no upcaster from version"),
        (EventSpec(SignedUpV3, version=2, upcasters={1: v1_to_v2, 3: v2_to_v3}), "go backwards"),
        (EventSpec(SignedUpV3, version=0), "versions are integers from 1"),
        (EventSpec(SignedUpV3, version=2, upcasters={1: "v1_to_v2"}), "not callable"),  # type: ignore[dict-item]
    ],
)
def test_the_check_fails_without_an_upcaster_path(spec, message):
    entry = CatalogEntry(Customer.SIGNED_UP, spec, "tests")
    messages = version_messages(entry)
    assert [m.id for m in messages] == ["eventbus.E018"]
    assert message in messages[0].msg


def test_the_check_passes_a_complete_path():
    assert version_messages(CatalogEntry(Customer.SIGNED_UP, V3, "tests")) == []


def test_without_an_upcaster_the_row_does_not_read_and_says_why(v1):
    event = sign_up(uuid4())
    move_to(EventSpec(SignedUpV3, version=3, upcasters={2: v2_to_v3}))
    with pytest.raises(UnreadablePayloadError, match="no upcaster from payload version 1 to 2"):
        EventRecord.objects.get(pk=event.id).to_event()


def test_a_row_newer_than_the_catalog_does_not_read(v1):
    event = sign_up(uuid4())
    EventRecord.objects.filter(pk=event.id).update(payload_version=4)
    with pytest.raises(UnreadablePayloadError, match="newer than the catalog's 1"):
        EventRecord.objects.get(pk=event.id).to_event()


def verify(*args: str) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    try:
        call_command("eventbus_verify_log", *args, stdout=out, stderr=err)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def test_verify_log_counts_upcast_and_unreadable_rows_and_exits_1(v1, capsys):
    for _ in range(5):
        sign_up(uuid4())
    bad = sign_up(uuid4(), amount="twelve")
    move_to(V3)
    code, out, _ = verify("--type", "customer.signed_up", "--batch-size", "2")
    assert code == 1
    assert "6 row(s): 5 readable (5 upcast from an older version), 1 unreadable" in out
    assert "the upcaster from version 2 to 3 raised ValueError" in out
    assert str(bad.id) in out
    assert "6/6 rows" in capsys.readouterr().err  # the progress bar
    EventRecord.objects.filter(pk=bad.id).delete()
    code, out, _ = verify()
    assert code == 0 and "0 unreadable" in out


def test_verify_log_refuses_bad_arguments(v1):
    with pytest.raises(CommandError, match="'nope' is not in the catalog"):
        verify("--type", "nope")
    with pytest.raises(CommandError, match="--batch-size must be at least 1"):
        verify("--batch-size", "0")


@override_settings(EVENTBUS={"CATALOGS": ["tests.testapp.events.EVENT_PAYLOAD_MAP"]})
def test_verify_log_on_an_empty_log_passes():
    code, out, _ = verify()
    assert code == 0 and out.startswith("0 row(s)")


def test_the_admin_shows_the_upcast_payload_and_an_unreadable_rows_reason(v1, admin_client):
    event = sign_up(uuid4())
    bad = sign_up(uuid4(), amount="twelve")
    move_to(V3)
    page = admin_client.get(f"/admin/eventbus/eventrecord/{event.id}/change/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "Stored as version 1, shown as version 3 (upcast)." in text
    assert (
        "&quot;amount_cents&quot;: 1250" in text
        and "&quot;last_name&quot;: &quot;Lovelace&quot;" in text
    )
    page = admin_client.get(f"/admin/eventbus/eventrecord/{bad.id}/change/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "the upcaster from version 2 to 3 raised ValueError" in text
    assert "&quot;amount&quot;: &quot;twelve&quot;" in text  # the stored payload, as it is
