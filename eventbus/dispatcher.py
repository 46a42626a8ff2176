"""Publishing and in-process dispatch: the one path every event takes.

``publish()`` reads as its stages::

    validate -> store -> (commit) -> hand off -> dispatch -> signal

*validate* builds the envelope and the payload's JSON (refusing what JSON cannot hold
or what is over ``MAX_PAYLOAD_BYTES``, in every dispatcher); *store* writes the log
row in the publisher's transaction; after the commit, *hand off* gives the event to
the relay, then the handlers run and ``event_published`` is sent. The store and
hand-off stages, where handler failures go, and what is measured (metrics, spans) are
the dispatcher's :class:`Stages`, wired by ``AppConfig.ready()``; a bare
``EventDispatcher()`` has none of them. ``apublish()`` takes the same stages through
their async twins.
"""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol, Unpack
from uuid import UUID

from asgiref.sync import async_to_sync, sync_to_async
from django.core.exceptions import SynchronousOnlyOperation
from django.db import transaction
from django.utils.module_loading import autodiscover_modules
from pydantic import BaseModel

from ._asyncio import TaskSet, in_event_loop
from .catalog import Catalog, CatalogEntry, catalog
from .envelope import EnvelopeFields, Event, _current_event, new_event, validate_payload
from .exceptions import EventBusError, InvalidHandlerError, UnknownEventTypeError
from .inspection import Handler, HandlerFunc, dotted_name, inspect_handler
from .signals import event_published
from .wire import payload_json

if TYPE_CHECKING:
    from .tracing import Tracing

logger = logging.getLogger("eventbus")

Observer = Callable[[Event[Any]], None]
FailureRecorder = Callable[[Event[Any], str, BaseException], None]


class Store(Protocol):
    """The store stage: keeps the event in the publisher's transaction (the event log)."""

    def store(
        self, event: Event[Any], entry: CatalogEntry, payload: bytes, using: str | None
    ) -> None: ...

    async def astore(
        self, event: Event[Any], entry: CatalogEntry, payload: bytes, using: str | None
    ) -> None: ...


class HandOff(Protocol):
    """The hand-off stage: sends a committed event beyond the process (the relay)."""

    def hand_off(self, event: Event[Any], entry: CatalogEntry) -> None: ...

    async def ahand_off(self, event: Event[Any], entry: CatalogEntry) -> None: ...


class RunsStage(Protocol):
    """The runs stage: durable handlers' runs, recorded with the event, enqueued after it."""

    def record(
        self,
        event: Event[Any],
        entry: CatalogEntry,
        handlers: Sequence[Handler],
        using: str | None,
    ) -> list[UUID]: ...

    def enqueue(self, run_ids: Sequence[UUID]) -> None: ...


class Meter(Protocol):
    """What the dispatcher counts (``eventbus.metrics``); each call must be cheap."""

    def published(self, entry: CatalogEntry) -> None: ...

    def dispatched(self, handlers: tuple[Handler, ...]) -> None: ...

    def handler_failed(self, handler: str) -> None: ...


@dataclass(frozen=True)
class Stages:
    """What a dispatcher does around validation and dispatch; each stage is optional.

    ``metrics`` and ``tracing`` are None when they are off, so that an event pays one
    test for each (decided at start-up, eventbus/apps.py).
    """

    store: Store | None = None
    hand_off: HandOff | None = None
    runs: RunsStage | None = None
    record_failure: FailureRecorder | None = None
    metrics: Meter | None = None
    tracing: Tracing | None = None


@dataclass(frozen=True)
class DeclarationError:
    """A handler declared with ``@event_handler`` that could not be subscribed."""

    handler: HandlerFunc
    event_type: object
    error: EventBusError


@dataclass(frozen=True)
class _Declared:
    event_type: object
    handler: HandlerFunc
    durable: bool
    max_attempts: int | None


