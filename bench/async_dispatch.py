"""2. Async dispatch: ``apublish`` to 10 async handlers vs doing the same by hand.

Two anchors: awaiting the 10 handlers in turn, and starting a task per handler.
Each side validates the payload and runs every handler to completion for each
event; eventbus's time includes draining its fire-and-forget tasks.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench._harness import interleaved, main, row
from bench._setup import setup_django

HANDLERS = 10


def run(quick: bool = False) -> list[dict[str, Any]]:
    setup_django()
    from django.test.utils import override_settings

    from eventbus import get_event_dispatcher
    from tests.testapp.events import OrderPlaced, ShopEvent

    data = {"order_id": 7, "title": "Desk", "quantity": 2}
    done = 0

    async def handler(event: Any) -> None:
        nonlocal done
        done += 1

    handlers = [handler] * HANDLERS
    events = 100 if quick else 2_000
    dispatcher = get_event_dispatcher()

    async def with_eventbus() -> None:
        for _ in range(events):
            await dispatcher.apublish(ShopEvent.ORDER_PLACED, data)
        await dispatcher.drain()

    async def awaited_by_hand() -> None:
        for _ in range(events):
            payload = OrderPlaced.model_validate(data)
            for h in handlers:
                await h(payload)

    async def task_per_handler() -> None:
        pending: list[asyncio.Task[None]] = []
        for _ in range(events):
            payload = OrderPlaced.model_validate(data)
            pending.extend(asyncio.create_task(h(payload)) for h in handlers)
        await asyncio.gather(*pending)

    loop = asyncio.new_event_loop()

    def measure(case: Any) -> Any:
        def sample(_: int) -> float:
            start = time.perf_counter()
            loop.run_until_complete(case())
            return (time.perf_counter() - start) / events

        return sample

    with (
        override_settings(EVENTBUS={"CATALOGS": [], "LOG": False, "SINK": None}),
        dispatcher.isolated(),
    ):
        for n in range(HANDLERS):
            dispatcher.subscribe(ShopEvent.ORDER_PLACED, _make_handler(n, handler))
        medians = interleaved(
            {
                "eventbus": measure(with_eventbus),
                "awaited": measure(awaited_by_hand),
                "tasks": measure(task_per_handler),
            },
            rounds=3 if quick else 7,
            max_seconds=90,
        )
    loop.close()
    assert done > 0
    return [
        row(
            "async_dispatch",
            f"apublish to {HANDLERS} async handlers (log off)",
            eventbus=medians["eventbus"] * 1e6,
            anchor=medians["awaited"] * 1e6,
            anchor_name="validate + await each handler",
            unit="µs/event",
        ),
        row(
            "async_dispatch",
            f"apublish to {HANDLERS} async handlers (log off)",
            eventbus=medians["eventbus"] * 1e6,
            anchor=medians["tasks"] * 1e6,
            anchor_name="validate + a task per handler",
            unit="µs/event",
        ),
    ]


def _make_handler(n: int, target: Any) -> Any:
    # Ten distinct coroutine functions: subscribing one function twice is a no-op.
    async def handler(event: Any) -> None:
        await target(event)

    handler.__qualname__ = f"bench_handler_{n}"
    return handler


if __name__ == "__main__":
    main(run)
