"""End to end: real ASGI server processes, a real Redis, and WebSocket clients over TCP.

Events are published from the test process (``apublish`` or ``ChannelLayerSink``), or
through a server's own view, into the same Redis the servers use: the test's
``CHANNEL_LAYERS`` is pointed at it, with the servers' layer (``RedisChannelLayer``). The servers share the test database
(``EVENTBUS_TEST_DB_NAME``), where each test commits its users, memberships and sessions.
"""

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from uuid import uuid4

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client, override_settings
from django.utils import timezone
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from eventbus import apublish, get_event_dispatcher
from eventbus.bus import EventBus
from eventbus.sinks import ChannelLayerSink
from eventbus.wire import public_json
from tests.fixtures_services import AsgiServerFactory
from tests.services import AsgiServer, RedisServer
from tests.testapp.events import ShopEvent
from tests.testapp.models import Membership

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]

LAYER = "channels_redis.core.RedisChannelLayer"
TIMEOUT = 10.0


@pytest.fixture
def redis_layer(redis_url: str) -> Iterator[str]:
    """The URL of the servers' Redis, which the test process publishes into too.

    The hosts carry no socket_timeout, as in the README: eventbus supplies the one that
    redis-py 8 needs (eventbus/_redis.py).
    """
    layers = {"default": {"BACKEND": LAYER, "CONFIG": {"hosts": [redis_url]}}}
    eventbus = {
        "CATALOGS": ["tests.testapp.events.EVENT_PAYLOAD_MAP"],
        "SINK": "eventbus.sinks.ChannelLayerSink",
    }
    with override_settings(CHANNEL_LAYERS=layers, EVENTBUS=eventbus):
        yield redis_url


def server_env(redis_url: str, **eventbus: Any) -> dict[str, str]:
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "EVENTBUS_TEST_REDIS_URL": redis_url,
        "EVENTBUS_TEST_LAYER": LAYER,
        "EVENTBUS_TEST_DB_NAME": str(connection.settings_dict["NAME"]),
    }
    if eventbus:
        env["EVENTBUS_TEST_SETTINGS_OVERRIDE"] = json.dumps(eventbus)
    return env


def member_session(project_id: Any) -> str:
    """A signed-in member of ``project_id``: the value of its ``sessionid`` cookie."""
    user = get_user_model().objects.create(username=f"member-{uuid4().hex[:8]}")
    Membership.objects.create(user=user, project_id=project_id)
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


class Ws:
    """A JSON WebSocket client with bounded waits."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn

    @classmethod
    async def open(cls, server: AsgiServer, session: str | None = None, **options: Any) -> "Ws":
        headers = {"Cookie": f"sessionid={session}"} if session else None
        conn = await connect(
            f"{server.ws_url}/ws/events/",
            origin=options.pop("origin", server.url),
            additional_headers=headers,
            open_timeout=TIMEOUT,
            close_timeout=2,
            compression=None,  # bytes on the wire are the frames' bytes
            **options,
        )
        return cls(conn)

    async def send(self, frame: Any) -> None:
        await self.conn.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.conn.recv(), timeout))

    async def subscribe(self, channel: str) -> None:
        await self.send({"action": "subscribe", "channel": channel})
        frame = await self.recv()
        assert (frame["type"], frame["channel"], frame["replayed"]) == ("subscribed", channel, 0)

    async def close(self) -> None:
        await self.conn.close()


@pytest.fixture
def project() -> Any:
    return uuid4()


# -- two servers, one Redis ----------------------------------------------------------------


async def start_two_servers(
    factory: AsgiServerFactory, redis_url: str
) -> tuple[AsgiServer, AsgiServer]:
    """Two daphne processes on the same Redis and database, started side by side."""
    env = server_env(redis_url)
    server_a, server_b = await asyncio.gather(
        asyncio.to_thread(factory, env=env), asyncio.to_thread(factory, env=env)
    )
    return server_a, server_b


async def test_an_event_reaches_clients_on_both_servers(
    asgi_server_factory: AsgiServerFactory, redis_layer: str, project
):
    """Two daphne processes, one Redis: a member's client on each gets the same event.

    The event is published by the test process (log row, hand-off, ChannelLayerSink)
    into the servers' Redis; the next test publishes through server A itself.
    """
    server_a, server_b = await start_two_servers(asgi_server_factory, redis_layer)
    session = await sync_to_async(member_session)(project)
    channel = EventBus.get_project_channel(project)
    on_a, on_b = await Ws.open(server_a, session), await Ws.open(server_b, session)
    try:
        await on_a.subscribe(channel)
        await on_b.subscribe(channel)
        event = await apublish(
            ShopEvent.NOTE_ADDED,
            {"note_id": uuid4(), "text": "hi", "author_email": "secret@example.com"},
            project_id=project,
        )
        for client in (on_b, on_a):
            frame = await client.recv()
            assert (frame["type"], frame["channel"]) == ("event", channel)
            assert frame["event"]["id"] == str(event.id)
            assert frame["event"]["payload"] == {
                "note_id": str(event.payload.note_id),
                "text": "hi",
            }
    finally:
        await on_a.close()
        await on_b.close()


async def test_an_event_published_by_one_server_reaches_a_socket_on_the_other(
    asgi_server_factory: AsgiServerFactory, redis_layer: str, project
):
    """Server A publishes (its view commits, its relay hands off); server B's socket gets it."""
    import urllib.parse
    import urllib.request

    server_a, server_b = await start_two_servers(asgi_server_factory, redis_layer)
    session = await sync_to_async(member_session)(project)
    channel = EventBus.get_project_channel(project)
    on_b = await Ws.open(server_b, session)
    try:
        await on_b.subscribe(channel)

        def post_to_a() -> dict[str, Any]:
            data = urllib.parse.urlencode({"order_id": 42, "project_id": str(project)}).encode()
            with urllib.request.urlopen(
                f"{server_a.url}/js-client/publish/", data, timeout=TIMEOUT
            ) as r:
                return json.loads(r.read())

        published = await asyncio.to_thread(post_to_a)
        frame = await on_b.recv()
        assert frame["type"] == "event" and frame["event"]["id"] == published["id"]
        assert frame["event"]["payload"] == {"order_id": 42}
        assert "Traceback" not in server_a.log_text() + server_b.log_text()
    finally:
        await on_b.close()


