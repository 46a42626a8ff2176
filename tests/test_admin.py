"""The admin, through HTTP: a read-only event log with its chains, re-delivery, failures,
and durable runs with their retry."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django_tasks_db.models import DBTaskResult

from eventbus import admin as eventbus_admin
from eventbus.ids import uuid7
from eventbus.models import DeliveryStatus, EventRecord, HandlerFailure, HandlerRun, RunStatus

if TYPE_CHECKING:
    from playwright.sync_api import Page

    from tests.fixtures_services import AsgiServerFactory

pytestmark = [pytest.mark.django_db, pytest.mark.db_heavy]

CHANGELIST = "admin:eventbus_eventrecord_changelist"
T0 = datetime(2024, 3, 5, 12, 0, tzinfo=UTC)


def make(**fields: Any) -> EventRecord:
    event_id = fields.pop("id", None) or uuid4()
    values: dict[str, Any] = {
        "id": event_id,
        "type": "order.placed",
        "timestamp": T0,
        "payload": {"order_id": 1, "title": "x", "quantity": 1},
        "correlation_id": event_id,
        "actor_type": "system",
    }
    values.update(fields)
    return EventRecord.objects.create(**values)


def change_url(record: EventRecord) -> str:
    return reverse("admin:eventbus_eventrecord_change", args=[record.pk])


def listed(client, **params: str) -> set[UUID]:
    response = client.get(reverse(CHANGELIST), params)
    assert response.status_code == 200
    return {row.pk for row in response.context["cl"].result_list}


@pytest.fixture
def viewer(client, django_user_model):
    """A logged-in staff user who may only view the event log."""
    user = django_user_model.objects.create_user("viewer", is_staff=True)
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="eventbus", codename="view_eventrecord")
    )
    client.force_login(user)
    return user


# -- the list ------------------------------------------------------------------


def short(uuid: UUID) -> str:
    """A UUID as the list shows it."""
    return f'<span class="eventbus-id" title="{uuid}">…{uuid.hex[-8:]}</span>'


def test_changelist_lists_events_with_their_columns(admin_client):
    project, actor = uuid4(), uuid4()
    placed = make(project_id=project, actor_type="user", actor_id=actor, attempts=3)
    closed = make(type="order.closed", payload={"order_id": 1, "title": "x"})

    response = admin_client.get(reverse(CHANGELIST))

    assert response.status_code == 200
    content = response.content.decode()
    for record in (placed, closed):
        assert f'<a href="{change_url(record)}"><span title="{record.pk}">' in content
    assert f'<td class="field-project">{short(project)}</td>' in content
    assert f'<td class="field-actor">user {short(actor)}</td>' in content
    assert str(actor) not in content.replace(f'title="{actor}"', "")  # only in the title
    assert "order.closed" in content
    assert '<td class="field-delivery">pending, 3 attempts</td>' in content
    assert (
        '<td class="field-when"><time datetime="2024-03-05T12:00:00+00:00"'
        ' title="2024-03-05 12:00:00+00:00">03/05/2024 12:00:00</time></td>'
    ) in content


def test_the_actor_is_its_type_and_short_id_when_there_is_one(admin_client):
    agent = uuid4()
    make(actor_type="agent", actor_id=agent)  # published with actor_id=agent.pk
    make(actor_type="agent")  # from an agent's model change: no actor id
    make(actor_type="system")

    content = admin_client.get(reverse(CHANGELIST)).content.decode()

    actors = re.findall(r'<td class="field-actor">(.*?)</td>', content)
    assert sorted(actors) == sorted([f"agent {short(agent)}", "agent", "system"])


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (UUID("0192f4c6-7d1e-7a3b-9c2d-1e2f3a4b5c6d"), "…3a4b5c6d"),  # a UUIDv7: its end differs
        ("0192f4c67d1e7a3b9c2d1e2f3a4b5c6d", "…3a4b5c6d"),  # a UUID stored as a string
        (42, "42"),
        ("42", "42"),
        ("acme-eu", "acme-eu"),
        ("tenant-" + "x" * 40, "tenant-xxxxxxxx…"),
        (None, ""),
        ("", ""),
    ],
)
def test_ids_are_shortened_only_when_long(value, shown):
    html = eventbus_admin._short_id(value)

    assert re.sub(r"<[^>]+>", "", html) == shown
    assert (f'title="{value}"' in html) == (shown not in ("", str(value)))


@pytest.mark.parametrize(
    ("param", "value", "match", "other"),
    [
        ("type", "order.closed", {"type": "order.closed"}, {"type": "order.placed"}),
        ("actor_type__exact", "agent", {"actor_type": "agent"}, {"actor_type": "user"}),
        ("status__exact", "failed", {"status": "failed"}, {"status": "delivered"}),
    ],
)
def test_each_filter_narrows_the_list(admin_client, param, value, match, other):
    wanted, unwanted = make(**match), make(**other)

    assert listed(admin_client) == {wanted.pk, unwanted.pk}
    assert listed(admin_client, **{param: value}) == {wanted.pk}


def type_choices(client, **params: str) -> list[tuple[str, str]]:
    """The type filter's (link, label) pairs, in page order."""
    content = client.get(reverse(CHANGELIST), params).content.decode()
    by_type = content.split("By type")[1].split("</ul>")[0]
    return re.findall(r'<a href="\?([^"]*)">(.*?)</a>', by_type)


