import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402  (needs Django set up first)

from eventbus.routing import websocket_application  # noqa: E402

# /ws/events/ behind the origin check and session authentication (docs/protocol.md).
application = ProtocolTypeRouter({"http": django_asgi_app, "websocket": websocket_application()})
