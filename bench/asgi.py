"""bench.e2e's server: the test suite's ASGI app, plus the hand-written anchor at /ws/plain/.

Both consumers sit behind the same stack (origin check, session authentication), so
the anchor pays the same connection costs as eventbus.
"""

from tests.asgi import django_asgi_app  # noqa: I001  (first: it sets Django up)
from channels.routing import ProtocolTypeRouter
from django.urls import path

from bench.plain_consumer import PlainGroupConsumer
from eventbus.routing import websocket_application, websocket_urlpatterns

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": websocket_application(
            [*websocket_urlpatterns, path("ws/plain/", PlainGroupConsumer.as_asgi())]
        ),
    }
)