# -- projects keyed by integers or UUIDs -------------------------------------------------------


def tenant_with_member(kind: str) -> tuple[Any, Any, str]:
    """A project keyed by an integer (a Team) or a UUID, a member, and the member's session."""
    from tests.testapp.models import Team

    user = get_user_model().objects.create(username=f"member-{uuid4().hex[:8]}")
    if kind == "integer":
        team = Team.objects.create(name="Ops")
        team.members.add(user)
        project: Any = team.pk
    else:
        project = uuid4()
        Membership.objects.create(user=user, project_id=project)
    client = Client()
    client.force_login(user)
    return project, user.pk, client.cookies["sessionid"].value


@pytest.mark.parametrize("kind", ["integer", "uuid"])
async def test_a_project_keyed_by_its_own_keys_goes_publish_log_relay_websocket(
    asgi_server_factory: AsgiServerFactory, redis_layer: str, kind: str
):
    """publish(project_id=team.pk, actor_id=user.pk) -> log row -> relay worker -> Redis ->
    a member's socket; then a resume with ``since`` replays from the log by the same key."""
    from eventbus.models import EventRecord
    from eventbus.relay import Relay

    server = asgi_server_factory(env=server_env(redis_layer))
    project, user_pk, session = await sync_to_async(tenant_with_member)(kind)
    channel = EventBus.get_project_channel(project)
    assert channel == f"eventbus.project.{project if kind == 'integer' else project.hex}"
    client = await Ws.open(server, session)
    try:
        await client.subscribe(channel)
        with override_settings(EVENTBUS={**django_settings.EVENTBUS, "HAND_OFF_ON_COMMIT": False}):
            first = await apublish(
                ShopEvent.ORDER_DELETED,
                {"order_id": 1},
                project_id=project,
                actor_id=user_pk,
                actor_type="user",
            )
            second = await apublish(ShopEvent.ORDER_DELETED, {"order_id": 2}, project_id=project)
        row = await sync_to_async(EventRecord.objects.get)(id=first.id)
        assert (row.project_id, row.actor_id) == (str(project), str(user_pk))
        report = await sync_to_async(Relay().run_once)(timezone.now() + timedelta(minutes=1))
        assert report.delivered == [first.id, second.id]
        frames = [await client.recv(), await client.recv()]
        assert [f["event"]["id"] for f in frames] == [str(first.id), str(second.id)]
        wire = frames[0]["event"]
        assert (wire["project_id"], wire["actor_id"]) == (
            project if kind == "integer" else str(project),
            user_pk,
        )
    finally:
        await client.close()
    resumed = await Ws.open(server, session)
    try:
        await resumed.send({"action": "subscribe", "channel": channel, "since": str(first.id)})
        frame = await resumed.recv()
        assert (frame["type"], frame["replayed"], frame["position"]) == ("subscribed", 1, 1)
        replayed = await resumed.recv()
        assert replayed["event"]["id"] == str(second.id)
    finally:
        await resumed.close()


