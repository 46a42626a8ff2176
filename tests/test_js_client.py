"""The JS client (static/eventbus/eventbus.js) in headless Chromium, against a real daphne.

The page (tests/testapp/templates/testapp/js_client.html) renders what the client hands
it. An init script records every frame the browser receives, so a test can tell what
the server sent from what the client showed.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import pytest
from django.conf import settings
from django.db import connection, connections
from django.test import Client

from eventbus import Event, publish
from eventbus.bus import EventBus
from tests.services import AsgiServer
from tests.testapp.events import ShopEvent
from tests.testapp.models import Membership

if TYPE_CHECKING:
    from playwright.sync_api import Page

    from tests.fixtures_services import AsgiServerFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PROJECT = uuid4()
CHANNEL = EventBus.get_project_channel(PROJECT)

RECORD_FRAMES = """
window.received = [];
window.socketsOpened = 0;
const NativeWebSocket = window.WebSocket;
window.WebSocket = class extends NativeWebSocket {
  constructor(...args) {
    super(...args);
    window.socketsOpened += 1;
    this.addEventListener("message", (message) => window.received.push(JSON.parse(message.data)));
  }
};
"""


@pytest.fixture
def member(django_user_model: Any) -> Any:
    user = django_user_model.objects.create(username="member")
    Membership.objects.create(user=user, project_id=PROJECT)
    return user


def start_server(factory: AsgiServerFactory, **eventbus_settings: Any) -> AsgiServer:
    """daphne on the test's own database (a file), with EVENTBUS settings added."""
    env = {"EVENTBUS_TEST_DB_NAME": str(connection.settings_dict["NAME"])}
    if eventbus_settings:
        env["EVENTBUS_TEST_SETTINGS_OVERRIDE"] = json.dumps(eventbus_settings)
    return factory(env=env)


def open_page(page: Page, server: AsgiServer, user: Any = None) -> None:
    """Open the test page, signed in as ``user`` (a session cookie) or anonymous."""
    if user is not None:
        client = Client()
        client.force_login(user)
        cookie = settings.SESSION_COOKIE_NAME
        page.context.add_cookies(
            [{"name": cookie, "value": client.cookies[cookie].value, "url": server.url}]
        )
    page.add_init_script(RECORD_FRAMES)
    page.goto(f"{server.url}/js-client/")


def watch(page: Page, channel: str, since: str | None = None) -> None:
    """Subscribe the page's client and wait for the server's answer."""
    answers = page.evaluate("() => window.received.length")
    page.evaluate("([channel, since]) => window.watch(channel, {since})", [channel, since])
    page.wait_for_function(
        "([channel, before]) => window.received.slice(before).some("
        "  (frame) => frame.channel === channel && frame.type !== 'event')",
        arg=[channel, answers],
        timeout=5_000,
    )


def shown_events(page: Page) -> list[str]:
    return page.locator("#events li").evaluate_all("items => items.map(item => item.dataset.id)")


def wait_for_events(page: Page, count: int) -> list[str]:
    page.wait_for_function(
        "count => document.querySelectorAll('#events li').length >= count",
        arg=count,
        timeout=5_000,
    )
    return shown_events(page)


