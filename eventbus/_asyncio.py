"""Background tasks: started eagerly where asyncio can, and kept alive until they finish.

An eager task (Python 3.12+) runs its coroutine at once, up to its first real wait: one
that finishes without waiting (a handler that returns, a WebSocket send with room in
the buffer) never costs a trip through the event loop. On 3.11 it is an ordinary task.
The event loop keeps only weak references to tasks, so a task nobody holds can vanish
mid-run: :class:`TaskSet` holds them until they are done.
"""

from __future__ import annotations

import asyncio
import sys
import weakref
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

EAGER = sys.version_info >= (3, 12)


class PerLoopAndLayer(Generic[T]):
    """One object per running event loop and channel layer, made on first use.

    Per loop: a process may run several loops (tests, ``async_to_sync``), and an object
    holding tasks or queues works in one loop only. Per layer: a project may have
    several. A layer whose id is reused by a new one gets a new object."""

    def __init__(self, factory: Callable[[Any], T]) -> None:
        self._factory = factory
        self._loops: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[int, tuple[Any, T]]
        ] = weakref.WeakKeyDictionary()

    def get(self, layer: Any) -> T:
        per_loop = self._loops.setdefault(asyncio.get_running_loop(), {})
        found = per_loop.get(id(layer))
        if found is None or found[0] is not layer:
            found = per_loop[id(layer)] = (layer, self._factory(layer))
        return found[1]


def in_event_loop() -> bool:
    """Whether this thread is running an event loop (so it must not block)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def start_task(coroutine: Coroutine[Any, Any, T], *, eager: bool = True) -> asyncio.Task[T]:
    loop = asyncio.get_running_loop()
    if eager and EAGER:
        return asyncio.Task(coroutine, loop=loop, eager_start=True)  # type: ignore[call-arg]
    return loop.create_task(coroutine)


class TaskSet:
    """Tasks started in the background, each held until it is done."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(
        self, coroutine: Coroutine[Any, Any, Any], *, eager: bool = True
    ) -> asyncio.Task[Any]:
        task = start_task(coroutine, eager=eager)
        if not task.done():
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return task

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(list(self._tasks))

    def __len__(self) -> int:
        return sum(1 for task in self._tasks if not task.done())
