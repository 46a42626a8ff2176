"""In-process dispatch: subscriptions, publish/apublish, isolation and transactions.

Whether a handler is async, and whether it wants the envelope or the bare
payload, is decided once at subscribe time, so dispatch is a plain loop.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import typing
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from asgiref.sync import async_to_sync, iscoroutinefunction, sync_to_async
from django.core.exceptions import SynchronousOnlyOperation
from django.db import transaction
from django.utils.module_loading import autodiscover_modules
from pydantic import BaseModel, ValidationError

from ._eager import start_task
from .catalog import Catalog, CatalogEntry, ConfigProblem, catalog
from .envelope import ActorType, Event, _current_event, uuid7
from .exceptions import EventSchemaError, InvalidHandlerError, UnknownEventTypeError
from .signals import event_published

logger = logging.getLogger("eventbus")

Handler = Callable[[Any], Any]
FailureListener = Callable[[Event[Any], str, BaseException], None]
PublishListener = Callable[[Event[Any], "str | None"], None]
AsyncPublishListener = Callable[[Event[Any], "str | None"], Awaitable[None]]
CommitListener = Callable[[Event[Any]], None]
AsyncCommitListener = Callable[[Event[Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Subscription:
    func: Handler
    name: str
    is_async: bool
    wants_payload: bool


class EventDispatcher:
    """Routes each event to the handlers subscribed to its type.

    Handlers run in subscription order. A handler that raises is logged (logger
    ``eventbus``, with ``event_id``, ``event_type`` and ``handler`` fields) and
    reported to failure listeners; it never reaches the publisher or the other
    handlers.
    """

    def __init__(self, event_catalog: Catalog | None = None) -> None:
        self.catalog = event_catalog if event_catalog is not None else catalog
        self._subscriptions: dict[str, tuple[Subscription, ...]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._declared: list[tuple[object, Handler]] = []
        self._started = False
        self._collecting = False
        self.problems: list[ConfigProblem] = []
        # Hooks for the event log, the relay and the test helpers, each with an async
        # twin for apublish(); empty by default. Publish listeners run at publish time,
        # in the publisher's transaction; commit listeners after the commit, before dispatch.
        self.publish_listeners: list[PublishListener] = []
        self.apublish_listeners: list[AsyncPublishListener] = []
        self.commit_listeners: list[CommitListener] = []
        self.acommit_listeners: list[AsyncCommitListener] = []
        self.failure_listeners: list[FailureListener] = []

    # -- subscriptions -------------------------------------------------------

    def subscribe(self, event_type: object, handler: Handler) -> None:
        """Subscribe ``handler`` to ``event_type``; subscribing it twice is a no-op.

        Raises :class:`UnknownEventTypeError` for a type not in the catalog and
        :class:`InvalidHandlerError` for a handler that cannot take one positional
        argument or whose annotation names another payload model.
        """
        entry = self.catalog.resolve(event_type)
        current = self._subscriptions.get(entry.name, ())
        if any(sub.func == handler for sub in current):
            return
        self._subscriptions[entry.name] = (*current, _inspect_handler(handler, entry))

    def unsubscribe(self, event_type: object, handler: Handler) -> bool:
        """Remove ``handler``; return whether it was subscribed."""
        entry = self.catalog.resolve(event_type)
        current = self._subscriptions.get(entry.name, ())
        kept = tuple(sub for sub in current if sub.func != handler)
        self._subscriptions[entry.name] = kept
        return len(kept) != len(current)

    def subscriptions(self, event_type: object) -> tuple[Subscription, ...]:
        return self._subscriptions.get(self.catalog.resolve(event_type).name, ())

    def declare(self, event_type: object, handler: Handler) -> None:
        """Subscribe a handler declared with ``@event_handler``.

        Before start-up the declaration waits; during start-up a miswired handler
        becomes a system-check error instead of a crash; after start-up it raises.
        """
        if not self._started:
            self._declared.append((event_type, handler))
        elif self._collecting:
            self._subscribe_or_record(event_type, handler)
        else:
            self.subscribe(event_type, handler)

    def start(self, handler_modules: tuple[str, ...]) -> None:
        """Subscribe declared handlers and autodiscover handler modules (from ``ready()``)."""
        self._started = True
        self._collecting = True
        try:
            declared, self._declared = self._declared, []
            for event_type, handler in declared:
                self._subscribe_or_record(event_type, handler)
            if handler_modules:
                autodiscover_modules(*handler_modules)
        finally:
            self._collecting = False

    def _subscribe_or_record(self, event_type: object, handler: Handler) -> None:
        try:
            self.subscribe(event_type, handler)
        except UnknownEventTypeError as exc:
            self.problems.append(
                ConfigProblem(
                    "eventbus.E005",
                    f"Handler {_dotted_name(handler)} is declared for {exc.event_type!r}: {exc}",
                    "Fix the event type, or add it to a catalog in EVENTBUS['CATALOGS'].",
                )
            )
        except InvalidHandlerError as exc:
            self.problems.append(
                ConfigProblem(
                    "eventbus.E006",
                    str(exc),
                    "Annotate the handler's argument as Event[PayloadModel] with the "
                    "catalog's payload model, or leave it unannotated.",
                )
            )

    # -- publishing ----------------------------------------------------------

    def build(
        self,
        event_type: object,
        payload: BaseModel | Mapping[str, Any],
        *,
        project_id: UUID | str | None = None,
        actor_id: UUID | str | None = None,
        actor_type: ActorType | str = ActorType.SYSTEM,
        correlation_id: UUID | str | None = None,
        causation_id: UUID | str | None = None,
    ) -> Event[Any]:
        """Validate and wrap a payload in an :class:`Event`, without publishing it."""
        entry = self.catalog.resolve(event_type)
        validated = _validate_payload(entry, payload)
        try:
            actor = _ACTOR_TYPES.get(actor_type)
        except TypeError:  # unhashable
            actor = None
        if actor is None:
            raise EventSchemaError(
                entry.name, [("actor_type", f"must be one of {', '.join(ActorType)}")]
            )
        parent = _current_event.get()
        event_id = uuid7()
        correlation = _as_uuid(entry.name, "correlation_id", correlation_id)
        causation = _as_uuid(entry.name, "causation_id", causation_id)
        # Every field is validated above, so skip Pydantic's second pass.
        return Event._trusted(
            {
                "id": event_id,
                "type": entry.member,
                "timestamp": datetime.now(UTC),
                "project_id": _as_uuid(entry.name, "project_id", project_id),
                "actor_id": _as_uuid(entry.name, "actor_id", actor_id),
                "actor_type": actor,
                "payload": validated,
                "correlation_id": correlation or (parent.correlation_id if parent else event_id),
                "causation_id": causation or (parent.id if parent else None),
            }
        )

    def publish(
        self,
        event_type: object,
        payload: BaseModel | Mapping[str, Any],
        *,
        project_id: UUID | str | None = None,
        actor_id: UUID | str | None = None,
        actor_type: ActorType | str = ActorType.SYSTEM,
        correlation_id: UUID | str | None = None,
        causation_id: UUID | str | None = None,
        immediate: bool = False,
        using: str | None = None,
    ) -> Event[Any]:
        """Validate, record and dispatch one event; return it.

        Inside ``transaction.atomic()`` (on database ``using``) handlers run after
        the outermost commit, and never on rollback; ``immediate=True`` runs them
        now. An invalid payload raises :class:`EventSchemaError` and nothing is
        recorded or dispatched. Async handlers are awaited to completion before
        this returns. From async code, use :meth:`apublish`: this raises
        ``SynchronousOnlyOperation`` inside a running event loop.
        """
        if _in_event_loop():
            raise SynchronousOnlyOperation(
                "publish() was called from async code, where it would block the event loop "
                "on the database: use 'await apublish(...)'."
            )
        event = self.build(
            event_type,
            payload,
            project_id=project_id,
            actor_id=actor_id,
            actor_type=actor_type,
            correlation_id=correlation_id,
            causation_id=causation_id,
        )
        for listener in self.publish_listeners:
            listener(event, using)
        if not immediate and transaction.get_connection(using).in_atomic_block:
            transaction.on_commit(lambda: self._committed(event), using=using, robust=True)
        else:
            self._committed(event)
        return event

    async def apublish(
        self,
        event_type: object,
        payload: BaseModel | Mapping[str, Any],
        *,
        project_id: UUID | str | None = None,
        actor_id: UUID | str | None = None,
        actor_type: ActorType | str = ActorType.SYSTEM,
        correlation_id: UUID | str | None = None,
        causation_id: UUID | str | None = None,
        using: str | None = None,
    ) -> Event[Any]:
        """Async twin of :meth:`publish`.

        Async handlers start as tasks and the caller does not wait for them
        (see :meth:`drain`); sync handlers run in a worker thread and are awaited.
        Async code has no open transaction, so dispatch is immediate.
        """
        event = self.build(
            event_type,
            payload,
            project_id=project_id,
            actor_id=actor_id,
            actor_type=actor_type,
            correlation_id=correlation_id,
            causation_id=causation_id,
        )
        for listener in self.apublish_listeners:
            await listener(event, using)
        for commit_listener in self.acommit_listeners:
            await commit_listener(event)
        await self.adispatch(event)
        return event

    def _committed(self, event: Event[Any]) -> None:
        # Hand off before the handlers run, so the events they publish follow this one
        # out of the process too: live order and sequence numbers keep cause before effect.
        for listener in self.commit_listeners:
            listener(event)
        self.dispatch(event)

    # -- dispatch ------------------------------------------------------------

    def dispatch(self, event: Event[Any]) -> None:
        """Run the handlers of ``event`` now, from sync code."""
        token = _current_event.set(event)
        try:
            subscriptions = self._subscriptions.get(event.type.value, ())
            for sub in subscriptions:
                if sub.is_async:
                    self._dispatch_async_from_sync(sub, event)
                    continue
                try:
                    sub.func(event.payload if sub.wants_payload else event)
                except Exception as exc:
                    self._handler_failed(sub.name, event, exc)
            if event_published.receivers:
                self._send_signal(event)
        finally:
            _current_event.reset(token)

    async def adispatch(self, event: Event[Any]) -> None:
        """Run the handlers of ``event`` now, from async code (see :meth:`apublish`)."""
        token = _current_event.set(event)
        try:
            sync_subs = []
            for sub in self._subscriptions.get(event.type.value, ()):
                if sub.is_async:
                    self._spawn(sub, event)
                else:
                    sync_subs.append(sub)
            if sync_subs or event_published.receivers:
                await sync_to_async(self._run_sync, thread_sensitive=True)(event, sync_subs)
        finally:
            _current_event.reset(token)

    def _run_sync(self, event: Event[Any], subscriptions: list[Subscription]) -> None:
        for sub in subscriptions:
            try:
                sub.func(event.payload if sub.wants_payload else event)
            except Exception as exc:
                self._handler_failed(sub.name, event, exc)
        if event_published.receivers:
            self._send_signal(event)

    def _send_signal(self, event: Event[Any]) -> None:
        for receiver, result in event_published.send_robust(sender=event.type, event=event):
            if isinstance(result, Exception):
                self._handler_failed(_dotted_name(receiver), event, result)

    def _dispatch_async_from_sync(self, sub: Subscription, event: Event[Any]) -> None:
        if _in_event_loop():  # dispatch() called directly from async code
            self._spawn(sub, event)
            return
        try:
            async_to_sync(sub.func)(event.payload if sub.wants_payload else event)
        except Exception as exc:
            self._handler_failed(sub.name, event, exc)

    def _spawn(self, sub: Subscription, event: Event[Any]) -> None:
        # The task copies the current context, so events it publishes are caused by ``event``.
        # Where asyncio can (3.12+), the handler starts eagerly: a handler that finishes
        # without waiting on anything never costs a trip through the event loop.
        task = start_task(self._run_async(sub, event))
        if not task.done():
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_async(self, sub: Subscription, event: Event[Any]) -> None:
        try:
            await sub.func(event.payload if sub.wants_payload else event)
        except Exception as exc:
            self._handler_failed(sub.name, event, exc)

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
        for listener in self.failure_listeners:
            try:
                listener(event, handler, exc)
            except Exception:
                logger.exception("Could not record the failure of handler %s", handler)

    @property
    def pending_tasks(self) -> int:
        return sum(1 for task in self._tasks if not task.done())

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
        """Swap out every subscription for the duration of the block (for tests)."""
        saved = self._subscriptions
        self._subscriptions = {}
        try:
            yield self
        finally:
            self._subscriptions = saved


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _validate_payload(entry: CatalogEntry, payload: object) -> BaseModel:
    model = entry.payload_model
    if isinstance(payload, model):
        return payload
    if isinstance(payload, BaseModel):
        raise EventSchemaError(
            entry.name,
            [("payload", f"expected {model.__name__}, got {type(payload).__name__}")],
        )
    if not isinstance(payload, Mapping):
        raise EventSchemaError(
            entry.name,
            [("payload", f"expected {model.__name__} or a dict, got {type(payload).__name__}")],
        )
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise EventSchemaError.from_validation_error(entry.name, exc) from exc


def _as_uuid(event_type: str, field: str, value: UUID | str | None) -> UUID | None:
    if value is None or isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        raise EventSchemaError(event_type, [(field, f"{value!r} is not a valid UUID")]) from None


def _dotted_name(obj: object) -> str:
    qualname = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{getattr(obj, '__module__', None) or type(obj).__module__}.{qualname}"


def _inspect_handler(handler: Handler, entry: CatalogEntry) -> Subscription:
    name = _dotted_name(handler)
    if not callable(handler):
        raise InvalidHandlerError(f"Handler {handler!r} for {entry.name!r} is not callable.")
    try:
        signature: inspect.Signature | None = inspect.signature(handler)
    except (TypeError, ValueError):
        signature = None  # some builtins hide their signature; trust them
    if signature is not None:
        try:
            signature.bind(object())
        except TypeError:
            raise InvalidHandlerError(
                f"Handler {name} for {entry.name!r} must accept exactly one positional "
                f"argument (the event), but its signature is {signature}."
            ) from None
    is_async = iscoroutinefunction(handler) or (
        not inspect.isroutine(handler) and iscoroutinefunction(type(handler).__call__)
    )
    annotation = _first_annotation(handler, signature, name, entry)
    expected = entry.payload_model
    if annotation is None or annotation is Any or annotation is object:
        return Subscription(handler, name, is_async, wants_payload=False)
    if isinstance(annotation, type) and issubclass(annotation, Event):
        args = annotation.__pydantic_generic_metadata__["args"]
        found = args[0] if args else Any
        wants_payload = False
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        found, wants_payload = annotation, True
    else:
        raise InvalidHandlerError(
            f"Handler {name} for {entry.name!r} annotates its argument as {annotation!r}; "
            f"expected Event[{expected.__name__}] or {expected.__name__}."
        )
    if found is not Any and not (isinstance(found, type) and issubclass(expected, found)):
        found_name = getattr(found, "__qualname__", repr(found))
        raise InvalidHandlerError(
            f"Handler {name} is subscribed to {entry.name!r}, whose payload model is "
            f"{expected.__module__}.{expected.__qualname__}, but its annotation names "
            f"{getattr(found, '__module__', '?')}.{found_name}."
        )
    return Subscription(handler, name, is_async, wants_payload)


def _first_annotation(
    handler: Handler, signature: inspect.Signature | None, name: str, entry: CatalogEntry
) -> Any:
    if signature is None or not signature.parameters:
        return None
    parameter = next(iter(signature.parameters.values()))
    if parameter.annotation is inspect.Parameter.empty:
        return None
    target = handler if inspect.isroutine(handler) else type(handler).__call__
    try:
        hints = typing.get_type_hints(target)
    except Exception as exc:
        raise InvalidHandlerError(
            f"Handler {name} for {entry.name!r} has an annotation that cannot be resolved: {exc}"
        ) from exc
    return hints.get(parameter.name)


_ACTOR_TYPES: dict[object, ActorType] = {
    **{member: member for member in ActorType},
    **{member.value: member for member in ActorType},
}

_dispatcher = EventDispatcher()


def get_event_dispatcher() -> EventDispatcher:
    """The process-wide dispatcher."""
    return _dispatcher


def event_handler(*event_types: object) -> Callable[[Handler], Handler]:
    """Subscribe the decorated function to each of ``event_types``.

    Put handlers in a ``handlers.py`` module of an installed app (see
    ``EVENTBUS['HANDLER_MODULES']``); they are discovered at start-up, and a
    miswired one fails ``manage.py check`` with ``eventbus.E005``/``E006``.
    """
    if not event_types:
        raise TypeError("event_handler() needs at least one event type")

    def decorator(func: Handler) -> Handler:
        for event_type in event_types:
            _dispatcher.declare(event_type, func)
        return func

    return decorator
