"""OpenTelemetry spans along an event's path, and the ``traceparent`` that carries its trace.

Optional: ``pip install "django-eventbus[tracing]"`` (opentelemetry-api). Without it, or
with ``EVENTBUS['TRACING'] = False``, :func:`load` gives None at start-up and nothing here
runs. Spans come from the global tracer provider, so the project's OpenTelemetry set-up
(its SDK, exporter and sampler) decides what is recorded; eventbus configures none.

eventbus joins traces, it starts none: a publish makes spans only inside a recorded
span (a traced request or task, a handler of a traced event). Outside one, or when the
trace was sampled out, publishing pays one look at the current span, no more; a sampler
is never asked once per event.

The trace travels with the event: the publish span's context becomes the event's W3C
``traceparent``, stored in its log row and carried in its public JSON and channel-layer
message. So the hand-off and the relay, a durable run in a task worker, and the fan-out
that hands the event to sockets in another process all continue the publisher's trace.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from . import conf

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Link, Span, Tracer, TracerProvider

    from .envelope import Event
    from .inspection import Handler
    from .models import HandlerRun

# OpenTelemetry's messaging conventions name the system; the rest are eventbus's own.
SYSTEM = "eventbus"
MAX_LINKS = 128  # the SDK's default span limit: a relay batch links to at most this many


class Tracing:
    """eventbus's spans, from one tracer provider (the global one unless given)."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        from opentelemetry import trace

        self._current_span = trace.get_current_span
        self._tracer: Tracer = (provider or trace.get_tracer_provider()).get_tracer("eventbus")

    # -- publishing -----------------------------------------------------------------

    def in_recorded_trace(self) -> bool:
        """Whether the current span is recorded: then a publish makes its spans."""
        return self._current_span().is_recording()

    @contextmanager
    def publishing(self, event_type: str) -> Iterator[PublishSpan]:
        """The publish span, current while the event is validated, stored and (outside a
        transaction) dispatched; its traceparent goes into the event. Call it inside a
        recorded trace (:meth:`in_recorded_trace`)."""
        from opentelemetry.trace import SpanKind

        with self._tracer.start_as_current_span(
            f"publish {event_type}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": SYSTEM,
                # OpenTelemetry's word for making one message; its send is the hand-off.
                "messaging.operation.type": "create",
                "messaging.destination.name": event_type,
            },
        ) as span:
            yield PublishSpan(span, traceparent_of(span))

    def storing(self, event: Event[Any]) -> AbstractContextManager[Any]:
        """The store span: the event's log row inserted (``eventbus.log``)."""
        if not _sampled(event.traceparent):
            return nullcontext()
        return self._child("store", event)

    # -- handlers ---------------------------------------------------------------------

    def handlers(self, event: Event[Any], handlers: tuple[Handler, ...]) -> tuple[Handler, ...]:
        """``handlers``, each running in a span of the event's trace when it is sampled."""
        if not handlers or not _sampled(event.traceparent):
            return handlers
        parent = context_of(event.traceparent)
        attributes = _attributes(event)
        name = f"handle {event.type.value}"
        return tuple(self._traced(handler, name, attributes, parent) for handler in handlers)

    def _traced(
        self, handler: Handler, name: str, attributes: dict[str, Any], parent: Context | None
    ) -> Handler:
        from opentelemetry.context import attach, detach
        from opentelemetry.trace import set_span_in_context

        from .inspection import Handler

        # What start_as_current_span does, written out: its generator-based context
        # managers cost about as much again as the attributes (bench.observability).
        start = self._tracer.start_span
        attributes = {**attributes, "eventbus.handler": handler.name}
        func = handler.func
        traced: Any
        if handler.is_async:

            async def traced(argument: Any) -> Any:
                span = start(name, context=parent, attributes=attributes)
                token = attach(set_span_in_context(span, parent))
                try:
                    return await func(argument)
                except Exception as exc:  # as start_as_current_span: not a cancellation
                    record_failure(span, exc)
                    raise
                finally:
                    detach(token)
                    span.end()

        else:

            def traced(argument: Any) -> Any:
                span = start(name, context=parent, attributes=attributes)
                token = attach(set_span_in_context(span, parent))
                try:
                    return func(argument)
                except Exception as exc:  # as start_as_current_span: not a cancellation
                    record_failure(span, exc)
                    raise
                finally:
                    detach(token)
                    span.end()

        # A new record rather than dataclasses.replace(), which costs several times more.
        return Handler(
            traced,
            handler.name,
            handler.is_async,
            handler.wants_payload,
            handler.durable,
            handler.max_attempts,
        )

    def running(self, run: HandlerRun, event: Event[Any]) -> AbstractContextManager[Any]:
        """A durable run's span in the worker, in the publisher's trace (if it had one)."""
        from opentelemetry.trace import SpanKind

        if not _sampled(event.traceparent):
            return nullcontext()
        return self._tracer.start_as_current_span(
            f"handle {event.type.value}",
            context=context_of(event.traceparent),
            kind=SpanKind.CONSUMER,
            attributes={
                **_attributes(event),
                "messaging.operation.type": "process",
                "eventbus.handler": run.handler,
                "eventbus.run.id": str(run.id),
                "eventbus.run.attempt": run.attempts,
            },
        )

    # -- beyond the process -------------------------------------------------------------

    def sending(self, events: Sequence[Event[Any]], path: str) -> AbstractContextManager[Any]:
        """The send of events to the sink: one event's span is a child of its publish
        span; a relay batch's links to each event's trace (OpenTelemetry's way for
        batches)."""
        from opentelemetry.trace import Link, SpanKind

        traced = [event for event in events if _sampled(event.traceparent)]
        if not traced:
            return nullcontext()
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.batch.message_count": len(events),
            "eventbus.relay.path": path,
        }
        if len(events) == 1:
            return self._tracer.start_as_current_span(
                f"send {events[0].type.value}",
                context=context_of(events[0].traceparent),
                kind=SpanKind.PRODUCER,
                attributes={**_attributes(events[0]), **attributes},
            )
        links: list[Link] = []
        for event in traced[:MAX_LINKS]:
            context = _span_context(event.traceparent)
            if context is not None:
                links.append(Link(context, {"messaging.message.id": str(event.id)}))
        return self._tracer.start_as_current_span(
            f"send {len(events)} events",
            kind=SpanKind.PRODUCER,
            links=links,
            attributes=attributes,
        )

    def delivering(self, message: dict[str, Any], sockets: int) -> AbstractContextManager[Any]:
        """The fan-out handing one channel-layer message to this process's sockets."""
        from opentelemetry.trace import SpanKind

        traceparent = message.get("traceparent")
        if not _sampled(traceparent):
            return nullcontext()
        return self._tracer.start_as_current_span(
            f"deliver {message.get('event_type', '')}",
            context=context_of(traceparent),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "process",
                "messaging.message.id": str(message.get("id", "")),
                "messaging.destination.name": str(message.get("channel", "")),
                "eventbus.sockets": sockets,
            },
        )

    def _child(self, what: str, event: Event[Any]) -> AbstractContextManager[Any]:
        return self._tracer.start_as_current_span(
            f"{what} {event.type.value}",
            context=context_of(event.traceparent),
            attributes=_attributes(event),
        )


