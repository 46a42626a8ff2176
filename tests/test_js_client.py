"""The JS client (static/eventbus/eventbus.js) in headless Chromium, against real servers.

The page (tests/testapp/templates/testapp/js_client.html) renders what the client hands
it. An init script records every frame the browser sends and receives, so a test can
tell what the server sent from what the client showed. The servers (daphne, or uvicorn)
use the in-memory channel layer, or the suite's own redis-server for the Redis tests.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import uuid4

import pytest
from django.conf import settings
from django.db import connection, connections
from django.test import Client, override_settings
from django.utils import timezone

from eventbus import Event, publish
from eventbus.bus import EventBus
from eventbus.models import DeliveryStatus, EventRecord
from eventbus.relay import Relay
from tests.services import AsgiServer, RedisServer
from tests.testapp.events import ShopEvent
from tests.testapp.models import Membership

if TYPE_CHECKING:
    from playwright.sync_api import Page

    from tests.fixtures_services import AsgiServerFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PROJECT = uuid4()
CHANNEL = EventBus.get_project_channel(PROJECT)
REDIS_LAYER = "channels_redis.core.RedisChannelLayer"
T = TypeVar("T")

RECORD_FRAMES = """
window.received = [];
window.sent = [];
window.socketsOpened = 0;
const NativeWebSocket = window.WebSocket;
window.WebSocket = class extends NativeWebSocket {
  constructor(...args) {
    super(...args);
    window.socketsOpened += 1;
    this.addEventListener("message", (message) => window.received.push(JSON.parse(message.data)));
  }
  send(data) {
    window.sent.push(JSON.parse(data));
    super.send(data);
  }
};
"""


@pytest.fixture
def member(django_user_model: Any) -> Any:
    user = django_user_model.objects.create(username="member")
    Membership.objects.create(user=user, project_id=PROJECT)
    return user


@pytest.fixture
def redis_layer(redis_url: str) -> Iterator[str]:
    """The suite's Redis, which the test process publishes into as the servers read it."""
    layers = {"default": {"BACKEND": REDIS_LAYER, "CONFIG": {"hosts": [redis_url]}}}
    with override_settings(CHANNEL_LAYERS=layers):
        yield redis_url


def start_server(
    factory: AsgiServerFactory,
    redis_url: str | None = None,
    server: str = "daphne",
    **eventbus_settings: Any,
) -> AsgiServer:
    """A server on the test's own database (a file), with EVENTBUS settings added.

    The in-memory channel layer, or Redis at ``redis_url``; warnings go to its log.
    """
    env = {"EVENTBUS_TEST_DB_NAME": str(connection.settings_dict["NAME"]), "EVENTBUS_TEST_LOG": "1"}
    if redis_url is not None:
        env.update(EVENTBUS_TEST_REDIS_URL=redis_url, EVENTBUS_TEST_LAYER=REDIS_LAYER)
    if eventbus_settings:
        env["EVENTBUS_TEST_SETTINGS_OVERRIDE"] = json.dumps(eventbus_settings)
    return factory(env=env, server=server)


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


def watch(page: Page, channel: str, **options: Any) -> None:
    """Subscribe the page's client (``since=``, ``position=``...) and wait for the answer."""
    answers = page.evaluate("() => window.received.length")
    page.evaluate("([channel, options]) => window.watch(channel, options)", [channel, options])
    page.wait_for_function(
        "([channel, before]) => window.received.slice(before).some("
        "  (frame) => frame.channel === channel && frame.type !== 'event')",
        arg=[channel, answers],
        timeout=5_000,
    )


def shown_events(page: Page) -> list[str]:
    return page.locator("#events li").evaluate_all("items => items.map(item => item.dataset.id)")


def shown_positions(page: Page) -> list[int]:
    return [
        int(p)
        for p in page.locator("#events li").evaluate_all(
            "items => items.map(item => item.dataset.position)"
        )
    ]


def wait_for_events(page: Page, count: int, timeout: float = 5_000) -> list[str]:
    page.wait_for_function(
        "count => document.querySelectorAll('#events li').length >= count",
        arg=count,
        timeout=timeout,
    )
    return shown_events(page)


