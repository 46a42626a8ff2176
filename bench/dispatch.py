"""1. Dispatch: ``publish`` (log off) to 10 sync handlers vs doing the same by hand.

By hand: Pydantic validation of the payload, then Django's ``Signal.send_robust`` to 10
receivers. Both sides validate the same dict into the same model and call the same
10 receivers, taking turns round by round.
"""

from __future__ import annotations

from typing import Any

from bench._harness import interleaved, main, per_call_seconds, row
from bench._setup import setup_django

HANDLERS = 10
TARGET = 0.7


def run(quick: bool = False) -> list[dict[str, Any]]:
    setup_django()
    from django.dispatch import Signal
    from django.test.utils import override_settings

    from eventbus import get_event_dispatcher
    from tests.testapp.events import OrderPlaced, ShopEvent

    data = {"order_id": 7, "title": "Desk", "quantity": 2}
    sink: list[Any] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        sink.append(kwargs)

    signal = Signal()
    for _ in range(HANDLERS):
        signal.connect(lambda sender, **kw: receiver(sender, **kw), weak=False)

    def by_hand() -> None:
        payload = OrderPlaced.model_validate(data)
        signal.send_robust(sender=ShopEvent.ORDER_PLACED, payload=payload)

    dispatcher = get_event_dispatcher()
    calls = 200 if quick else 5_000
    with (
        override_settings(EVENTBUS={"CATALOGS": [], "LOG": False, "SINK": None}),
        dispatcher.isolated(),
    ):
        for _ in range(HANDLERS):
            dispatcher.subscribe(ShopEvent.ORDER_PLACED, lambda e: sink.append(e))

        def with_eventbus() -> None:
            dispatcher.publish(ShopEvent.ORDER_PLACED, data)

        def measure(func: Any) -> Any:
            def sample(_: int) -> float:
                seconds = per_call_seconds(func, calls)
                sink.clear()
                return seconds

            return sample

        medians = interleaved(
            {"eventbus": measure(with_eventbus), "anchor": measure(by_hand)},
            rounds=3 if quick else 9,
            max_seconds=60,
        )
    ratio = medians["eventbus"] / medians["anchor"]
    return [
        row(
            "dispatch",
            f"publish (log off) to {HANDLERS} sync handlers",
            eventbus=medians["eventbus"] * 1e6,
            anchor=medians["anchor"] * 1e6,
            anchor_name="Pydantic validate + Signal.send_robust",
            unit="µs/event",
            target=f"≤ {TARGET}×",
            met=ratio <= TARGET,
        )
    ]


if __name__ == "__main__":
    main(run)