# -- origins, bad input ----------------------------------------------------------------------


@pytest.fixture
def daphne(asgi_server_factory: AsgiServerFactory, redis_layer: str) -> AsgiServer:
    return asgi_server_factory(env=server_env(redis_layer))


async def test_only_our_own_origin_may_open_a_socket(daphne: AsgiServer):
    refused = [
        None,  # no Origin header
        "null",
        "http://evil.example",
        "http://127.0.0.1.evil.net",
        f"http://127.0.0.1.evil.net:{daphne.port}",
        "http://evil127.0.0.1",
        f"http://127.0.0.1@evil.example:{daphne.port}",
    ]
    for origin in refused:
        with pytest.raises(InvalidStatus) as refusal:
            await Ws.open(daphne, origin=origin)
        assert refusal.value.response.status_code == 403, origin
    for origin in (daphne.url, f"http://localhost:{daphne.port}"):
        client = await Ws.open(daphne, origin=origin)
        await client.send({"action": "ping"})
        assert await client.recv() == {"type": "pong"}
        await client.close()


async def test_bad_frames_get_errors_and_hurt_nobody(daphne: AsgiServer, project):
    session = await sync_to_async(member_session)(project)
    channel = EventBus.get_project_channel(project)
    good, bad = await Ws.open(daphne, session), await Ws.open(daphne, session)
    try:
        await good.subscribe(channel)
        await bad.send("this is not JSON")
        assert (await bad.recv())["code"] == "invalid_json"
        await bad.send(b"\x00\x01\x02")
        assert (await bad.recv())["code"] == "binary_not_supported"
        await bad.send(json.dumps({"action": "ping", "pad": "x" * 64_000}))
        assert (await bad.recv())["code"] == "frame_too_large"
        await bad.send({"action": "ping"})
        assert await bad.recv() == {"type": "pong"}

        event = await apublish(ShopEvent.ORDER_DELETED, {"order_id": 1}, project_id=project)
        assert (await good.recv())["event"]["id"] == str(event.id)
        await good.send({"action": "ping"})
        assert await good.recv() == {"type": "pong"}
    finally:
        await good.close()
        await bad.close()
    await asyncio.sleep(0.2)  # let the server log the disconnects
    assert "Traceback" not in daphne.log_text()


# -- a client that stops reading ---------------------------------------------------------------

# 10,000 events of ~2.3 KB: the ~23 MB of 20,000 events of 1 KB in half the time (the
# server's per-message cost, ~1.5 ms on 2 cores, sets the pace).
SLOW_EVENTS = 10_000
TITLE = "x" * 2000
# Events published but not yet read by the good client. RedisChannelLayer keeps at most
# 100 messages (its `capacity`) queued per server process and drops the rest.
IN_FLIGHT = 80
BATCH = 20
# Growth allowed to the server's RSS while the stalled client is sent the ~23 MB burst.
# The kernel's socket buffers (not in RSS) take ~3.5 MB of it; a server that buffers
# without bound (daphne does) grows by ~20 MB here.
RSS_BOUND_MB = 10.0


def rss_mb(server: AsgiServer) -> float:
    assert server._proc is not None
    with open(f"/proc/{server._proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS line")


def small_receive_buffer_socket(server: AsgiServer) -> socket.socket:
    # A fixed receive buffer turns off autotuning (up to 32 MB here), so the server
    # feels the stall after a few MB instead of after the whole burst.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.settimeout(TIMEOUT)
    sock.connect((server.host, server.port))
    sock.setblocking(False)
    return sock


def group_size(server: RedisServer, channel: str) -> int:
    client = server.client()
    try:
        return int(client.zcard(f"asgi:group:{channel}"))
    finally:
        client.close()