def received(page: Page, frame_type: str) -> list[dict[str, Any]]:
    """The frames of ``frame_type`` the page received, in order."""
    return list(
        page.evaluate("type => window.received.filter(frame => frame.type === type)", frame_type)
    )


def event_ids_received(page: Page) -> list[str]:
    return [str(frame["event"]["id"]) for frame in received(page, "event")]


def post(server: AsgiServer, path: str, **data: str) -> Any:
    request = urllib.request.Request(
        server.url + path, data=urllib.parse.urlencode(data).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def publish_through_server(server: AsgiServer, order_id: int, project: Any = PROJECT) -> str:
    data = {"project_id": str(project), "order_id": str(order_id)}
    return str(post(server, "/js-client/publish/", **data)["id"])


def in_thread(func: Callable[[], T]) -> T:
    """Run ``func`` in a thread of its own, with its own database connection.

    Playwright's sync API leaves its event loop marked as running in the test's thread,
    and publish() and the relay refuse to run inside an event loop.
    """

    def run() -> T:
        try:
            return func()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result(timeout=10)


def publish_here(order_id: int) -> Event[Any]:
    """Publish from the test process: the event is written to the shared log, and handed
    off to the test's channel layer (in memory, unless ``redis_layer`` points it at Redis)."""
    return in_thread(
        lambda: publish(ShopEvent.ORDER_DELETED, {"order_id": order_id}, project_id=PROJECT)
    )


def pending(events: list[Event[Any]]) -> list[str]:
    """The ids of ``events`` still pending in the log (their hand-off failed)."""
    rows = EventRecord.objects.filter(
        id__in=[event.id for event in events], status=DeliveryStatus.PENDING
    )
    found = set(rows.values_list("id", flat=True))
    return [str(event.id) for event in events if event.id in found]


def relay_pending(events: list[Event[Any]]) -> None:
    """Run the relay until ``events`` are delivered (a send may meet a stale connection)."""
    for attempt in range(1, 6):
        if not pending(events):
            return
        now = timezone.now() + timedelta(minutes=attempt)  # every retry is due
        in_thread(lambda: Relay().run_once(now=now))  # noqa: B023  (called at once)
    assert pending(events) == []


def ids(events: list[Event[Any]]) -> list[str]:
    return [str(event.id) for event in events]


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


def test_a_server_restart_resumes_by_position_with_exactly_the_missed_events(
    chromium_page: Page, asgi_server_factory: AsgiServerFactory, member: Any
) -> None:
    """The client comes back with the position and epoch the server gave; the new server
    replays what came after that position, once, then goes on live."""
    server = start_server(asgi_server_factory)
    earlier = publish_here(1)  # before the page: it gives the channel its epoch
    open_page(chromium_page, server, member)
    watch(chromium_page, CHANNEL)
    [first] = received(chromium_page, "subscribed")
    epoch = first["epoch"]
    assert (first["position"], first["replayed"]) == (1, 0)  # it starts after `earlier`
    assert epoch
    live = publish_through_server(server, 2)
    assert wait_for_events(chromium_page, 1) == [live]

    server.stop()
    status = chromium_page.locator("#status")
    status.filter(has_not_text="open").wait_for(timeout=5_000)
    missed = ids([publish_here(3), publish_here(4)])
    server.start()  # the same port

    assert wait_for_events(chromium_page, 3) == [live, *missed]
    status.filter(has_text="open").wait_for(timeout=5_000)
    resubscribe = chromium_page.evaluate(
        "() => window.sent.filter(frame => frame.action === 'subscribe')"
    )[-1]
    assert (resubscribe["position"], resubscribe["epoch"]) == (2, epoch)
    assert "since" not in resubscribe
    again = received(chromium_page, "subscribed")[-1]
    assert (again["position"], again["replayed"], again["epoch"]) == (2, 2, epoch)
    # And live events follow on the new connection.
    fourth = publish_through_server(server, 5)
    assert wait_for_events(chromium_page, 4) == [live, *missed, fourth]
    assert event_ids_received(chromium_page) == [live, *missed, fourth]  # none sent twice
    assert shown_positions(chromium_page) == [2, 3, 4, 5]
    assert str(earlier.id) not in shown_events(chromium_page)
    assert chromium_page.evaluate("channel => window.client.position(channel)", CHANNEL) == {
        "position": 5,
        "epoch": epoch,
    }
    assert chromium_page.text_content("#resets") == ""


@pytest.mark.redis
def test_a_redis_restart_mid_stream_loses_nothing_and_needs_no_reset(
    chromium_page: Page,
    asgi_server_factory: AsgiServerFactory,
    member: Any,
    redis_layer: str,
    redis_server: RedisServer,
) -> None:
    """Redis is killed (SIGKILL) mid-stream and events are published while it is down:
    their hand-off fails and no relay runs, so they reach Redis never. Once Redis is back,
    with nothing new published, the server's fan-out joins its groups again and fills
    the gap from the log: the page gets every event, once, in position order."""
    server = start_server(asgi_server_factory, redis_url=redis_layer, server="uvicorn")
    open_page(chromium_page, server, member)
    watch(chromium_page, CHANNEL)
    before = [publish_here(1), publish_here(2)]
    assert wait_for_events(chromium_page, 2) == ids(before)  # live, through Redis

    redis_server.kill()
    during = [publish_here(order_id) for order_id in (3, 4, 5)]
    assert pending(during) == ids(during)  # in the log, numbered, sent nowhere
    redis_server.start()  # the same port, and empty: the server's group is forgotten

    assert wait_for_events(chromium_page, 5, timeout=10_000) == ids(before + during)
    # The relay now sends them to Redis after all: the repeats are dropped.
    relay_pending(during)
    after = [publish_here(6), publish_here(7)]
    relay_pending(after)  # the first send may have met a connection the restart closed
    everything = ids(before + during + after)
    assert wait_for_events(chromium_page, 7) == everything
    assert shown_positions(chromium_page) == [1, 2, 3, 4, 5, 6, 7]
    chromium_page.wait_for_timeout(300)  # time for a late repeat to show, if one came
    assert event_ids_received(chromium_page) == everything  # the server sent each once
    assert shown_events(chromium_page) == everything
    assert received(chromium_page, "reset") == []
    assert chromium_page.evaluate("() => window.socketsOpened") == 1  # the socket held
    assert chromium_page.text_content("#status") == "open"


def test_too_many_missed_while_away_is_reported_as_a_reset_with_its_position(
    chromium_page: Page, asgi_server_factory: AsgiServerFactory, member: Any
) -> None:
    """More than RESUME_MAX_EVENTS missed while the socket was closed: no replay, but
    onReset with the reason and the position the stream goes on after; then live events."""
    server = start_server(asgi_server_factory, RESUME_MAX_EVENTS=2)
    open_page(chromium_page, server, member)
    watch(chromium_page, CHANNEL)
    first = publish_through_server(server, 1)
    assert wait_for_events(chromium_page, 1) == [first]

    server.stop()
    chromium_page.locator("#status").filter(has_not_text="open").wait_for(timeout=5_000)
    missed = [publish_here(order_id) for order_id in (2, 3, 4)]
    server.start()

    reset = chromium_page.locator("#resets li")
    reset.first.wait_for(timeout=5_000)
    [frame] = received(chromium_page, "reset")
    assert reset.evaluate_all("items => items.map(item => ({...item.dataset}))") == [
        {"channel": CHANNEL, "reason": "too_many_missed", "epoch": frame["epoch"], "position": "4"}
    ]
    assert frame["epoch"]
    later = publish_through_server(server, 5)
    assert wait_for_events(chromium_page, 2) == [first, later]
    assert not set(ids(missed)) & set(event_ids_received(chromium_page))
    assert shown_positions(chromium_page) == [1, 5]
    assert chromium_page.evaluate("channel => window.client.position(channel)", CHANNEL) == {
        "position": 5,
        "epoch": frame["epoch"],
    }


def test_the_client_drops_a_frame_at_or_before_the_position_it_reached(
    chromium_page: Page, asgi_server_factory: AsgiServerFactory, member: Any
) -> None:
    """The server drops repeats already; frames handed to the client itself show that it
    does too: by position, and by id for an event that has no position."""
    server = start_server(asgi_server_factory)
    open_page(chromium_page, server, member)
    watch(chromium_page, CHANNEL)
    real = [publish_through_server(server, order_id) for order_id in (1, 2, 3)]
    assert wait_for_events(chromium_page, 3) == real
    frames = received(chromium_page, "event")

    def inject(*injected: dict[str, Any]) -> None:
        chromium_page.evaluate(
            "frames => frames.forEach(f => window.client._receive(JSON.stringify(f)))",
            list(injected),
        )

    def fake(position: int | None, order_id: int) -> dict[str, Any]:
        event = {**frames[0]["event"], "id": str(uuid4()), "payload": {"order_id": order_id}}
        frame = {"type": "event", "channel": CHANNEL, "event": event}
        return frame if position is None else {**frame, "position": position}

    # A repeat of the newest, an older one, and a different event at an old position.
    inject(frames[2], frames[0], fake(2, 99))
    fourth = publish_through_server(server, 4)
    assert wait_for_events(chromium_page, 4) == [*real, fourth]
    inject(received(chromium_page, "event")[-1])  # the one just shown
    # The next position is taken; an event kept out of the log is taken once by its id.
    ahead, unlogged = fake(5, 5), fake(None, 6)
    inject(ahead, unlogged, unlogged, fake(5, 98))
    assert wait_for_events(chromium_page, 6) == [
        *real,
        fourth,
        ahead["event"]["id"],
        unlogged["event"]["id"],
    ]
    assert chromium_page.locator("#events li").all_text_contents()[-2:] == [
        "order.deleted #5",
        "order.deleted #6",
    ]
    assert (
        chromium_page.evaluate("channel => window.client.position(channel)", CHANNEL)["position"]
        == 5
    )


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
        {"channel": CHANNEL, "reason": "since_unknown", "epoch": "", "position": "0"}
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


def presence_changes(page: Page) -> list[str]:
    return list(page.locator("#presence li").all_text_contents())


def present(page: Page) -> list[str]:
    return sorted(page.locator("#present li").all_text_contents())


def test_presence_snapshot_joins_and_leaves(
    asgi_server_factory: AsgiServerFactory, chromium_browser: Any, django_user_model: Any
) -> None:
    """Two signed-in members: the first page sees the second join, then leave when its
    page closes; the client's presence(channel) follows. Not a member: no presence."""
    ada, bob, eve = (
        django_user_model.objects.create(username=name) for name in ("ada", "bob", "eve")
    )
    for user in (ada, bob):
        Membership.objects.create(user=user, project_id=PROJECT)
    server = start_server(asgi_server_factory, PRESENCE="tests.testapp.presence.presence")
    pages = []
    for user in (ada, bob, eve):
        context = chromium_browser.new_context()
        context.set_default_timeout(10_000)
        page = context.new_page()
        open_page(page, server, user)
        page.wait_for_function("() => document.getElementById('status').textContent === 'open'")
        pages.append(page)
    on_ada, on_bob, on_eve = pages
    watch(on_ada, CHANNEL, presence=True)
    page_sees = "n => document.querySelectorAll('#presence li').length >= n"
    on_ada.wait_for_function(page_sees, arg=1)
    assert present(on_ada) == ["ada"]
    watch(on_bob, CHANNEL, presence=True)
    on_ada.wait_for_function(page_sees, arg=2)
    assert presence_changes(on_ada) == ["snapshot of 1", "bob joined"]
    assert present(on_ada) == ["ada", "bob"]
    on_bob.wait_for_function(page_sees, arg=1)
    assert present(on_bob) == ["ada", "bob"]
    # Not allowed on the channel: refused, and no presence frame ever.
    watch(on_eve, CHANNEL, presence=True)
    assert [f["code"] for f in received(on_eve, "error")] == ["forbidden"]
    on_bob.context.close()
    on_ada.wait_for_function(page_sees, arg=3)
    assert presence_changes(on_ada) == ["snapshot of 1", "bob joined", "bob left"]
    assert present(on_ada) == ["ada"]
    assert received(on_eve, "presence") == []
    sent = [f for f in on_ada.evaluate("() => window.sent") if f["action"] == "subscribe"]
    assert sent[0]["presence"] is True
    for page in (on_ada, on_eve):
        page.context.close()
