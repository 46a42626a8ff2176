"""Tasks that start eagerly where asyncio can (Python 3.12+).

An eager task runs its coroutine at once, up to its first real wait: one that finishes
without waiting (a handler that returns, a WebSocket send with room in the buffer)
never costs a trip through the event loop. On 3.11 it is an ordinary task.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

EAGER = sys.version_info >= (3, 12)


def start_task(coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    loop = asyncio.get_running_loop()
    if EAGER:
        return asyncio.Task(coroutine, loop=loop, eager_start=True)  # type: ignore[call-arg]
    return loop.create_task(coroutine)