def test_type_filter_lists_the_types_in_the_log_with_counts(admin_client):
    make(), make(), make(type="order.closed"), make(type="legacy.gone")  # not in the catalog

    assert type_choices(admin_client) == [
        ("", "All"),
        ("type=legacy.gone", "legacy.gone (1)"),
        ("type=order.closed", "order.closed (1)"),
        ("type=order.placed", "order.placed (2)"),
    ]  # order.deleted, note.added, …: in the catalog, never published


def test_type_filter_keeps_a_chosen_type_that_is_gone(admin_client):
    make()

    assert ("type=order.closed", "order.closed (0)") in type_choices(
        admin_client, type="order.closed"
    )


def test_date_filter_and_date_hierarchy_narrow_the_list(admin_client):
    march = make(timestamp=T0)
    january = make(timestamp=T0 - timedelta(days=55))

    in_march = {
        "timestamp__gte": str(T0.replace(day=1)),
        "timestamp__lt": str(T0.replace(month=4, day=1)),
    }
    assert listed(admin_client, **in_march) == {march.pk}
    assert listed(admin_client, timestamp__year="2024", timestamp__month="1") == {january.pk}


def test_search_by_uuid_finds_the_matching_events(admin_client):
    root = make(project_id=uuid4())
    child = make(correlation_id=root.correlation_id, causation_id=root.id, project_id=uuid4())
    stranger = make(project_id=uuid4())

    assert listed(admin_client, q=str(child.id)) == {child.pk}
    assert listed(admin_client, q=str(root.correlation_id)) == {root.pk, child.pk}
    assert listed(admin_client, q=str(stranger.project_id)) == {stranger.pk}
    assert listed(admin_client, q=str(uuid4())) == set()


def test_integer_and_string_keys_are_searched_and_filtered_exactly(admin_client):
    """A project keyed by integers (Django's default) finds its events by its own keys."""
    team = make(project_id="42", actor_id="7", actor_type="user")
    other_team = make(project_id="420", actor_id="team-7", actor_type="user")
    no_key = make()

    assert listed(admin_client, q="42") == {team.pk}  # exact: not 420
    assert listed(admin_client, q="7") == {team.pk}  # the actor
    assert listed(admin_client, q="team-7") == {other_team.pk}
    assert listed(admin_client, project_id="42") == {team.pk}
    assert listed(admin_client, actor_id="team-7") == {other_team.pk}
    assert no_key.pk in listed(admin_client)


def test_search_accepts_a_uuid_in_other_spellings(admin_client):
    record = make()

    assert listed(admin_client, q=f"  {record.pk.hex.upper()}  ") == {record.pk}


@pytest.mark.parametrize("term", ["PLACED", "order.pl", "not-a-uuid", "1234", "'", "%", "x" * 500])
def test_a_search_that_is_not_a_uuid_matches_the_type(admin_client, term):
    placed, closed = make(), make(type="order.closed", payload={"order_id": 1, "title": "x"})

    found = listed(admin_client, q=term)

    assert found == ({placed.pk} if term in ("PLACED", "order.pl") else set())
    assert closed.pk not in found


# -- an event's page -------------------------------------------------------------


def test_detail_shows_the_payload_as_indented_escaped_json(admin_client):
    record = make(payload={"title": "<script>alert(1)</script>", "order_id": 7, "quantity": 2})

    response = admin_client.get(change_url(record))

    assert response.status_code == 200
    content = response.content.decode()
    assert "<script>alert(1)</script>" not in content
    expected = (
        "<pre>{\n"
        "  &quot;order_id&quot;: 7,\n"
        "  &quot;quantity&quot;: 2,\n"
        "  &quot;title&quot;: &quot;&lt;script&gt;alert(1)&lt;/script&gt;&quot;\n"
        "}</pre>"
    )
    assert expected in content


