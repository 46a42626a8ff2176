"""The secure stack's strict origin check (``eventbus.routing.OriginValidator``)."""

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser
from django.test import override_settings

from eventbus.consumers import EventStreamConsumer
from eventbus.routing import OriginValidator, parse_origin

pytestmark = pytest.mark.django_db(transaction=True)

HOST = b"127.0.0.1:8000"

REFUSED = [
    None,
    "null",
    "",
    "http://evil.example",
    "http://evil.example\\@127.0.0.1:8000",  # urlparse reads the host as 127.0.0.1
    "http://evil.example\\@127.0.0.1",
    "http://[evil",  # made channels' validator raise (a 500)
    "http://[evil:8000",
    "http://127.0.0.1@evil.example:8000",
    "http://127.0.0.1:8000@evil.example",
    "http://127.0.0.1.evil.net:8000",
    "http://127.0.0.1:8001",  # another port
    "http://127.0.0.1",  # port 80, not 8000
    "ftp://127.0.0.1:8000",
    "http://127.0.0.1:8000/",
    "http://127.0.0.1:8000/path",
    "http://127.0.0.1:8000?q",
    "http://127.0.0.1:99999",
    " http://127.0.0.1:8000",
    "http://127.0.0.1:8000\n",
    "http://\u0131.example:8000",
]
ALLOWED = ["http://127.0.0.1:8000", "https://127.0.0.1:8000", "http://LOCALHOST:8000"]


async def handshake(origin: str | None, host: bytes = HOST) -> bool:
    headers = [(b"host", host)]
    if origin is not None:
        headers.append((b"origin", origin.encode("utf-8")))
    communicator = WebsocketCommunicator(
        OriginValidator(EventStreamConsumer.as_asgi()), "/ws/events/", headers=headers
    )
    communicator.scope["user"] = AnonymousUser()
    connected, _ = await communicator.connect(timeout=5)
    await communicator.disconnect()
    return connected


@pytest.mark.parametrize("origin", REFUSED)
async def test_refused_origins(origin):
    assert not await handshake(origin)


@pytest.mark.parametrize("origin", ALLOWED)
async def test_allowed_hosts_on_the_connected_port(origin):
    assert await handshake(origin)


async def test_a_missing_host_header_is_refused():
    assert not await handshake("http://127.0.0.1:8000", host=b"")


@override_settings(EVENTBUS={"WS_ALLOWED_ORIGINS": ["https://app.example.com"]})
@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://app.example.com", True),
        ("https://app.example.com:443", True),
        ("http://app.example.com", False),
        ("https://app.example.com:8443", False),
        ("https://evil.app.example.com", False),
        ("http://127.0.0.1:8000", False),  # the list replaces ALLOWED_HOSTS
    ],
)
async def test_an_explicit_list_is_compared_exactly(origin, allowed):
    assert await handshake(origin) is allowed


def test_parse_origin():
    assert parse_origin("HTTPS://Example.COM") == ("https", "example.com", 443)
    assert parse_origin("http://[::1]:8000") == ("http", "[::1]", 8000)
    assert parse_origin("http://[evil") is None


# -- the session and the user (eventbus.routing.SessionAuthMiddleware) -------------------


class ScopeConsumer:
    """An ASGI app that accepts and remembers the scope and the send it was given."""

    def __init__(self) -> None:
        self.scope: dict = {}
        self.send = None

    async def __call__(self, scope, receive, send):
        self.scope, self.send = scope, send
        await receive()
        await send({"type": "websocket.accept"})
        await receive()


async def open_behind_the_stack(cookie: str | None) -> ScopeConsumer:
    from django.urls import path

    from eventbus.routing import websocket_application

    app = ScopeConsumer()
    headers = [(b"host", HOST), (b"origin", b"http://127.0.0.1:8000")]
    if cookie is not None:
        headers.append((b"cookie", cookie.encode()))
    communicator = WebsocketCommunicator(
        websocket_application([path("ws/scope/", app)]), "/ws/scope/", headers=headers
    )
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    assert app.send == communicator.output_queue.put  # not wrapped on the way
    await communicator.disconnect()
    return app


async def test_a_signed_in_session_gives_its_user_in_one_scope(django_user_model):
    from asgiref.sync import sync_to_async
    from django.test import Client

    def sign_in():
        user = django_user_model.objects.create(username="member")
        http = Client()
        http.force_login(user)
        return user, http.cookies["sessionid"].value

    user, key = await sync_to_async(sign_in)()
    app = await open_behind_the_stack(f"theme=dark; sessionid={key}")
    assert app.scope["user"] == user
    assert app.scope["session"].session_key == key
    assert app.scope["cookies"] == {"theme": "dark", "sessionid": key}


@pytest.mark.parametrize("cookie", [None, "sessionid=not-a-session"])
async def test_without_a_valid_session_the_user_is_anonymous(cookie):
    app = await open_behind_the_stack(cookie)
    assert app.scope["user"].is_anonymous


async def test_a_scope_without_headers_is_refused_by_name():
    from eventbus.routing import SessionAuthMiddleware

    with pytest.raises(ValueError, match="SessionAuthMiddleware was passed a scope without"):
        await SessionAuthMiddleware(ScopeConsumer())({"type": "websocket"}, None, None)
