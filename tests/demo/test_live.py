"""The demo's live page (/live/) and its authorization hook.

Run with the demo's settings (``--ds=project.settings``). The browser tests serve the
demo with ``daphne project.asgi:application`` on the in-memory channel layer, as
scripts/demo.sh does: the flow runs in the server process, which also streams it.
"""

from __future__ import annotations

import io
import re
import subprocess
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.core.management import call_command
from django.db import connection, transaction
from django.test import Client
from django.utils import timezone

from eventbus.bus import EventBus
from eventbus.envelope import uuid7
from eventbus.models import EventRecord
from eventbus.streams import assign_positions, heads
from project.demo import views
from project.demo.authorization import may_subscribe
from project.demo.models import Agent, Project
from tests.demo.workers import worker_process

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

    from tests.fixtures_services import AsgiServerFactory
    from tests.services import AsgiServer

# The flow of a ticket that is not urgent (the live page leaves "urgent" unchecked).
FLOW = [
    "triage.finished",
    "ticket.created",
    "ticket.status_updated",
    "ticket.assignee_updated",
    "agent.status_changed",
    "agent.message",
]
SCREENSHOT = "/tmp/eventbus-demo-live.png"


@pytest.fixture
def demo(db: None) -> dict[str, Project]:
    """The demo's data. Browser tests request it before Chromium: demo_setup publishes, and
    publish() refuses to run in the thread where Playwright keeps its event loop."""
    call_command("demo_setup", stdout=io.StringIO())
    return {project.name: project for project in Project.objects.all()}


def user(username: str) -> Any:
    return get_user_model().objects.get(username=username)


# -- the authorization hook ----------------------------------------------------------


def test_members_may_watch_their_projects_and_agents(demo: dict[str, Project]) -> None:
    apollo, borealis = demo["Apollo"], demo["Borealis"]
    alice = user("alice")
    assert may_subscribe(alice, EventBus.get_project_channel(apollo.pk))
    assert may_subscribe(alice, EventBus.get_agent_channel(apollo.agents.first().pk))
    assert not may_subscribe(alice, EventBus.get_project_channel(borealis.pk))
    assert not may_subscribe(alice, EventBus.get_agent_channel(borealis.agents.first().pk))


@pytest.mark.parametrize(
    "channel",
    [
        "eventbus.project.not-a-uuid",
        "eventbus.ticket.{hex}",  # a kind of channel the bus does not make
        "eventbus.project.{dashed}",  # not the bus's spelling of the name
        "eventbus.project.{unknown}",
    ],
)
def test_everything_else_is_refused(demo: dict[str, Project], channel: str) -> None:
    apollo = demo["Apollo"]
    channel = channel.format(hex=apollo.pk.hex, dashed=apollo.pk, unknown=uuid4().hex)
    assert not may_subscribe(user("alice"), channel)


def test_anonymous_users_may_watch_nothing(demo: dict[str, Project]) -> None:
    assert not may_subscribe(AnonymousUser(), EventBus.get_project_channel(demo["Apollo"].pk))


def test_removing_a_member_ends_their_access(demo: dict[str, Project]) -> None:
    apollo = demo["Apollo"]
    channel = EventBus.get_project_channel(apollo.pk)
    assert may_subscribe(user("alice"), channel)
    apollo.members.remove(user("alice"))
    assert not may_subscribe(user("alice"), channel)


# -- the views -----------------------------------------------------------------------


def test_live_page_lists_the_members_projects(demo: dict[str, Project], client: Client) -> None:
    assert client.get("/live/").status_code == 302  # login required
    client.force_login(user("alice"))
    response = client.get("/live/")
    assert response.status_code == 200
    assert response.context["projects"] == [
        {
            "id": str(demo["Apollo"].pk),
            "name": "Apollo",
            "channel": EventBus.get_project_channel(demo["Apollo"].pk),
            "flow_url": f"/projects/{demo['Apollo'].pk}/flow/",
            # Setup's events wait for a commit that this test never makes: no event yet.
            "resume": {"position": 0, "epoch": ""},
        }
    ]
    assert b'from "/static/eventbus/eventbus.js"' in response.content
    assert b'href="/live/"' in client.get("/").content