class ChainParser(HTMLParser):
    """Reads the chain tree: the parent of each event link, in page order, and the highlight."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0  # how many <ul> of the chain are open
        self.items: list[str | None] = []  # the link of each open <li>
        self.parents: dict[str, str | None] = {}
        self.current: list[str] = []
        self._current_open = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "ul" and (self.depth or attributes.get("class") == "eventbus-chain"):
            self.depth += 1
        elif self.depth and tag == "li":
            self.items.append(None)
            self._current_open = "eventbus-current" in (attributes.get("class") or "")
        elif self.depth and tag == "a" and self.items[-1] is None:
            href = attributes["href"]
            assert href is not None
            self.items[-1] = href
            self.parents[href] = self.items[-2] if len(self.items) > 1 else None
            if self._current_open:
                self.current.append(href)
                self._current_open = False

    def handle_endtag(self, tag: str) -> None:
        if self.depth and tag == "ul":
            self.depth -= 1
        elif self.depth and tag == "li":
            self.items.pop()


def chain_of(client, record: EventRecord) -> ChainParser:
    response = client.get(change_url(record))
    assert response.status_code == 200
    parser = ChainParser()
    parser.feed(response.content.decode())
    assert parser.depth == 0 and not parser.items  # every tag closed
    return parser


def test_detail_shows_the_chain_as_a_tree_with_this_event_highlighted(admin_client):
    root = make(timestamp=T0)
    cid = root.correlation_id
    child = make(timestamp=T0 + timedelta(seconds=1), correlation_id=cid, causation_id=root.id)
    sibling = make(timestamp=T0 + timedelta(seconds=3), correlation_id=cid, causation_id=root.id)
    grandchild = make(
        timestamp=T0 + timedelta(seconds=2), correlation_id=cid, causation_id=child.id
    )
    orphan = make(timestamp=T0 + timedelta(seconds=4), correlation_id=cid, causation_id=uuid4())
    stranger = make()  # another chain

    chain = chain_of(admin_client, child)

    url = change_url
    assert chain.parents == {
        url(root): None,
        url(child): url(root),
        url(grandchild): url(child),
        url(sibling): url(root),
        url(orphan): None,  # its cause is not in the log: shown as a root
    }
    assert list(chain.parents) == [url(e) for e in (root, child, grandchild, sibling, orphan)]
    assert chain.current == [url(child)]
    assert url(stranger) not in chain.parents


def test_chain_shows_readable_times(admin_client):
    root = make(timestamp=datetime(2024, 3, 5, 12, 0, 7, 250_000, tzinfo=UTC))

    content = admin_client.get(change_url(root)).content.decode()

    chain = content.split('<ul class="eventbus-chain">')[1]
    assert (
        '<time datetime="2024-03-05T12:00:07.250000+00:00"'
        ' title="2024-03-05 12:00:07.250000+00:00">03/05/2024 12:00:07</time>'
    ) in chain
    text = re.sub(r"<[^>]+>", "", chain)  # what the page shows: no ISO, no milliseconds
    assert "03/05/2024 12:00:07 · pending" in text and ".250" not in text and "T12" not in text


def test_chain_escapes_what_it_shows(admin_client):
    record = make(type="<b>odd</b>")

    content = admin_client.get(change_url(record)).content.decode()

    assert "&lt;b&gt;odd&lt;/b&gt;</a>" in content
    assert "<b>odd</b>" not in content


def test_chain_survives_causation_cycles(admin_client):
    first, second = uuid4(), uuid4()
    cid = uuid4()
    a = make(id=first, correlation_id=cid, causation_id=second)
    b = make(id=second, correlation_id=cid, causation_id=first, timestamp=T0 + timedelta(seconds=1))
    loop = uuid4()
    itself = make(
        id=loop, correlation_id=cid, causation_id=loop, timestamp=T0 + timedelta(seconds=2)
    )

    chain = chain_of(admin_client, b)

    assert chain.parents == {
        change_url(a): None,
        change_url(b): change_url(a),
        change_url(itself): None,
    }
    assert chain.current == [change_url(b)]


def test_long_chains_are_capped_and_say_so(admin_client, monkeypatch):
    monkeypatch.setattr(eventbus_admin, "CHAIN_LIMIT", 2)
    root = make(timestamp=T0)
    cid = root.correlation_id
    events = [
        make(correlation_id=cid, causation_id=root.id, timestamp=T0 + timedelta(seconds=n))
        for n in (1, 2, 3)
    ]

    chain = chain_of(admin_client, events[-1])

    assert list(chain.parents) == [change_url(root), change_url(events[0]), change_url(events[-1])]
    assert chain.current == [change_url(events[-1])]  # shown even past the cap
    assert "Showing the first 2 of 4 events." in admin_client.get(change_url(root)).content.decode()


def test_detail_page_reads_the_chain_in_one_query(admin_client):
    root = make()
    for n in range(20):
        make(correlation_id=root.id, causation_id=root.id, timestamp=T0 + timedelta(seconds=n))
    admin_client.get(change_url(root))  # warm caches (content types, session)

    with CaptureQueriesContext(connection) as queries:
        assert admin_client.get(change_url(root)).status_code == 200

    chain_queries = [q["sql"] for q in queries if '"correlation_id" =' in q["sql"]]
    assert len(chain_queries) == 1
    assert '"payload"' not in chain_queries[0]  # large, and not shown


# -- nothing can be added, changed or deleted ------------------------------------------


def test_no_add_change_or_delete(admin_client):
    record = make()
    add = reverse("admin:eventbus_eventrecord_add")
    delete = reverse("admin:eventbus_eventrecord_delete", args=[record.pk])

    changelist = admin_client.get(reverse(CHANGELIST)).content.decode()
    detail = admin_client.get(change_url(record)).content.decode()

    assert add not in changelist
    assert 'value="delete_selected"' not in changelist
    assert delete not in detail
    assert 'name="_save"' not in detail
    assert admin_client.get(add).status_code == 403
    assert admin_client.post(add, {"type": "order.placed"}).status_code == 403
    assert admin_client.post(change_url(record), {"type": "order.closed"}).status_code == 403
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert EventRecord.objects.get().type == "order.placed"


def test_staff_with_view_permission_can_browse(client, viewer):
    record = make()

    assert listed(client) == {record.pk}
    assert client.get(change_url(record)).status_code == 200


# -- re-delivery ----------------------------------------------------------------


def run_redeliver(client, *records: EventRecord):
    return client.post(
        reverse(CHANGELIST),
        {
            "action": "redeliver_events",
            "index": "0",
            "_selected_action": [str(r.pk) for r in records],
        },
        follow=True,
    )


def failed(**fields: Any) -> EventRecord:
    return make(status=DeliveryStatus.FAILED, attempts=8, last_error="sink down", **fields)


def test_superuser_redelivers_failed_events(admin_client):
    gave_up, other = failed(), failed()

    assert 'value="redeliver_events"' in admin_client.get(reverse(CHANGELIST)).content.decode()
    response = run_redeliver(admin_client, gave_up)

    assert "1 event queued for re-delivery." in response.content.decode()
    gave_up.refresh_from_db()
    assert (gave_up.status, gave_up.attempts, gave_up.last_error) == ("pending", 0, "")
    assert gave_up.next_attempt_at is not None
    other.refresh_from_db()
    assert other.status == "failed"


def test_staff_with_the_redeliver_permission_may_redeliver(client, viewer):
    viewer.user_permissions.add(Permission.objects.get(codename="redeliver_eventrecord"))
    gave_up = failed()

    response = run_redeliver(client, gave_up)

    assert "1 event queued for re-delivery." in response.content.decode()
    gave_up.refresh_from_db()
    assert gave_up.status == "pending"


def test_viewer_neither_sees_nor_runs_the_redeliver_action(client, viewer):
    gave_up = failed()

    assert 'value="redeliver_events"' not in client.get(reverse(CHANGELIST)).content.decode()
    response = run_redeliver(client, gave_up)

    assert response.status_code == 200
    assert "queued for re-delivery" not in response.content.decode()

    gave_up.refresh_from_db()
    assert (gave_up.status, gave_up.attempts) == ("failed", 8)


# -- handler failures ----------------------------------------------------------------


def failure(event_id: UUID, handler: str = "shop.handlers.notify", **fields: Any) -> HandlerFailure:
    values = {"event_type": "order.placed", "error": "ValueError: boom", "traceback": "Traceback"}
    values.update(fields)
    return HandlerFailure.objects.create(event_id=event_id, handler=handler, **values)


def test_handler_failures_link_to_logged_events(admin_client):
    logged, unlogged = make(), uuid4()
    failure(logged.pk)
    failure(unlogged, event_type="metric.sampled")

    response = admin_client.get(reverse("admin:eventbus_handlerfailure_changelist"))

    assert response.status_code == 200
    content = response.content.decode()
    assert f'<a href="{change_url(logged)}">{logged.pk}</a>' in content
    assert str(unlogged) in content
    assert reverse("admin:eventbus_eventrecord_change", args=[unlogged]) not in content
    assert "ValueError: boom" in content
    assert "</a></a>" not in content  # the row's own link is another column


def test_handler_failure_list_queries_do_not_grow_with_rows(admin_client):
    url = reverse("admin:eventbus_handlerfailure_changelist")
    failure(make().pk)
    admin_client.get(url)
    with CaptureQueriesContext(connection) as few:
        admin_client.get(url)
    for _ in range(5):
        failure(make().pk)

    with CaptureQueriesContext(connection) as many:
        admin_client.get(url)

    assert len(many) == len(few)


def test_handler_failure_detail_shows_the_traceback_escaped(admin_client):
    record = make()
    row = failure(record.pk, traceback='File "x.py", line 1\n  <module>\nValueError: boom')

    response = admin_client.get(reverse("admin:eventbus_handlerfailure_change", args=[row.pk]))

    assert response.status_code == 200
    content = response.content.decode()
    assert "<pre>File &quot;x.py&quot;, line 1\n  &lt;module&gt;\nValueError: boom</pre>" in content
    assert change_url(record) in content
    assert 'name="_save"' not in content


def test_handler_failures_search_and_filter(admin_client):
    event_id = uuid4()
    mine = failure(event_id, handler="shop.handlers.notify")
    theirs = failure(uuid4(), handler="billing.handlers.invoice")
    url = reverse("admin:eventbus_handlerfailure_changelist")

    def found(**params: str) -> set[int]:
        response = admin_client.get(url, params)
        assert response.status_code == 200
        return {row.pk for row in response.context["cl"].result_list}

    assert found(q=str(event_id)) == {mine.pk}
    assert found(q="INVOICE") == {theirs.pk}
    assert found(q="nothing") == set()
    assert found(handler="shop.handlers.notify") == {mine.pk}
    assert found(event_type="order.placed") == {mine.pk, theirs.pk}


# -- durable runs ------------------------------------------------------------------------

RUNS = "admin:eventbus_handlerrun_changelist"
RECORD = "tests.testapp.handlers.record_payment"
NOTIFY = "tests.testapp.handlers.notify_payment"
AUDIT = "tests.testapp.handlers.audit_payment"
TRACE = 'Traceback (most recent call last):\n  File "h.py", line 3, in <module>\nRuntimeError: <b>'


def payment(**fields: Any) -> EventRecord:
    return make(type="payment.received", payload={"payment_id": 1}, **fields)


def handler_run(event: EventRecord, handler: str, **fields: Any) -> HandlerRun:
    values: dict[str, Any] = {
        "id": uuid7(),
        "event": event,
        "event_type": event.type,
        "handler": handler,
        "max_attempts": 5,
        "created_at": T0,
        "due_at": T0,
    }
    values.update(fields)
    return HandlerRun.objects.create(**values)


def done(event: EventRecord, handler: str = RECORD, **fields: Any) -> HandlerRun:
    values = {
        "status": RunStatus.DONE,
        "attempts": 1,
        "started_at": T0 + timedelta(seconds=1),
        "finished_at": T0 + timedelta(seconds=2, milliseconds=500),
    }
    return handler_run(event, handler, **{**values, **fields})


def dead(event: EventRecord, handler: str = NOTIFY, **fields: Any) -> HandlerRun:
    values = {
        "status": RunStatus.DEAD,
        "attempts": 3,
        "max_attempts": 3,
        "started_at": T0 + timedelta(seconds=40),
        "finished_at": T0 + timedelta(seconds=40, milliseconds=12),
        "last_error": "RuntimeError: notify failed on attempt 3",
        "traceback": TRACE,
    }
    return handler_run(event, handler, **{**values, **fields})


def run_url(run: HandlerRun) -> str:
    return reverse("admin:eventbus_handlerrun_change", args=[run.pk])


def runs_listed(client, **params: str) -> set[UUID]:
    response = client.get(reverse(RUNS), params)
    assert response.status_code == 200
    return {row.pk for row in response.context["cl"].result_list}


def section(content: str, heading: str) -> str:
    """The part of an event's page from ``heading`` to the end of its fieldset."""
    assert heading in content, f"no {heading!r} section"
    return content.split(heading, 1)[1].split("</fieldset>\n</div>", 1)[0]


