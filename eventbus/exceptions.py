"""Every error eventbus raises derives from :class:`EventBusError`.

Errors that mean bad input also subclass the matching builtin, so callers can
catch ``ValueError`` / ``LookupError`` / ``TypeError`` without importing us.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class EventBusError(Exception):
    """Base class of every eventbus error."""


class ImproperlyConfiguredCatalog(EventBusError):
    """A catalog cannot be loaded: wrong shape, or a type registered twice."""


class CatalogConflictError(ImproperlyConfiguredCatalog):
    """One event type is registered with two different payload models."""


class UnknownEventTypeError(EventBusError, LookupError):
    """The event type is not in any registered catalog."""

    def __init__(self, event_type: object) -> None:
        self.event_type = event_type
        super().__init__(
            f"Unknown event type {event_type!r}: it is not in any catalog named in "
            "EVENTBUS['CATALOGS']."
        )


class EventSchemaError(EventBusError, ValueError):
    """A payload does not match its event type's payload model.

    ``errors`` holds one ``(field_path, message)`` pair per bad field.
    """

    def __init__(self, event_type: str, errors: Sequence[tuple[str, str]]) -> None:
        self.event_type = event_type
        self.errors = list(errors)
        details = "; ".join(f"{path}: {message}" for path, message in self.errors)
        super().__init__(f"Invalid payload for event {event_type!r}: {details}")

    @classmethod
    def from_validation_error(cls, event_type: str, exc: ValidationError) -> EventSchemaError:
        errors = [
            (".".join(str(part) for part in error["loc"]) or "payload", error["msg"])
            for error in exc.errors()
        ]
        return cls(event_type, errors)


class InvalidHandlerError(EventBusError, TypeError):
    """A handler cannot receive the events it was subscribed to."""


class PayloadTooLargeError(EventBusError, ValueError):
    """A payload's JSON is larger than ``EVENTBUS['MAX_PAYLOAD_BYTES']``."""


class UnreadablePayloadError(EventBusError, ValueError):
    """A stored payload cannot be read as its type's current payload model."""


class InvalidChannelError(EventBusError, ValueError):
    """A channel name that Channels groups cannot hold."""


class InvalidCloudEventError(EventBusError, ValueError):
    """A CloudEvent that is not one of eventbus's events: a required attribute missing,
    another ``specversion``, data that is not JSON (``eventbus.export.from_cloudevent``)."""


class StreamReset(EventBusError):
    """A channel's stream skipped events the log could not give back.

    Raised by iterating a :class:`~eventbus.Subscription`; the subscription stays open.
    ``reason`` says why (``too_many_missed``, ``pruned``, ``log_unavailable``,
    ``epoch_changed``); reload what you built from the channel's events, then iterate
    again: the events after ``position`` follow.
    """

    def __init__(self, channel: str, reason: str, epoch: str, position: int) -> None:
        self.channel = channel
        self.reason = reason
        self.epoch = epoch
        self.position = position
        super().__init__(
            f"The stream of {channel} was reset ({reason}); events after position "
            f"{position} follow."
        )


class PresenceError(EventBusError):
    """Presence cannot be used: it is off (no ``PRESENCE`` hook), or the channel layer has
    no presence store (``eventbus.presence``)."""


class PresenceHookError(PresenceError, TypeError):
    """The ``PRESENCE`` hook answered something other than None or a JSON-safe dict of at
    most ``eventbus.presence.MAX_INFO_BYTES`` of JSON; the message names what."""