def logged(project: Project | None) -> EventRecord:
    """An event in the log, committed but not yet numbered (the relay has not claimed it)."""
    event_id = uuid7()
    return EventRecord.objects.create(
        id=event_id,
        type="agent.terminated",
        timestamp=timezone.now(),
        project_id=project.pk if project else None,
        payload={"agent_id": str(uuid4()), "reason": "test"},
        correlation_id=event_id,
    )


def numbered(project: Project) -> int:
    """An event of ``project`` in the log, at the next position on its channel: that one."""
    channel = EventBus.get_project_channel(project.pk)
    record = logged(project)
    with transaction.atomic():
        return assign_positions([(record.pk, [channel])])[record.pk][channel]


def epoch_of(project: Project) -> str:
    channel = EventBus.get_project_channel(project.pk)
    return heads([channel])[channel].epoch


def test_the_resume_point_is_a_few_positions_back_on_the_projects_channel(
    demo: dict[str, Project], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(views, "RECENT_EVENTS", 2)
    apollo, borealis = demo["Apollo"], demo["Borealis"]
    # No event on its channel yet: from the start, so nothing before the page is missed.
    assert views.resume_point(apollo.pk) == {"position": 0, "epoch": ""}
    assert numbered(apollo) == 1
    epoch = epoch_of(apollo)
    assert epoch
    assert views.resume_point(apollo.pk) == {"position": 0, "epoch": epoch}  # the first too
    assert numbered(apollo) == 2
    assert views.resume_point(apollo.pk) == {"position": 0, "epoch": epoch}
    numbered(borealis)
    logged(None)
    logged(apollo)  # committed, not numbered yet: it comes live
    assert numbered(apollo) == 3
    # Positions 2 and 3 are replayed: the newest two.
    assert views.resume_point(apollo.pk) == {"position": 1, "epoch": epoch}
    assert views.resume_point(borealis.pk) == {"position": 0, "epoch": epoch_of(borealis)}


def test_only_a_members_projects_get_a_resume_point(
    demo: dict[str, Project], client: Client
) -> None:
    apollo, borealis = demo["Apollo"], demo["Borealis"]
    numbered(apollo)
    numbered(borealis)
    client.force_login(user("alice"))
    content = client.get(f"/live/?project={borealis.pk}").content.decode()
    assert f'data-position="0" data-epoch="{epoch_of(apollo)}"' in content
    assert content.count("data-position=") == 1  # not for Borealis, which alice may not watch
    assert epoch_of(borealis) not in content


def test_flow_answers_json_when_asked(
    demo: dict[str, Project], client: Client, django_capture_on_commit_callbacks: Any
) -> None:
    client.force_login(user("alice"))
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            f"/projects/{demo['Apollo'].pk}/flow/", HTTP_ACCEPT="application/json"
        )
    assert response.status_code == 200
    assert response.json()["type"] == "triage.finished"


# -- in the browser ------------------------------------------------------------------


def start_demo(factory: AsgiServerFactory) -> AsgiServer:
    return factory(
        app="project.asgi:application",
        env={
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "EVENTBUS_TEST_DB_NAME": str(connection.settings_dict["NAME"]),
        },
    )


@pytest.fixture
def demo_worker(demo: dict[str, Project]) -> Iterator[subprocess.Popen[bytes]]:
    """The demo's task worker, as scripts/demo.sh starts it: it opens the flow's tickets.

    Its events reach the server's sockets from the log (the in-memory layer does not
    cross processes), within the fan-out's refresh: so flows are waited for longer.
    """
    with worker_process() as process:
        yield process


def sign_in(page: Page, server: AsgiServer, username: str) -> None:
    """Sign ``username`` in: a session cookie in the page's browser context."""
    client = Client()
    client.force_login(user(username))
    cookie = settings.SESSION_COOKIE_NAME
    page.context.add_cookies(
        [{"name": cookie, "value": client.cookies[cookie].value, "url": server.url}]
    )