def readonly_values(html: str) -> dict[str, str]:
    """Each read-only field's value in ``html``, by its label."""
    return dict(
        re.findall(r'<label[^>]*>([^<]*):</label>\s*<div class="readonly">(.*?)</div>', html, re.S)
    )


def test_event_page_lists_its_runs_with_status_attempts_timings_and_traceback(admin_client):
    event = payment()
    record, notify = done(event), dead(event)
    audit = handler_run(event, AUDIT)  # pending, never started
    other = dead(payment())

    content = admin_client.get(change_url(event)).content.decode()

    runs = section(content, "Handlers: durable runs")
    blocks = runs.split('<div class="inline-related has_original"')[1:]
    headings = [re.search(r"<h3>(.*?)</h3>", block, re.S)[1] for block in blocks]
    assert [h.split("</b> ")[1].split(" on ")[0].split(">")[-1] for h in headings] == [
        RECORD,
        NOTIFY,
        AUDIT,
    ]  # in the order they were recorded: subscription order
    for run, heading in zip((record, notify, audit), headings, strict=True):
        assert run_url(run) in heading  # each run's own page
    assert run_url(other) not in runs
    fields = [readonly_values(block) for block in blocks]
    assert [f["Status"] for f in fields] == ["done", "dead", "pending"]
    assert [f["Attempts"] for f in fields] == ["1/5", "3/3", "0/5"]
    text = [{k: re.sub(r"<[^>]+>", "", v) for k, v in f.items()} for f in fields]
    assert text[0]["Started"] == "03/05/2024 12:00:01"
    assert text[0]["Finished (took)"] == "03/05/2024 12:00:02 (1.5 s)"
    assert text[1]["Finished (took)"].endswith("12:00:40 (12 ms)")
    assert text[2]["Started"] == "due 03/05/2024 12:00:00" and text[2]["Finished (took)"] == ""
    assert fields[0]["Last error"] == fields[2]["Last error"] == ""
    # The error, then its traceback folded away, escaped, as preformatted text.
    assert fields[1]["Last error"] == (
        "RuntimeError: notify failed on attempt 3"
        '<details class="eventbus-traceback"><summary>traceback</summary><pre>'
        "Traceback (most recent call last):\n"
        "  File &quot;h.py&quot;, line 3, in &lt;module&gt;\nRuntimeError: &lt;b&gt;</pre></details>"
    )
    assert 'name="_save"' not in content
    assert 'name="handler_runs-MAX_NUM_FORMS" value="0"' in content  # no run to add


