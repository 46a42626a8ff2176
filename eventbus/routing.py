"""URL routing for the WebSocket consumer, and the secure stack to mount it in."""

from __future__ import annotations

import re
from importlib import import_module
from typing import Any

from channels.auth import get_user
from channels.routing import URLRouter
from channels.security.websocket import WebsocketDenier
from django.http.cookie import parse_cookie
from django.urls import path

from . import conf
from .consumers import EventStreamConsumer

websocket_urlpatterns = [path("ws/events/", EventStreamConsumer.as_asgi())]

_DEFAULT_PORTS = {"http": 80, "https": 443}
# What a browser sends: scheme, host (a name, IPv4 or [IPv6]) and an optional port; no
# user info, path, query or fragment. Anything else is refused without parsing further.
_ORIGIN = re.compile(
    r"(?P<scheme>https?)://(?P<host>[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::(?P<port>[0-9]{1,5}))?"
)
_HOST = re.compile(r"(?P<host>[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::(?P<port>[0-9]{1,5}))?")


def parse_origin(origin: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an ``Origin`` value, or None when it is not one.

    Strict on purpose: ``http://evil.example\\@127.0.0.1`` is not an origin (Python's
    URL parsing reads its host as 127.0.0.1), and ``http://[evil`` must not raise.
    """
    match = _ORIGIN.fullmatch(origin.lower())
    if match is None:
        return None
    scheme = match["scheme"]
    port = int(match["port"]) if match["port"] else _DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        return None
    return scheme, match["host"], port


class OriginValidator:
    """Refuses a handshake (403) unless its ``Origin`` is allowed, compared exactly.

    With ``EVENTBUS["WS_ALLOWED_ORIGINS"]`` set: one of those origins (scheme, host and
    port). Without: an http or https origin whose host is in ``ALLOWED_HOSTS`` (Django's
    rules, ``.example.com`` included) and whose port is the one the client connected to
    (the ``Host`` header's). A missing, ``null`` or malformed origin is refused.
    """

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and not origin_allowed(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)


def origin_allowed(scope: dict[str, Any]) -> bool:
    headers = dict(scope.get("headers") or [])
    try:
        origin = parse_origin(headers.get(b"origin", b"").decode("latin-1"))
    except UnicodeDecodeError:  # pragma: no cover (latin-1 decodes every byte)
        return False
    if origin is None:
        return False
    allowed = conf.get_settings().WS_ALLOWED_ORIGINS
    if allowed is not None:
        return origin in {parse_origin(entry) for entry in allowed}
    from django.conf import settings
    from django.http.request import validate_host

    scheme, host, port = origin
    host_header = _HOST.fullmatch(headers.get(b"host", b"").decode("latin-1").lower())
    if host_header is None:
        return False
    connected_port = int(host_header["port"]) if host_header["port"] else _DEFAULT_PORTS[scheme]
    return port == connected_port and validate_host(host, settings.ALLOWED_HOSTS)


class SessionAuthMiddleware:
    """Channels' ``AuthMiddlewareStack`` (cookies, session, user) in one step, for sockets.

    ``scope["cookies"]``, ``scope["session"]`` (the session store) and ``scope["user"]``
    (``AnonymousUser`` unless the session holds a valid login) as Channels sets them, in
    one copy of the scope and without wrapping ``send``: Channels' stack copies the scope
    three times and wraps ``send`` to save the session on ``http.response.start``, which
    a WebSocket never sends; each socket held those all its life (docs/performance.md).
    A session or user already in the scope is kept, as Channels does.
    """

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if "headers" not in scope:
            raise ValueError(
                "SessionAuthMiddleware was passed a scope without headers: mount it for "
                "WebSocket (or HTTP) connections only."
            )
        cookies: dict[str, str] = {}
        for name, value in scope["headers"]:
            if name == b"cookie":
                cookies = parse_cookie(value.decode("latin1"))
                break
        scope = dict(scope, cookies=cookies)
        if "session" not in scope:
            from django.conf import settings

            store = import_module(settings.SESSION_ENGINE).SessionStore
            scope["session"] = store(cookies.get(settings.SESSION_COOKIE_NAME))
        if "user" not in scope:
            scope["user"] = await get_user(scope)
        return await self.application(scope, receive, send)


def websocket_application(urlpatterns: list[Any] | None = None) -> Any:
    """The consumer behind a strict origin check and session authentication."""
    return OriginValidator(SessionAuthMiddleware(URLRouter(urlpatterns or websocket_urlpatterns)))
