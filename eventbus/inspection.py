"""Handlers: what each one wants, decided once when it is subscribed.

Whether a handler is async, and whether it takes the envelope or the bare payload,
is read from its signature here, so dispatch is a plain loop over :class:`Handler`
records. A handler whose annotation names another payload model is refused.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asgiref.sync import iscoroutinefunction
from pydantic import BaseModel

from .catalog import CatalogEntry
from .envelope import Event
from .exceptions import InvalidHandlerError

HandlerFunc = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Handler:
    """One callable subscribed to an event type, with what it wants from an event."""

    func: HandlerFunc
    name: str
    is_async: bool
    wants_payload: bool
    # Durable handlers run through the task framework (eventbus/durable.py).
    durable: bool = False
    max_attempts: int | None = None

    def argument(self, event: Event[Any]) -> Any:
        return event.payload if self.wants_payload else event


def dotted_name(obj: object) -> str:
    qualname = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{getattr(obj, '__module__', None) or type(obj).__module__}.{qualname}"


def inspect_handler(func: HandlerFunc, entry: CatalogEntry) -> Handler:
    name = dotted_name(func)
    if not callable(func):
        raise InvalidHandlerError(f"Handler {func!r} for {entry.name!r} is not callable.")
    try:
        signature: inspect.Signature | None = inspect.signature(func)
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
    is_async = iscoroutinefunction(func) or (
        not inspect.isroutine(func) and iscoroutinefunction(type(func).__call__)
    )
    annotation = _first_annotation(func, signature, name, entry)
    expected = entry.payload_model
    if annotation is None or annotation is Any or annotation is object:
        return Handler(func, name, is_async, wants_payload=False)
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
    return Handler(func, name, is_async, wants_payload)


def _first_annotation(
    handler: HandlerFunc, signature: inspect.Signature | None, name: str, entry: CatalogEntry
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