def test_event_page_shows_in_process_failures_above_the_runs(admin_client):
    event, quiet = payment(), payment()
    dead(event)
    first = failure(event.pk, handler="shop.handlers.notify", occurred_at=T0, traceback=TRACE)
    failure(event.pk, handler="shop.handlers.mail", error="OSError: smtp down")

    content = admin_client.get(change_url(event)).content.decode()

    failures = section(content, "Handlers: in-process failures")
    assert content.index("Handlers: in-process failures") < content.index("Handlers: durable runs")
    assert '<span title="shop.handlers.notify">notify</span>' in failures
    assert "ValueError: boom" in failures and "OSError: smtp down" in failures
    assert "in &lt;module&gt;" in failures and "<pre>" in failures
    assert reverse("admin:eventbus_handlerfailure_change", args=[first.pk]) in failures
    quiet_page = admin_client.get(change_url(quiet)).content.decode()
    assert "No in-process handler raised on this event." in section(
        quiet_page, "Handlers: in-process failures"
    )


def test_a_viewer_sees_the_handler_sections_only_with_their_view_permissions(client, viewer):
    event = payment()
    dead(event)
    failure(event.pk)

    content = client.get(change_url(event)).content.decode()

    assert "Handlers: durable runs" not in content
    assert "Handlers: in-process failures" not in content
    for codename in ("view_handlerrun", "view_handlerfailure"):
        viewer.user_permissions.add(Permission.objects.get(codename=codename))
    content = client.get(change_url(event)).content.decode()
    assert "RuntimeError: notify failed" in section(content, "Handlers: durable runs")
    assert "ValueError: boom" in section(content, "Handlers: in-process failures")


