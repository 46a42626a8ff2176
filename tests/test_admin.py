"""The admin, through HTTP: a read-only event log with its chains, re-delivery and failures."""

from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any
from uuid import UUID, uuid4

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from eventbus import admin as eventbus_admin
from eventbus.models import DeliveryStatus, EventRecord, HandlerFailure

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


def test_changelist_lists_events_with_their_columns(admin_client):
    project, actor = uuid4(), uuid4()
    placed = make(project_id=project, actor_type="user", actor_id=actor, attempts=3)
    closed = make(type="order.closed", payload={"order_id": 1, "title": "x"})

    response = admin_client.get(reverse(CHANGELIST))

    assert response.status_code == 200
    content = response.content.decode()
    for record in (placed, closed):
        assert change_url(record) in content
    assert str(project) in content
    assert f"user {actor}" in content
    assert "order.closed" in content
    assert '<td class="field-attempts">3</td>' in content


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


def test_type_filter_offers_the_logged_catalog_types(admin_client):
    content = admin_client.get(reverse(CHANGELIST)).content.decode()

    assert "?type=order.placed" in content
    assert "?type=metric.sampled" not in content  # EventSpec(log=False): never in the log


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
