"""URL routing for the WebSocket consumer, and the secure stack to mount it in."""

from __future__ import annotations

from typing import Any

from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.urls import path

from .consumers import EventStreamConsumer

websocket_urlpatterns = [path("ws/events/", EventStreamConsumer.as_asgi())]


def websocket_application(urlpatterns: list[Any] | None = None) -> Any:
    """The consumer behind an origin check (ALLOWED_HOSTS) and session authentication."""
    return AllowedHostsOriginValidator(
        AuthMiddlewareStack(URLRouter(urlpatterns or websocket_urlpatterns))
    )