def test_runs_list_shows_short_columns_and_links_each_run_to_its_event(admin_client):
    event = payment()
    gone = uuid4()  # a run outlives its pruned event
    failed = dead(event)
    handler_run(event, AUDIT, due_at=T0 + timedelta(minutes=5))
    HandlerRun.objects.create(
        id=uuid7(),
        event_id=gone,
        event_type="payment.received",
        handler=RECORD,
        status=RunStatus.DEAD,
        attempts=5,
        max_attempts=5,
        created_at=T0,
        due_at=T0,
        last_error="Event is no longer in the event log (pruned?): nothing to run on. " * 3,
    )

    content = admin_client.get(reverse(RUNS)).content.decode()

    assert (
        f'<a href="{run_url(failed)}"><span title="{NOTIFY}">notify_payment</span></a>' in content
    )
    assert f'<a href="{change_url(event)}" title="{event.pk}">payment.received</a>' in content
    assert f'<span title="{gone}">payment.received</span> (pruned)' in content
    assert reverse("admin:eventbus_eventrecord_change", args=[gone]) not in content
    assert 'dead, <span title="3 of 3 attempts">3/3</span>' in content
    assert 'pending, <span title="0 of 5 attempts">0/5</span>' in content
    assert 'title="finished 2024-03-05 12:00:40.012000+00:00">03/05/2024 12:00:40<' in content
    assert 'title="due 2024-03-05 12:05:00+00:00">03/05/2024 12:05:00<' in content
    summaries = re.findall(r'<td class="field-error_summary">(.*?)</td>', content)
    assert summaries.count("-") == 1  # the pending run has no error
    assert any(re.sub(r"<[^>]+>", "", s).endswith("…") for s in summaries)  # cut at 120
    assert "Traceback" not in content


@pytest.mark.parametrize(
    ("param", "value", "wanted"),
    [
        ("status__exact", "dead", "notify"),  # the dead runs
        ("status__exact", "pending", "audit"),
        ("handler", RECORD, "record"),
        ("event_type", "order.placed", "ship"),
    ],
)
def test_each_runs_filter_narrows_the_list(admin_client, param, value, wanted):
    event = payment()
    runs = {
        "notify": dead(event),
        "audit": handler_run(event, AUDIT),
        "record": done(event),
        "ship": done(make(), "shop.handlers.ship"),
    }

    assert runs_listed(admin_client) == {run.pk for run in runs.values()}
    assert runs_listed(admin_client, **{param: value}) == {runs[wanted].pk}


def test_the_dead_filter_is_a_link_in_the_sidebar(admin_client):
    dead(payment())

    content = admin_client.get(reverse(RUNS)).content.decode()

    by_status = content.split("By status")[1].split("</ul>")[0]
    assert '<a href="?status__exact=dead">dead</a>' in by_status


def test_runs_search_by_event_id_run_id_or_handler(admin_client):
    event, other = payment(), payment()
    notify, audit = dead(event), handler_run(other, AUDIT)

    assert runs_listed(admin_client, q=str(event.pk)) == {notify.pk}
    assert runs_listed(admin_client, q=str(audit.pk).upper()) == {audit.pk}
    assert runs_listed(admin_client, q="AUDIT_pay") == {audit.pk}
    assert runs_listed(admin_client, q="handlers") == {notify.pk, audit.pk}
    assert runs_listed(admin_client, q=str(uuid4())) == set()


def test_runs_can_be_neither_added_changed_nor_deleted(admin_client):
    run = dead(payment())
    add = reverse("admin:eventbus_handlerrun_add")
    delete = reverse("admin:eventbus_handlerrun_delete", args=[run.pk])

    changelist = admin_client.get(reverse(RUNS)).content.decode()
    detail = admin_client.get(run_url(run)).content.decode()

    assert add not in changelist and 'value="delete_selected"' not in changelist
    assert 'name="_save"' not in detail and delete not in detail
    assert "<pre>Traceback (most recent call last):" in detail
    assert "in &lt;module&gt;" in detail
    assert admin_client.get(add).status_code == 403
    assert admin_client.post(run_url(run), {"status": "done"}).status_code == 403
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert HandlerRun.objects.get().status == RunStatus.DEAD


def test_runs_list_queries_do_not_grow_with_rows(admin_client):
    dead(payment())
    admin_client.get(reverse(RUNS))
    with CaptureQueriesContext(connection) as few:
        admin_client.get(reverse(RUNS))
    for _ in range(5):
        event = payment()
        dead(event), done(event)

    with CaptureQueriesContext(connection) as many:
        admin_client.get(reverse(RUNS))

    assert len(many) == len(few)


# -- retrying dead runs --------------------------------------------------------------