class PublishSpan:
    """The publish span of one event, and the traceparent the event carries."""

    __slots__ = ("span", "traceparent")

    def __init__(self, span: Span, traceparent: str | None) -> None:
        self.span = span
        self.traceparent = traceparent

    def describe(self, event: Event[Any]) -> None:
        """Put the event's ids on the span, once it is built."""
        self.span.set_attributes(_attributes(event))


def record_failure(span: Span, exc: Exception) -> None:
    """Mark ``span`` failed with ``exc``, as ``start_as_current_span`` does when its block
    raises: an exception event and an ERROR status."""
    from opentelemetry.trace import Status, StatusCode

    if span.is_recording():
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def _attributes(event: Event[Any]) -> dict[str, Any]:
    """What every span of one event says about it: its id, type and chain."""
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.message.id": str(event.id),
        "eventbus.event.type": str(event.type.value),
        "eventbus.correlation_id": str(event.correlation_id),
    }
    if event.causation_id is not None:
        attributes["eventbus.causation_id"] = str(event.causation_id)
    return attributes


# -- the traceparent ---------------------------------------------------------------------
# Written and read by hand: the propagator's inject/extract cost several times more, and
# an event carries exactly one W3C traceparent (tracestate is not kept).


def traceparent_of(span: Span) -> str | None:
    """``span``'s context as a W3C traceparent, or None when it has none (a no-op span)."""
    context = span.get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def _sampled(traceparent: str | None) -> bool:
    """Whether the trace is recorded (the sampled flag of a traceparent)."""
    return traceparent is not None and int(traceparent[-2:], 16) & 1 == 1


def _span_context(traceparent: str | None) -> Any:
    if traceparent is None:
        return None
    from opentelemetry.trace import SpanContext, TraceFlags

    return SpanContext(
        trace_id=int(traceparent[3:35], 16),
        span_id=int(traceparent[36:52], 16),
        is_remote=True,
        trace_flags=TraceFlags(int(traceparent[53:55], 16)),
    )


def context_of(traceparent: str | None) -> Context | None:
    """The OpenTelemetry context whose parent span is ``traceparent``'s (None: the current)."""
    span_context = _span_context(traceparent)
    if span_context is None:
        return None
    from opentelemetry.trace import NonRecordingSpan, set_span_in_context

    return set_span_in_context(NonRecordingSpan(span_context))


# -- the process's tracing -----------------------------------------------------------------

_tracing: Tracing | None = None


def load() -> Tracing | None:
    """Tracing for this process, decided once at start-up (``AppConfig.ready()``): None
    when ``TRACING`` is off or opentelemetry-api is not installed."""
    if not conf.get_settings().TRACING:
        return None
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        return None
    return Tracing()


def get_tracing() -> Tracing | None:
    """The process's tracing, as wired at start-up (None: off)."""
    return _tracing


def set_tracing(tracing: Tracing | None) -> None:
    """Wire the process's tracing: ``AppConfig.ready()``, and tests with a provider of
    their own. The dispatcher takes its own from its stages."""
    global _tracing
    _tracing = tracing
