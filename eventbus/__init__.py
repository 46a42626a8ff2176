"""Typed domain events for Django.

The public API is ``__all__``; every other name is private and may change. The module
map, with each module's one job and the path of one event through them, is in
docs/architecture.md: catalog and envelope -> dispatcher (validate, store, commit,
hand off, dispatch, signal) -> log and relay -> bus, fan-out and consumer.
"""

from __future__ import annotations

from .bridge import ModelEvents, OnChange, OnCreate, OnDelete
from .bus import EventBus, Subscription, get_event_bus
from .catalog import EventSpec
from .dispatcher import EventDispatcher, event_handler, get_event_dispatcher
from .envelope import ActorType, Event, current_event, current_run
from .exceptions import (
    CatalogConflictError,
    EventBusError,
    EventSchemaError,
    ImproperlyConfiguredCatalog,
    InvalidChannelError,
    InvalidHandlerError,
    PayloadTooLargeError,
    PresenceError,
    PresenceHookError,
    StreamReset,
    UnknownEventTypeError,
)
from .presence import Presence, PresentUser
from .signals import event_published

__all__ = [
    "ActorType",
    "CatalogConflictError",
    "Event",
    "EventBus",
    "EventBusError",
    "EventDispatcher",
    "EventSchemaError",
    "EventSpec",
    "ImproperlyConfiguredCatalog",
    "InvalidChannelError",
    "InvalidHandlerError",
    "ModelEvents",
    "OnChange",
    "OnCreate",
    "OnDelete",
    "PayloadTooLargeError",
    "Presence",
    "PresenceError",
    "PresenceHookError",
    "PresentUser",
    "StreamReset",
    "Subscription",
    "UnknownEventTypeError",
    "apublish",
    "current_event",
    "current_run",
    "event_handler",
    "event_published",
    "get_event_bus",
    "get_event_dispatcher",
    "publish",
]


publish = get_event_dispatcher().publish
"""Publish through the process-wide dispatcher; see :meth:`EventDispatcher.publish`."""

apublish = get_event_dispatcher().apublish
"""Async twin of :func:`publish`; see :meth:`EventDispatcher.apublish`."""