def run_retry(client, *runs: HandlerRun):
    return client.post(
        reverse(RUNS),
        {"action": "retry_runs", "index": "0", "_selected_action": [str(r.pk) for r in runs]},
        follow=True,
    )


@pytest.fixture
def run_viewer(client, django_user_model):
    """A logged-in staff user who may view handler runs, and retry nothing."""
    user = django_user_model.objects.create_user("run-viewer", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_handlerrun"))
    client.force_login(user)
    return user


def test_retry_gives_dead_runs_fresh_attempts_and_says_which_were_not_retried(admin_client):
    event = payment()
    notify, record, audit = dead(event), done(event), handler_run(event, AUDIT)
    untouched = dead(payment())

    assert 'value="retry_runs"' in admin_client.get(reverse(RUNS)).content.decode()
    response = run_retry(admin_client, notify, record, audit)

    content = response.content.decode()
    assert "1 dead run will run again." in content
    assert "2 selected runs were not retried: only dead runs are (1 done, 1 pending)." in content
    notify.refresh_from_db()
    assert (notify.status, notify.attempts) == (RunStatus.PENDING, 0)
    assert DBTaskResult.objects.filter(id=notify.task_id).exists()  # enqueued
    for run, status in ((record, RunStatus.DONE), (audit, RunStatus.PENDING)):
        run.refresh_from_db()
        assert run.status == status and not run.task_id
    untouched.refresh_from_db()
    assert untouched.status == RunStatus.DEAD


def test_retry_of_no_dead_run_retries_nothing_and_says_so(admin_client):
    record = done(payment())

    content = run_retry(admin_client, record).content.decode()

    assert "will run again" not in content
    assert "1 selected run was not retried: only dead runs are (1 done)." in content
    assert not DBTaskResult.objects.exists()


def test_staff_with_the_retry_permission_may_retry(client, run_viewer):
    run_viewer.user_permissions.add(Permission.objects.get(codename="retry_handlerrun"))
    notify = dead(payment())

    assert 'value="retry_runs"' in client.get(reverse(RUNS)).content.decode()
    assert "1 dead run will run again." in run_retry(client, notify).content.decode()
    notify.refresh_from_db()
    assert notify.status == RunStatus.PENDING


def test_staff_without_the_retry_permission_neither_see_nor_run_it(client, run_viewer):
    notify = dead(payment())

    page = client.get(reverse(RUNS))
    assert page.status_code == 200 and notify.pk in {r.pk for r in page.context["cl"].result_list}
    assert 'value="retry_runs"' not in page.content.decode()
    response = run_retry(client, notify)

    assert response.status_code == 200
    assert "will run again" not in response.content.decode()
    notify.refresh_from_db()
    assert (notify.status, notify.attempts) == (RunStatus.DEAD, 3)
    assert not DBTaskResult.objects.exists()


# -- in the browser --------------------------------------------------------------------

SCREENSHOT_DIR = Path(__file__).resolve().parent.parent / "test-results"  # gitignored

# For each cell of the list: its text, how many lines it shows, and whether it is clipped.
# Lines below the cell's bottom are hidden (a clamped error): they are not counted.
MEASURE_CELLS = """
() => [...document.querySelectorAll("#result_list tbody td, #result_list tbody th")].map(cell => {
  const range = document.createRange();
  range.selectNodeContents(cell);
  const bottom = cell.getBoundingClientRect().bottom;
  const tops = [...range.getClientRects()]
    .filter(r => r.width > 0 && r.bottom <= bottom + 1)
    .map(r => r.top);
  const lines = tops.sort((a, b) => a - b).filter((top, i, all) => i === 0 || top - all[i - 1] > 4);
  return {
    column: cell.className,
    text: cell.innerText.trim(),
    lines: lines.length,
    clipped: cell.scrollWidth > cell.clientWidth + 1,
  };
})
"""


def demo_like_log() -> None:
    """Rows as a busy project logs them, with the longest values the list must show."""
    project, agent = uuid4(), uuid4()
    start = datetime(2026, 11, 21, 23, 58, 57, 123000, tzinfo=UTC)
    flow = [
        ("triage.finished", "user", None),
        ("ticket.created", "system", None),
        ("ticket.assignee_updated", "system", None),
        ("agent.status_changed", "agent", None),
        ("agent.message", "agent", agent),
    ]
    statuses = [DeliveryStatus.DELIVERED, DeliveryStatus.FAILED, DeliveryStatus.PENDING]
    for n in range(24):
        event_type, actor_type, actor_id = flow[n % len(flow)]
        make(
            type=event_type,
            timestamp=start + timedelta(milliseconds=700 * n),
            project_id=project,
            actor_type=actor_type,
            actor_id=actor_id,
            status=statuses[n % 3],
            attempts=8 if statuses[n % 3] == DeliveryStatus.FAILED else 1,
        )


def open_at_1280(
    user: Any, page: Page, asgi_server_factory: AsgiServerFactory, url: str, screenshot: str
) -> None:
    """Open an admin page as ``user`` in a 1280 x 800 window, and save its screenshot."""
    server = asgi_server_factory(
        env={"EVENTBUS_TEST_DB_NAME": str(connection.settings_dict["NAME"])}
    )
    client = Client()
    client.force_login(user)
    cookie = settings.SESSION_COOKIE_NAME
    page.context.add_cookies(
        [{"name": cookie, "value": client.cookies[cookie].value, "url": server.url}]
    )
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(f"{server.url}{url}")
    page.locator("#content").wait_for()
    SCREENSHOT_DIR.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOT_DIR / screenshot, full_page=True)