def open_live(
    page: Page, server: AsgiServer, username: str, query: str = "", state: str = "open"
) -> None:
    """Sign ``username`` in (a session cookie), open /live/ and wait for the badge's ``state``."""
    sign_in(page, server, username)
    page.goto(f"{server.url}/live/{query}")
    page.locator(f"#status[data-state={state}]").wait_for(timeout=5_000)


def shown_types(page: Page) -> list[str]:
    """Event types on the page, top to bottom."""
    rows = page.locator("#events tr[data-type]")
    return rows.evaluate_all("rows => rows.map(row => row.dataset.type)")


def wait_for_rows(page: Page, count: int, timeout: float = 5_000) -> list[str]:
    page.wait_for_function(
        "count => document.querySelectorAll('#events tr[data-type]').length >= count",
        arg=count,
        timeout=timeout,
    )
    return shown_types(page)


def run_flow_and_wait(page: Page) -> list[str]:
    """Run the flow; the types of the events it published, as the page shows them.

    Rows are ordered by event id, and the page may still be catching up on the project's
    earlier events (its resume from the first) when the flow starts: those land above the
    flow's rows, whenever they arrive. So the flow's rows are those with an id above one
    made just before the click, not those after the rows counted then.
    """
    after = str(uuid7())
    page.click("#run-flow")
    # The worker polls every 0.5 s, and the server reads the log every 5 s.
    page.wait_for_function(
        """([after, count]) => [...document.querySelectorAll('#events tr[data-type]')]
            .filter((row) => row.dataset.id > after).length >= count""",
        arg=[after, len(FLOW)],
        timeout=15_000,
    )
    rows = page.locator("#events tr[data-type]")
    return rows.evaluate_all(
        "(rows, after) => rows.filter((row) => row.dataset.id > after).map((row) => row.dataset.type)",
        after,
    )


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_a_member_sees_the_flow_live(
    demo: dict[str, Project],
    demo_worker: subprocess.Popen[bytes],
    chromium_page: Page,
    asgi_server_factory: AsgiServerFactory,
) -> None:
    server = start_demo(asgi_server_factory)
    chromium_page.set_viewport_size({"width": 1100, "height": 620})
    open_live(chromium_page, server, "alice")
    assert chromium_page.locator("#project option").all_text_contents() == ["Apollo"]
    assert chromium_page.text_content("#status") == "live"

    assert run_flow_and_wait(chromium_page) == FLOW
    newest = chromium_page.locator("#events tr").last
    agent = Agent.objects.get(project=demo["Apollo"], status="working")
    assert newest.locator(".actor").text_content() == f"agent {agent.name}"
    assert "Picked up" in newest.locator(".summary").text_content()
    assignment = chromium_page.locator("#events tr[data-type='ticket.assignee_updated']")
    assert assignment.locator(".summary").text_content() == f"assignee: none → {agent.name}"
    assert chromium_page.locator("#notices li").count() == 0
    chromium_page.screenshot(path=SCREENSHOT)


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_a_non_member_cannot_watch_another_project(
    demo: dict[str, Project],
    demo_worker: subprocess.Popen[bytes],
    chromium_page: Page,
    asgi_server_factory: AsgiServerFactory,
) -> None:
    apollo = demo["Apollo"]
    server = start_demo(asgi_server_factory)
    bob = chromium_page  # a member of Borealis only
    open_live(bob, server, "bob", f"?project={apollo.pk}", state="refused")
    assert bob.text_content("#notices li.error").startswith("forbidden:")
    assert bob.text_content("#status") == "refused"  # not a green "live"
    assert bob.text_content("#events") == "You may not watch this project."  # not "run the flow"
    assert bob.is_disabled("#run-flow")

    alice = chromium_page.context.browser.new_context().new_page()  # a member of Apollo
    try:
        open_live(alice, server, "alice", f"?project={apollo.pk}")
        assert run_flow_and_wait(alice) == FLOW
    finally:
        alice.context.close()
    # None of Apollo's events reached Bob, and the page still says why.
    assert bob.text_content("#status") == "refused"
    assert shown_types(bob) == []
    # His own project streams on the same socket: the refusal was for Apollo only.
    bob.select_option("#project", label="Borealis")
    bob.locator("#status[data-state=open]").wait_for()
    assert bob.text_content("#status") == "live"
    assert wait_for_rows(bob, 3) == ["agent.spawned"] * 3  # Borealis's setup, resumed
    assert run_flow_and_wait(bob) == FLOW


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_a_reload_shows_the_projects_recent_events_in_order(
    demo: dict[str, Project],
    demo_worker: subprocess.Popen[bytes],
    chromium_page: Page,
    asgi_server_factory: AsgiServerFactory,
) -> None:
    server = start_demo(asgi_server_factory)
    open_live(chromium_page, server, "alice")
    setup = wait_for_rows(chromium_page, 3)  # the agents' spawns, from the project's first
    assert setup == ["agent.spawned"] * 3
    assert run_flow_and_wait(chromium_page) == FLOW
    assert run_flow_and_wait(chromium_page) == FLOW
    ids = chromium_page.locator("#events tr").evaluate_all("rows => rows.map(r => r.dataset.id)")

    chromium_page.reload()
    assert wait_for_rows(chromium_page, len(ids)) == [*setup, *FLOW, *FLOW]
    reloaded = chromium_page.locator("#events tr")
    assert reloaded.evaluate_all("rows => rows.map(r => r.dataset.id)") == ids
    # Fewer than RECENT_EVENTS: every event of the project, its very first included.
    logged_ids = EventRecord.objects.filter(project_id=demo["Apollo"].pk).values_list("id")
    assert sorted(ids) == sorted(str(event_id) for (event_id,) in logged_ids)
    assert ids == sorted(ids)  # ids are UUIDv7: their order is the order events were made
    assert chromium_page.text_content("#status") == "live"
    assert chromium_page.locator("#notices li").count() == 0
    # A third flow joins below the replayed ones, and nothing shows twice.
    assert run_flow_and_wait(chromium_page) == FLOW
    assert len(set(reloaded.evaluate_all("rows => rows.map(r => r.dataset.id)"))) == len(ids) + 6


