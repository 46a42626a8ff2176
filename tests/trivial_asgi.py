"""A raw ASGI app with no Django, so the service fixtures can be tested on their own."""

import os


async def application(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] != "http":  # daphne sends no lifespan; other servers may
        return
    greeting = os.environ.get("TRIVIAL_ASGI_GREETING", "hello")
    body = f"{greeting} from {scope['path']}".encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