class EventDispatcher:
    """Publishes events and routes each to the handlers subscribed to its type.

    Handlers run in subscription order. A handler that raises is logged (logger
    ``eventbus``, with ``event_id``, ``event_type`` and ``handler`` fields) and
    recorded by the failure stage; it never reaches the publisher or the other
    handlers.
    """

    def __init__(self, event_catalog: Catalog | None = None, stages: Stages | None = None) -> None:
        self.catalog = event_catalog if event_catalog is not None else catalog
        self.stages = stages or Stages()
        self._handlers: dict[str, tuple[Handler, ...]] = {}
        self._durable: dict[str, tuple[Handler, ...]] = {}
        self._observers: tuple[Observer, ...] = ()
        self._tasks = TaskSet()
        self._declared: list[_Declared] = []
        self._started = False
        self._collecting = False
        self.declaration_errors: list[DeclarationError] = []

    # -- handlers ------------------------------------------------------------

    def subscribe(
        self,
        event_type: object,
        handler: HandlerFunc,
        *,
        durable: bool = False,
        max_attempts: int | None = None,
    ) -> None:
        """Subscribe ``handler`` to ``event_type``; subscribing it twice is a no-op.

        A ``durable`` handler runs in a task worker after the commit, at least once,
        with its database writes applied once (eventbus/durable.py); ``max_attempts``
        overrides ``DURABLE_MAX_ATTEMPTS`` for it. Raises
        :class:`UnknownEventTypeError` for a type not in the catalog and
        :class:`InvalidHandlerError` for a handler that cannot take one positional
        argument, whose annotation names another payload model, or that cannot be
        durable (async, not at module level, or a bad ``max_attempts``).
        """
        entry = self.catalog.resolve(event_type)
        table = self._durable if durable else self._handlers
        current = table.get(entry.name, ())
        if any(known.func == handler for known in current):
            return
        record = inspect_handler(handler, entry)
        if durable:
            _check_durable(record, entry.name, max_attempts, current)
            record = replace(record, durable=True, max_attempts=max_attempts)
        table[entry.name] = (*current, record)

    def unsubscribe(self, event_type: object, handler: HandlerFunc) -> bool:
        """Remove ``handler``; return whether it was subscribed."""
        entry = self.catalog.resolve(event_type)
        found = False
        for table in (self._handlers, self._durable):
            current = table.get(entry.name, ())
            kept = tuple(known for known in current if known.func != handler)
            table[entry.name] = kept
            found = found or len(kept) != len(current)
        return found

    def handlers(self, event_type: object) -> tuple[Handler, ...]:
        """The handlers subscribed to ``event_type``: in-process ones in the order they
        run, then durable ones (``Handler.durable``)."""
        name = self.catalog.resolve(event_type).name
        return self._handlers.get(name, ()) + self._durable.get(name, ())

    def durable_handler(self, event_type: str, name: str) -> Handler | None:
        """The durable handler called ``name`` (its dotted path) for ``event_type``, if any."""
        return next((h for h in self._durable.get(event_type, ()) if h.name == name), None)

    def durable_handlers(self) -> dict[str, tuple[str, ...]]:
        """Every durable handler's name (its dotted path), with the types it handles."""
        types: dict[str, tuple[str, ...]] = {}
        for event_type, handlers in self._durable.items():
            for handler in handlers:
                types[handler.name] = (*types.get(handler.name, ()), event_type)
        return types

    def has_handlers(self, event_type: object) -> bool:
        return bool(self.handlers(event_type))

    def subscriptions(self, event_type: object) -> tuple[Handler, ...]:
        """Deprecated alias of :meth:`handlers`."""
        warnings.warn(
            "EventDispatcher.subscriptions() is deprecated; use handlers().",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.handlers(event_type)

    def declare(
        self,
        event_type: object,
        handler: HandlerFunc,
        *,
        durable: bool = False,
        max_attempts: int | None = None,
    ) -> None:
        """Subscribe a handler declared with ``@event_handler``.

        Before start-up the declaration waits; during start-up a miswired handler
        becomes a system-check error instead of a crash; after start-up it raises.
        """
        declared = _Declared(event_type, handler, durable, max_attempts)
        if not self._started:
            self._declared.append(declared)
        elif self._collecting:
            self._subscribe_or_record(declared)
        else:
            self.subscribe(event_type, handler, durable=durable, max_attempts=max_attempts)

    def start(self, handler_modules: tuple[str, ...], stages: Stages | None = None) -> None:
        """Set the stages, subscribe declared handlers and autodiscover handler modules.

        Called once, from ``AppConfig.ready()``.
        """
        if stages is not None:
            self.stages = stages
        self._started = True
        self._collecting = True
        try:
            declared, self._declared = self._declared, []
            for declaration in declared:
                self._subscribe_or_record(declaration)
            if handler_modules:
                autodiscover_modules(*handler_modules)
        finally:
            self._collecting = False

    def _subscribe_or_record(self, declared: _Declared) -> None:
        try:
            self.subscribe(
                declared.event_type,
                declared.handler,
                durable=declared.durable,
                max_attempts=declared.max_attempts,
            )
        except (UnknownEventTypeError, InvalidHandlerError) as exc:
            self.declaration_errors.append(
                DeclarationError(declared.handler, declared.event_type, exc)
            )

    # -- observers -----------------------------------------------------------

    def connect_observer(self, observer: Observer) -> None:
        """Call ``observer(event)`` for every event published from now on.

        Observers run at publish time, once the event is stored and before any commit, in
        the publisher's thread, sync and async publishers alike (``capture_events``
        is one). They must be quick and must not raise.
        """
        if observer not in self._observers:
            self._observers = (*self._observers, observer)

    def disconnect_observer(self, observer: Observer) -> bool:
        """Stop calling ``observer``; return whether it was connected."""
        kept = tuple(known for known in self._observers if known != observer)
        found = len(kept) != len(self._observers)
        self._observers = kept
        return found

    # -- publishing ----------------------------------------------------------

    def build(
        self,
        event_type: object,
        payload: BaseModel | Mapping[str, Any],
        **envelope: Unpack[EnvelopeFields],
    ) -> Event[Any]:
        """Validate and wrap a payload in an :class:`Event`, without publishing it."""
        entry = self.catalog.resolve(event_type)
        return new_event(entry, validate_payload(entry, payload), envelope)

    def publish(
        self,
        event_type: object,
        payload: BaseModel | Mapping[str, Any],
        *,
        immediate: bool = False,
        using: str | None = None,
        **envelope: Unpack[EnvelopeFields],
    ) -> Event[Any]:
        """Validate, store and dispatch one event; return it.

        Inside ``transaction.atomic()`` (on database ``using``) the hand-off and the
        handlers wait for the outermost commit, and never run on rollback;
        ``immediate=True`` runs them now. An invalid payload raises
        :class:`EventSchemaError` (:class:`PayloadTooLargeError` past the size limit)
        and nothing is stored or dispatched. Async handlers are awaited to completion
        before this returns. From async code, use :meth:`apublish`: this raises
        ``SynchronousOnlyOperation`` inside a running event loop.
        """
        if in_event_loop():
            raise SynchronousOnlyOperation(
                "publish() was called from async code, where it would block the event loop "
                "on the database: use 'await apublish(...)'."
            )
        tracing = self.stages.tracing
        if tracing is None or not tracing.in_recorded_trace():
            return self._publish(event_type, payload, immediate, using, envelope, None)
        with tracing.publishing(self.catalog.resolve(event_type).name) as span:
            event = self._publish(event_type, payload, immediate, using, envelope, span.traceparent)
            span.describe(event)
            return event

    def _publish(
        self,
        event_type: object,
        payload: BaseModel | Mapping[str, Any],
        immediate: bool,
        using: str | None,
        envelope: EnvelopeFields,
        traceparent: str | None,
    ) -> Event[Any]:
        event, entry, payload_bytes = self._validate(event_type, payload, envelope, traceparent)
        durable = self._durable.get(entry.name)
        if durable:
            run_ids = self._store_with_runs(event, entry, payload_bytes, using, durable)
        else:
            run_ids = []
            if self.stages.store is not None:
                self.stages.store.store(event, entry, payload_bytes, using)
        for observer in self._observers:
            observer(event)
        if not immediate and transaction.get_connection(using).in_atomic_block:
            transaction.on_commit(
                lambda: self._committed(event, entry, run_ids), using=using, robust=True
            )
        else:
            self._committed(event, entry, run_ids)
        return event

    async def apublish(
        self,
        event_type: object,
        payload: BaseModel | Mapping[str, Any],
        *,
        using: str | None = None,
        **envelope: Unpack[EnvelopeFields],
    ) -> Event[Any]:
        """Async twin of :meth:`publish`.

        Async handlers start as tasks and the caller does not wait for them
        (see :meth:`drain`); sync handlers run in a worker thread and are awaited.
        Async code has no open transaction, so the event counts as committed once stored.
        """
        tracing = self.stages.tracing
        if tracing is None or not tracing.in_recorded_trace():
            return await self._apublish(event_type, payload, using, envelope, None)
        with tracing.publishing(self.catalog.resolve(event_type).name) as span:
            event = await self._apublish(event_type, payload, using, envelope, span.traceparent)
            span.describe(event)
            return event

    async def _apublish(
        self,
        event_type: object,
        payload: BaseModel | Mapping[str, Any],
        using: str | None,
        envelope: EnvelopeFields,
        traceparent: str | None,
    ) -> Event[Any]:
        event, entry, payload_bytes = self._validate(event_type, payload, envelope, traceparent)
        durable = self._durable.get(entry.name)
        run_ids: list[UUID] = []
        if durable:
            run_ids = await sync_to_async(self._store_with_runs, thread_sensitive=True)(
                event, entry, payload_bytes, using, durable
            )
        elif self.stages.store is not None:
            await self.stages.store.astore(event, entry, payload_bytes, using)
        for observer in self._observers:
            observer(event)
        if self.stages.metrics is not None:
            self.stages.metrics.published(entry)
        if self.stages.hand_off is not None:
            await self.stages.hand_off.ahand_off(event, entry)
        if run_ids and self.stages.runs is not None:
            await sync_to_async(self.stages.runs.enqueue, thread_sensitive=True)(run_ids)
        await self.adispatch(event)
        return event

    def _validate(
        self,
        event_type: object,
        payload: object,
        envelope: EnvelopeFields,
        traceparent: str | None = None,
    ) -> tuple[Event[Any], CatalogEntry, bytes]:
        """The validate stage: the event, its catalog entry and its payload's JSON."""
        entry = self.catalog.resolve(event_type)
        event = new_event(entry, validate_payload(entry, payload), envelope, traceparent)
        return event, entry, payload_json(event)

    def _store_with_runs(
        self,
        event: Event[Any],
        entry: CatalogEntry,
        payload: bytes,
        using: str | None,
        durable: Sequence[Handler],
    ) -> list[UUID]:
        """The store stage for a type with durable handlers: row and runs commit together."""
        runs = self.stages.runs
        if runs is None:
            raise EventBusError(
                f"{entry.name!r} has durable handlers, but this dispatcher has no runs "
                "stage to record them (only the process-wide dispatcher has one)."
            )
        with transaction.atomic(using=using):
            if self.stages.store is not None:
                self.stages.store.store(event, entry, payload, using)
            return runs.record(event, entry, durable, using)

    def _committed(self, event: Event[Any], entry: CatalogEntry, run_ids: list[UUID]) -> None:
        # Hand off before the handlers run, so the events they publish follow this one
        # out of the process too: live order and sequence numbers keep cause before effect.
        if self.stages.metrics is not None:
            self.stages.metrics.published(entry)
        if self.stages.hand_off is not None:
            self.stages.hand_off.hand_off(event, entry)
        if run_ids and self.stages.runs is not None:
            self.stages.runs.enqueue(run_ids)
        self.dispatch(event)

    # -- dispatch ------------------------------------------------------------

    def dispatch(self, event: Event[Any]) -> None:
        """Run the handlers of ``event`` now, from sync code, then send the signal."""
        token = _current_event.set(event)
        try:
            for handler in self._handlers_of(event):
                if handler.is_async:
                    self._run_async_from_sync(handler, event)
                    continue
                try:  # handler.argument(event), inlined: this loop is the hot path
                    handler.func(event.payload if handler.wants_payload else event)
                except Exception as exc:
                    self._handler_failed(handler.name, event, exc)
            if event_published.receivers:
                self._send_signal(event)
        finally:
            _current_event.reset(token)

    async def adispatch(self, event: Event[Any]) -> None:
        """Run the handlers of ``event`` now, from async code (see :meth:`apublish`)."""
        token = _current_event.set(event)
        try:
            sync_handlers = []
            for handler in self._handlers_of(event):
                if handler.is_async:
                    self._spawn(handler, event)
                else:
                    sync_handlers.append(handler)
            if sync_handlers or event_published.receivers:
                await sync_to_async(self._run_sync, thread_sensitive=True)(event, sync_handlers)
        finally:
            _current_event.reset(token)

    def _handlers_of(self, event: Event[Any]) -> tuple[Handler, ...]:
        """The in-process handlers to run on ``event``, counted, each in its span when the
        event's trace is sampled."""
        handlers = self._handlers.get(event.type.value, ())
        stages = self.stages
        if stages.metrics is not None and handlers:
            stages.metrics.dispatched(handlers)
        if stages.tracing is not None and event.traceparent is not None:
            return stages.tracing.handlers(event, handlers)
        return handlers

    def _run_sync(self, event: Event[Any], handlers: list[Handler]) -> None:
        for handler in handlers:
            try:
                handler.func(handler.argument(event))
            except Exception as exc:
                self._handler_failed(handler.name, event, exc)
        if event_published.receivers:
            self._send_signal(event)

    def _send_signal(self, event: Event[Any]) -> None:
        for receiver, result in event_published.send_robust(sender=event.type, event=event):
            if isinstance(result, Exception):
                self._handler_failed(dotted_name(receiver), event, result)

    def _run_async_from_sync(self, handler: Handler, event: Event[Any]) -> None:
        if in_event_loop():  # dispatch() called directly from async code
            self._spawn(handler, event)
            return
        try:
            async_to_sync(handler.func)(handler.argument(event))
        except Exception as exc:
            self._handler_failed(handler.name, event, exc)

    def _spawn(self, handler: Handler, event: Event[Any]) -> None:
        # The task copies the current context, so events it publishes are caused by ``event``.
        self._tasks.start(self._run_async(handler, event))

    async def _run_async(self, handler: Handler, event: Event[Any]) -> None:
        try:
            await handler.func(handler.argument(event))
        except Exception as exc:
            self._handler_failed(handler.name, event, exc)

    def _handler_failed(self, handler: str, event: Event[Any], exc: BaseException) -> None:
        logger.error(
            "Handler %s failed on event %s (%s): %s",
            handler,
            event.id,
            event.type.value,
            exc,
            exc_info=exc,
            extra={"event_id": str(event.id), "event_type": event.type.value, "handler": handler},
        )
        if self.stages.metrics is not None:
            self.stages.metrics.handler_failed(handler)
        record = self.stages.record_failure
        if record is not None:
            try:
                record(event, handler, exc)
            except Exception:
                logger.exception("Could not record the failure of handler %s", handler)

    @property
    def pending_tasks(self) -> int:
        return len(self._tasks)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until the async handler tasks of this event loop have finished.

        Tasks that handlers start while draining are waited for too. Raises
        ``TimeoutError`` when ``timeout`` seconds pass first. Call it in tests and
        at shutdown: a loop that closes cancels whatever is still pending.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending := [t for t in self._tasks if t.get_loop() is loop and not t.done()]:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"{len(pending)} event handler task(s) still running")
            await asyncio.wait(pending, timeout=remaining)

    @contextmanager
    def isolated(self) -> Iterator[EventDispatcher]:
        """Swap out every handler for the duration of the block (for tests)."""
        saved = self._handlers, self._durable
        self._handlers, self._durable = {}, {}
        try:
            yield self
        finally:
            self._handlers, self._durable = saved