async def test_a_client_that_stops_reading_is_closed_and_memory_stays_bounded(
    asgi_server_factory: AsgiServerFactory, redis_layer: str, redis_server: RedisServer, project
):
    server = await asyncio.to_thread(
        asgi_server_factory,
        env=server_env(redis_layer, WS_SEND_TIMEOUT=1),
        server="uvicorn",  # applies backpressure: a send waits while the client does not read
    )
    session = await sync_to_async(member_session)(project)
    channel = EventBus.get_project_channel(project)
    good = await Ws.open(server, session)
    slow = await Ws.open(server, session, sock=small_receive_buffer_socket(server), max_size=None)
    await good.subscribe(channel)
    await slow.subscribe(channel)
    build = get_event_dispatcher().build
    sink = ChannelLayerSink()
    received: list[str] = []
    progress = asyncio.Event()

    async def read_good() -> None:
        while True:
            received.append((await good.recv(timeout=60))["event"]["id"])
            progress.set()

    async def until_received(count: int) -> None:
        while len(received) < count:
            progress.clear()
            await asyncio.wait_for(progress.wait(), TIMEOUT)

    async def send(events: list[Any], already: int) -> float:
        """Publish at the good client's pace; return the peak RSS seen."""
        peak = 0.0
        for start in range(0, len(events), BATCH):
            batch = events[start : start + BATCH]
            await until_received(already + start + len(batch) - IN_FLIGHT)
            await sink.send(batch)
            peak = max(peak, rss_mb(server))
        await until_received(already + len(events))
        return peak

    def events(first: int, count: int) -> list[Any]:
        return [
            build(ShopEvent.ORDER_PLACED, {"order_id": n, "title": TITLE}, project_id=project)
            for n in range(first, first + count)
        ]

    reader = asyncio.create_task(read_good())
    try:
        # Warm up: both clients read 200 events, so the baseline has steady-state buffers.
        warm = events(0, 200)
        await send(warm, 0)
        for _ in warm:
            await slow.recv()
        baseline = rss_mb(server)

        # The slow client stops reading; the burst goes on at the good client's pace.
        burst = events(len(warm), SLOW_EVENTS)
        started = time.monotonic()
        peak = await asyncio.wait_for(send(burst, len(warm)), 120)
        burst_seconds = time.monotonic() - started
        after = rss_mb(server)
        assert received == [str(e.id) for e in warm + burst]  # all of them, in order

        # The stalled client finds what the kernel buffered for it, then the 4408 close.
        stalled_frames, close_code = 0, None
        try:
            while stalled_frames <= SLOW_EVENTS:
                await slow.recv()
                stalled_frames += 1
        except ConnectionClosed as closed:
            close_code = closed.rcvd.code if closed.rcvd else None
        except TimeoutError:
            pass  # still open after TIMEOUT seconds of silence: asserted below
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await good.close()
        await slow.close()
    # The server process is in the group while any of its sockets is: once the good
    # client has gone too, the process must leave, so the stalled one left as well.
    for _ in range(50):
        members = group_size(redis_server, channel)
        if members == 0:
            break
        await asyncio.sleep(0.1)

    frame_kb = len(public_json(burst[0])) / 1024
    print(
        f"\nslow client: {SLOW_EVENTS} events of {frame_kb:.1f} KB in {burst_seconds:.1f} s "
        f"({SLOW_EVENTS / burst_seconds:.0f}/s); server RSS baseline {baseline:.1f} MB, "
        f"peak {peak:.1f} MB (+{peak - baseline:.1f}), after {after:.1f} MB; the stalled "
        f"client had {stalled_frames} frames buffered, then close code {close_code}"
    )
    assert peak - baseline < RSS_BOUND_MB
    assert close_code == 4408
    assert stalled_frames < SLOW_EVENTS // 2
    assert members == 0
    assert "Traceback" not in server.log_text()


async def test_sockets_that_vanish_mid_stream_leave_their_groups(
    asgi_server_factory: AsgiServerFactory, redis_layer: str, redis_server: RedisServer, project
):
    """Clients that drop their TCP connection while events stream leave no group behind.

    The server leaves the group only when the last of its 20 sockets has gone.
    """
    server = await asyncio.to_thread(
        asgi_server_factory, env=server_env(redis_layer), server="uvicorn"
    )
    session = await sync_to_async(member_session)(project)
    channel = EventBus.get_project_channel(project)
    clients = [await Ws.open(server, session) for _ in range(20)]
    for client in clients:
        await client.subscribe(channel)
    # One member per server process, however many of its sockets subscribed.
    assert group_size(redis_server, channel) == 1
    build = get_event_dispatcher().build
    sink = ChannelLayerSink()
    for start in range(0, 1000, 50):
        await sink.send(
            [
                build(ShopEvent.ORDER_PLACED, {"order_id": n, "title": TITLE}, project_id=project)
                for n in range(start, start + 50)
            ]
        )
        if start == 100:
            for client in clients:  # gone without a close handshake
                client.conn.transport.abort()
    for _ in range(100):
        if group_size(redis_server, channel) == 0:
            break
        await asyncio.sleep(0.1)
    assert group_size(redis_server, channel) == 0
    assert "Traceback" not in server.log_text()