def post(server: AsgiServer, path: str, **data: str) -> Any:
    request = urllib.request.Request(
        server.url + path, data=urllib.parse.urlencode(data).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def publish_through_server(server: AsgiServer, order_id: int, project: Any = PROJECT) -> str:
    data = {"project_id": str(project), "order_id": str(order_id)}
    return str(post(server, "/js-client/publish/", **data)["id"])


def publish_here(order_id: int) -> Event[Any]:
    """Publish from the test process: the event is written to the shared log.

    In a thread of its own: Playwright's sync API leaves its event loop marked as running
    in the test's thread, and publish() refuses to run inside an event loop.
    """

    def run() -> Event[Any]:
        try:
            return publish(ShopEvent.ORDER_DELETED, {"order_id": order_id}, project_id=PROJECT)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result(timeout=10)


def test_events_appear_once_even_when_relayed_twice(
    chromium_page: Page, asgi_server_factory: AsgiServerFactory, member: Any
) -> None:
    """A re-delivery carries the event's position again: the server's socket, which
    stands past it, drops it, so the page never shows it twice."""
    server = start_server(asgi_server_factory)
    open_page(chromium_page, server, member)
    watch(chromium_page, CHANNEL)
    ids = [publish_through_server(server, order_id) for order_id in (1, 2, 3)]
    assert wait_for_events(chromium_page, 3) == ids
    positions = chromium_page.evaluate(
        "() => window.received.filter(f => f.type === 'event').map(f => f.position)"
    )
    assert positions == [1, 2, 3]

    assert post(server, "/js-client/redeliver/", id=ids[0]) == {"delivered": [ids[0]]}
    later = publish_through_server(server, 4)
    assert wait_for_events(chromium_page, 4) == [*ids, later]
    count = chromium_page.evaluate(
        "id => window.received.filter(frame => frame.event?.id === id).length", ids[0]
    )
    assert count == 1
    assert chromium_page.locator("#events li").all_text_contents() == [
        "order.deleted #1",
        "order.deleted #2",
        "order.deleted #3",
        "order.deleted #4",
    ]
    assert chromium_page.text_content("#errors") == ""


def test_reconnects_after_a_restart_and_replays_what_it_missed(
    chromium_page: Page, asgi_server_factory: AsgiServerFactory, member: Any
) -> None:
    server = start_server(asgi_server_factory)
    open_page(chromium_page, server, member)
    watch(chromium_page, CHANNEL)
    first = publish_through_server(server, 1)
    assert wait_for_events(chromium_page, 1) == [first]

    server.stop()
    status = chromium_page.locator("#status")
    status.filter(has_not_text="open").wait_for(timeout=5_000)
    missed = [str(publish_here(order_id).id) for order_id in (2, 3)]
    server.start()  # the same port

    assert wait_for_events(chromium_page, 3) == [first, *missed]
    status.filter(has_text="open").wait_for(timeout=5_000)
    # They came from the log: the second subscribe asked `since` the first event.
    subscribed = chromium_page.evaluate(
        "() => window.received.filter(frame => frame.type === 'subscribed')"
    )
    assert [frame["replayed"] for frame in subscribed] == [0, 2]
    # And live events follow on the new connection.
    fourth = publish_through_server(server, 4)
    assert wait_for_events(chromium_page, 4) == [first, *missed, fourth]


def test_reset_and_forbidden_are_surfaced(
    chromium_page: Page, asgi_server_factory: AsgiServerFactory, member: Any
) -> None:
    other_project = uuid4()
    other_channel = EventBus.get_project_channel(other_project)
    server = start_server(asgi_server_factory)
    open_page(chromium_page, server, member)

    watch(chromium_page, CHANNEL, since=str(uuid4()))  # an id the log never had
    reset = chromium_page.locator("#resets li")
    reset.first.wait_for(timeout=5_000)
    assert reset.evaluate_all("items => items.map(item => ({...item.dataset}))") == [
        {"channel": CHANNEL, "reason": "since_unknown"}
    ]

    watch(chromium_page, other_channel)
    errors = chromium_page.locator("#errors li")
    errors.first.wait_for(timeout=5_000)
    assert errors.evaluate_all("items => items.map(item => ({...item.dataset}))") == [
        {"channel": other_channel, "code": "forbidden"}
    ]

    # Live events follow the reset; the forbidden channel gets none.
    publish_through_server(server, 1, project=other_project)
    own = publish_through_server(server, 2)
    assert wait_for_events(chromium_page, 1) == [own]
    assert chromium_page.text_content("#status") == "open"


def test_signed_out_stops_reconnecting(
    chromium_page: Page, asgi_server_factory: AsgiServerFactory
) -> None:
    # Without a hook, an anonymous socket is closed with 4401 at once.
    server = start_server(asgi_server_factory, AUTHORIZE=None)
    open_page(chromium_page, server)
    chromium_page.locator("#status").filter(has_text="signed_out").wait_for(timeout=5_000)
    chromium_page.wait_for_timeout(1_000)  # longer than the page's longest reconnect delay
    assert chromium_page.evaluate("() => window.socketsOpened") == 1
    assert chromium_page.text_content("#status") == "signed_out"
