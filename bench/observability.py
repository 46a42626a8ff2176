"""8. The cost of monitoring: dispatch and logged publish with metrics and tracing on vs off.

The anchor is eventbus itself with both off (what ``METRICS``/``TRACING`` = False, or the
extras not installed, give: the dispatcher holds no meter and no tracer). "On" is
prometheus-client counting and an OpenTelemetry SDK ``TracerProvider``, each publish
made inside a trace its sampler dropped (a request sampled out: eventbus joins traces,
so there it looks at the current span and makes none). A further row publishes inside
a recorded span, every span recorded (the SDK's batch processor, into an exporter that
drops them): there the SDK's own cost per span dominates, so the row also gives, as the
limit, the anchor plus the same number of bare SDK spans made by hand. Each case takes
turns with the others, round by round, in one process.
"""

from __future__ import annotations

import gc
import os
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import Any

from bench._harness import interleaved, main, per_call_seconds, row

HANDLERS = 10
TARGET = 1.15


def run(quick: bool = False, db: str = "sqlite") -> list[dict[str, Any]]:
    if db == "postgres":
        os.environ["EVENTBUS_TEST_DB"] = "postgres"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from django.db import connection, transaction
    from django.test.utils import override_settings, setup_databases, teardown_databases
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased

    from eventbus import get_event_dispatcher, metrics, tracing
    from eventbus.models import EventRecord
    from tests.testapp.events import ShopEvent

    class Dropped(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    meter = metrics.load()
    assert meter is not None, "the benchmark needs prometheus-client"
    unsampled = tracing.Tracing(TracerProvider(sampler=ParentBased(ALWAYS_OFF)))
    recording_provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))
    recording_provider.add_span_processor(BatchSpanProcessor(Dropped()))
    recorded = tracing.Tracing(recording_provider)
    bare_tracer = recording_provider.get_tracer("bench")

    dispatcher = get_event_dispatcher()
    wired = dispatcher.stages
    sampled_out = trace.NonRecordingSpan(
        trace.SpanContext(0x5EED, 0xF00D, is_remote=True, trace_flags=trace.TraceFlags(0))
    )

    def configure(meter_on: bool, spans: tracing.Tracing | None) -> AbstractContextManager[Any]:
        """Wire the case; the trace its publishes run in."""
        # Every case starts alike: no spans of the last one still being exported, and no
        # garbage of it left for this one's collections.
        recording_provider.force_flush()
        gc.collect()
        dispatcher.stages = replace(wired, metrics=meter if meter_on else None, tracing=spans)
        metrics.set_metrics(meter if meter_on else None)
        tracing.set_tracing(spans)
        if spans is recorded:
            return bare_tracer.start_as_current_span("request")
        if spans is unsampled:
            return trace.use_span(sampled_out)
        return nullcontext()

    cases = {
        "off": (False, None),
        "on": (True, unsampled),
        "recorded": (True, recorded),
    }
    data = {"order_id": 7, "title": "Desk", "quantity": 2}
    sink: list[Any] = []
    rounds = 3 if quick else 9

    # 1. Dispatch: publish (log off) to 10 sync handlers.
    calls = 200 if quick else 5_000
    with (
        override_settings(EVENTBUS={"CATALOGS": [], "LOG": False, "SINK": None}),
        dispatcher.isolated(),
    ):
        for _ in range(HANDLERS):
            dispatcher.subscribe(ShopEvent.ORDER_PLACED, lambda e: sink.append(e))

        def dispatch_case(meter_on: bool, spans: tracing.Tracing | None) -> Any:
            def sample(_: int) -> float:
                sink.clear()
                with configure(meter_on, spans):
                    seconds = per_call_seconds(
                        lambda: dispatcher.publish(ShopEvent.ORDER_PLACED, data), calls
                    )
                sink.clear()
                return seconds

            return sample

        def bare_spans(_: int) -> float:
            # The anchor's work plus what the SDK costs for the spans a recorded event
            # makes (publish, and one per handler), by hand.
            configure(False, None)
            sink.clear()

            def once() -> None:
                with bare_tracer.start_as_current_span("publish"):
                    dispatcher.publish(ShopEvent.ORDER_PLACED, data)
                for _ in range(HANDLERS):
                    with bare_tracer.start_as_current_span("handle"):
                        pass

            seconds = per_call_seconds(once, calls)
            sink.clear()
            return seconds

        dispatch = interleaved(
            {
                **{name: dispatch_case(*case) for name, case in cases.items()},
                "bare_spans": bare_spans,
            },
            rounds=rounds,
            max_seconds=90,
        )

    # 2. Logged publish: the log on, inside a transaction.
    batch = 50 if quick else 1_000
    databases = setup_databases(verbosity=0, interactive=False)
    try:
        with (
            override_settings(EVENTBUS={"CATALOGS": [], "SINK": None}),
            dispatcher.isolated(),
        ):

            def logged_case(meter_on: bool, spans: tracing.Tracing | None) -> Any:
                def sample(_: int) -> float:
                    EventRecord.objects.all().delete()
                    with configure(meter_on, spans):
                        start = time.perf_counter()
                        with transaction.atomic():
                            for _ in range(batch):
                                dispatcher.publish(ShopEvent.ORDER_PLACED, data)
                        return (time.perf_counter() - start) / batch

                return sample

            def logged_bare_spans(_: int) -> float:
                configure(False, None)
                EventRecord.objects.all().delete()
                start = time.perf_counter()
                with transaction.atomic():
                    for _ in range(batch):
                        with (
                            bare_tracer.start_as_current_span("publish"),
                            bare_tracer.start_as_current_span("store"),
                        ):
                            dispatcher.publish(ShopEvent.ORDER_PLACED, data)
                return (time.perf_counter() - start) / batch

            logged = interleaved(
                {
                    **{name: logged_case(*case) for name, case in cases.items()},
                    "bare_spans": logged_bare_spans,
                },
                rounds=rounds,
                max_seconds=120,
            )
            vendor = connection.vendor
    finally:
        dispatcher.stages = wired
        metrics.set_metrics(meter)
        tracing.set_tracing(None)
        teardown_databases(databases, verbosity=0)
        recording_provider.shutdown()

    def rows(bench: str, what: str, medians: dict[str, float], spans: int) -> list[dict[str, Any]]:
        ratio = medians["on"] / medians["off"]
        return [
            row(
                bench,
                f"{what}: metrics and tracing on, in a trace sampled out",
                eventbus=medians["on"] * 1e6,
                anchor=medians["off"] * 1e6,
                anchor_name="the same, metrics and tracing off",
                unit="µs/event",
                target=f"≤ {TARGET}×",
                met=ratio <= TARGET,
            ),
            row(
                bench,
                f"{what}: metrics and tracing on, every span recorded ({spans} spans/event)",
                eventbus=medians["recorded"] * 1e6,
                anchor=medians["off"] * 1e6,
                anchor_name="the same, metrics and tracing off",
                unit="µs/event",
                limit=round(medians["bare_spans"] * 1e6, 3),
                limit_name=f"the anchor plus {spans} bare SDK spans made by hand",
            ),
        ]

    return [
        *rows(
            "observability_dispatch",
            f"publish (log off) to {HANDLERS} sync handlers",
            dispatch,
            1 + HANDLERS,
        ),
        *rows(
            "observability_logged",
            f"publish with the log on, in a transaction ({vendor})",
            logged,
            2,
        ),
    ]


if __name__ == "__main__":
    main(run, db="sqlite")
