"""The test suite's ASGI app, telling each WebSocket client which worker process took it.

The accept carries ``x-eventbus-worker: <pid>``, so a client of ``uvicorn --workers N``
can count how the sockets spread over the workers sharing the port.
"""

import os
from typing import Any

from tests.asgi import application as suite_application

WORKER_HEADER = b"x-eventbus-worker"


async def application(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "websocket":
        return await suite_application(scope, receive, send)
    pid = str(os.getpid()).encode()

    async def send_with_pid(message: Any) -> None:
        if message["type"] == "websocket.accept":
            message = {**message, "headers": [*message.get("headers", []), (WORKER_HEADER, pid)]}
        await send(message)

    return await suite_application(scope, receive, send_with_pid)