def assert_no_overflow(page: Page) -> None:
    """Nothing wider than the window, and the list (if any) within its box."""
    assert page.evaluate(
        "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    )
    table = page.evaluate(
        "() => { const t = document.querySelector('#result_list');"
        " return t && [t.getBoundingClientRect().width, t.parentElement.clientWidth]; }"
    )
    if table:
        assert table[0] <= table[1], f"the table is {table[0]} px wide in {table[1]} px"


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_list_fits_a_1280_px_screen(
    admin_user: Any, chromium_page: Page, asgi_server_factory: AsgiServerFactory
) -> None:
    demo_like_log()
    page = chromium_page
    open_at_1280(
        admin_user, page, asgi_server_factory, reverse(CHANGELIST), "admin-event-log-1280.png"
    )

    assert_no_overflow(page)
    cells = page.evaluate(MEASURE_CELLS)
    assert len(cells) >= 24 * 5
    assert [c for c in cells if c["lines"] > 2 or c["clipped"]] == []
    times = [
        c["text"] for c in cells if "field-timestamp" in c["column"] or "field-when" in c["column"]
    ]
    assert len(times) == 24
    assert all(re.search(r"\b\d\d:\d\d:\d\d$", text) for text in times), times[:3]


def busy_runs() -> EventRecord:
    """Runs of every status, with long handler paths and errors; the last event's."""
    statuses = [RunStatus.DONE, RunStatus.DEAD, RunStatus.PENDING, RunStatus.RUNNING]
    handlers = [RECORD, NOTIFY, AUDIT, "billing.projections.handlers.rebuild_invoice_totals"]
    for n in range(12):
        event = payment(timestamp=T0 + timedelta(seconds=n))
        for handler, status in zip(handlers, statuses[n % 4 :] + statuses[: n % 4], strict=True):
            if status == RunStatus.DEAD:
                dead(event, handler, traceback=TRACE * 40 + "x" * 400)
            elif status == RunStatus.DONE:
                done(event, handler)
            else:
                handler_run(event, handler, status=status, attempts=1, started_at=T0, last_error="")
    return event


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_runs_list_and_an_events_runs_fit_a_1280_px_screen(
    admin_user: Any, chromium_page: Page, asgi_server_factory: AsgiServerFactory
) -> None:
    event = busy_runs()
    page = chromium_page
    open_at_1280(admin_user, page, asgi_server_factory, reverse(RUNS), "admin-runs-1280.png")

    assert_no_overflow(page)
    cells = page.evaluate(MEASURE_CELLS)
    assert len(cells) >= 48 * 5
    assert [c for c in cells if c["lines"] > 2 or c["clipped"]] == []

    page.goto(page.url.split("/admin/")[0] + change_url(event))
    page.locator(".eventbus-traceback summary").first.click()  # the longest traceback, open
    page.screenshot(path=SCREENSHOT_DIR / "admin-event-runs-1280.png", full_page=True)
    assert_no_overflow(page)


def test_the_catalog_page_lists_each_type_with_version_count_schema_and_example(
    admin_client, django_capture_on_commit_callbacks
):
    from eventbus import publish
    from tests.testapp.events import ShopEvent

    for n in range(3):
        publish(ShopEvent.ORDER_PLACED, {"order_id": n, "title": f"order {n}"})
    publish(
        ShopEvent.NOTE_ADDED,
        {"note_id": uuid4(), "text": "hello", "author_email": "secret@example.com"},
    )
    listing = admin_client.get("/admin/eventbus/eventrecord/")
    assert b'href="/admin/eventbus/eventrecord/catalog/"' in listing.content
    page = admin_client.get("/admin/eventbus/eventrecord/catalog/")
    assert page.status_code == 200
    rows = {row["name"]: row for row in page.context["rows"]}
    assert set(rows) >= {"order.placed", "note.added", "payment.received", "metric.sampled"}
    placed = rows["order.placed"]
    assert (placed["count"], placed["version"], placed["model"]) == (3, 1, "OrderPlaced")
    assert json.loads(placed["example"]) == {"order_id": 2, "title": "order 2", "quantity": 1}
    assert json.loads(placed["schema"])["properties"]["order_id"]["type"] == "integer"
    assert "tests.testapp.handlers.remember_order" in [h["name"] for h in placed["handlers"]]
    note = rows["note.added"]
    # Private fields are in neither the schema nor the example.
    assert "author_email" not in note["schema"] and "secret@" not in note["example"]
    assert "private: author_email" in note["flags"]
    payments = rows["payment.received"]
    assert [h["durable"] for h in payments["handlers"]] == [True, True, True]
    assert payments["count"] == 0 and payments["example"] == ""
    assert b"No event of this type in the log yet." in page.content


def test_the_catalog_page_needs_the_view_permission(client, django_user_model):
    staff = django_user_model.objects.create_user("staff", password="x", is_staff=True)
    client.force_login(staff)
    assert client.get("/admin/eventbus/eventrecord/catalog/").status_code == 403
