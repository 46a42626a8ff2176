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