def requests_logged(server: AsgiServer) -> list[tuple[str, int]]:
    """(path, status) of each HTTP request in the server's access log."""
    return [
        (path, int(status))
        for path, status in re.findall(r'"GET (\S+)" (\d{3}) ', server.log_text())
    ]


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_no_page_requests_a_missing_favicon(
    demo: dict[str, Project], chromium_browser: Browser, asgi_server_factory: AsgiServerFactory
) -> None:
    """Browsers ask each site for an icon; a 404 for it lands in the log of every page.

    Chromium fetches icons outside the page (Playwright does not see the request) and
    remembers them per profile: each page gets a fresh context and the server's log tells.
    """
    server = start_demo(asgi_server_factory)
    pages = [
        ("", "/accounts/login/"),
        ("alice", "/live/"),
        ("alice", "/"),
        ("admin", "/admin/"),
        ("admin", "/admin/eventbus/eventrecord/"),
    ]

    def icon_requests() -> int:
        return len([path for path, _ in requests_logged(server) if "favicon" in path])

    not_found: list[str] = []
    silent: list[str] = []  # pages for which Chromium asked for no icon
    for username, path in pages:
        context = chromium_browser.new_context()
        try:
            page = context.new_page()
            page.on("response", lambda r: not_found.append(r.url) if r.status == 404 else None)
            asked = icon_requests()
            if username:
                sign_in(page, server, username)
            page.goto(f"{server.url}{path}")
            deadline = time.monotonic() + 5
            while icon_requests() == asked and time.monotonic() < deadline:
                page.wait_for_timeout(50)
            if icon_requests() == asked:
                silent.append(path)
        finally:
            context.close()
    assert [(path, s) for path, s in requests_logged(server) if s == 404] == []
    assert not_found == []
    assert silent == []  # else this test proved nothing for those pages
