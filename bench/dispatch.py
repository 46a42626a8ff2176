"""Dispatch: ``publish`` to 10 sync handlers vs validation + ``Signal.send_robust`` by hand.

Both sides validate the same dict into the same payload model and call the same
10 receivers; they run interleaved in rounds so machine noise hits both alike.
Run: ``python -m bench.dispatch``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from bench._setup import setup_django

HANDLERS = 10
TARGET_RATIO = 0.7


def _time_per_call(func: Callable[[], Any], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        func()
    return (time.perf_counter() - start) / calls


def run(rounds: int = 7, calls: int = 5_000, max_seconds: float = 60.0) -> dict[str, Any]:
    setup_django()
    from django.dispatch import Signal
    from django.test.utils import override_settings

    from eventbus import get_event_dispatcher
    from tests.testapp.events import OrderPlaced, ShopEvent

    data = {"order_id": 7, "title": "Desk", "quantity": 2}
    sink: list[Any] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        sink.append(kwargs)

    def handler(event: Any) -> None:
        sink.append(event)

    receivers = [lambda sender, _r=receiver, **kw: _r(sender, **kw) for _ in range(HANDLERS)]
    signal = Signal()
    for fn in receivers:
        signal.connect(fn, weak=False)

    def by_hand() -> None:
        payload = OrderPlaced.model_validate(data)
        signal.send_robust(sender=ShopEvent.ORDER_PLACED, payload=payload)

    dispatcher = get_event_dispatcher()
    with override_settings(EVENTBUS={"CATALOGS": [], "LOG": False}), dispatcher.isolated():
        for _ in range(HANDLERS):
            dispatcher.subscribe(ShopEvent.ORDER_PLACED, lambda e, _h=handler: _h(e))

        def with_eventbus() -> None:
            dispatcher.publish(ShopEvent.ORDER_PLACED, data)

        hand_times, bus_times = [], []
        deadline = time.monotonic() + max_seconds
        for _ in range(rounds):
            hand_times.append(_time_per_call(by_hand, calls))
            bus_times.append(_time_per_call(with_eventbus, calls))
            sink.clear()
            if time.monotonic() > deadline:
                break
    hand, bus = statistics.median(hand_times), statistics.median(bus_times)
    return {
        "name": "dispatch",
        "what": f"publish to {HANDLERS} sync handlers vs Pydantic + Signal.send_robust",
        "eventbus_us": round(bus * 1e6, 2),
        "anchor_us": round(hand * 1e6, 2),
        "ratio": round(bus / hand, 3),
        "target_ratio": TARGET_RATIO,
        "met": bus / hand <= TARGET_RATIO,
        "rounds": len(hand_times),
        "calls_per_round": calls,
    }


if __name__ == "__main__":
    result = run(*(int(arg) for arg in sys.argv[1:3]))
    print(json.dumps(result, indent=2))