_dispatcher = EventDispatcher()


def get_event_dispatcher() -> EventDispatcher:
    """The process-wide dispatcher."""
    return _dispatcher


def event_handler(
    *event_types: object, durable: bool = False, max_attempts: int | None = None
) -> Callable[[HandlerFunc], HandlerFunc]:
    """Subscribe the decorated function to each of ``event_types``.

    Put handlers in a ``handlers.py`` module of an installed app (see
    ``EVENTBUS['HANDLER_MODULES']``); they are discovered at start-up, and a
    miswired one fails ``manage.py check`` with ``eventbus.E005``/``E006``.
    ``durable=True`` runs it in a task worker instead, after the commit, retried up
    to ``max_attempts`` times (default ``DURABLE_MAX_ATTEMPTS``); see the README's
    durable handlers section.
    """
    if not event_types:
        raise TypeError("event_handler() needs at least one event type")

    def decorator(func: HandlerFunc) -> HandlerFunc:
        for event_type in event_types:
            _dispatcher.declare(event_type, func, durable=durable, max_attempts=max_attempts)
        return func

    return decorator


def _check_durable(
    handler: Handler, event_type: str, max_attempts: object, current: tuple[Handler, ...]
) -> None:
    """Refuse what a task worker could not run as a durable handler."""
    problem = None
    if handler.is_async:
        problem = "is async: a durable handler's writes must share its run's transaction"
    elif "<" in handler.name:
        problem = "is not a module-level function: workers find durable handlers by name"
    elif any(known.name == handler.name for known in current):
        problem = "has the same dotted name as another durable handler of this type"
    elif max_attempts is not None and (
        isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1
    ):
        problem = f"has max_attempts={max_attempts!r}: give a positive integer, or None"
    if problem:
        raise InvalidHandlerError(f"Durable handler {handler.name} for {event_type!r} {problem}.")
