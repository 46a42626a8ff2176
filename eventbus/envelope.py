"""The :class:`Event` envelope: one typed payload plus who, when, where and why.

Ids are UUIDv7 (time-ordered, unique across processes). An event created while
a handler handles another event inherits that event's correlation id and takes
its id as causation id, so chains are traceable without passing ids around.
Both ways of making an event (``Event(...)`` and ``publish()``) take their
defaults from :func:`_fill_defaults`, the one place that rule lives.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Generic, TypedDict, TypeVar
from uuid import UUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    model_validator,
)

from .catalog import CatalogEntry, catalog
from .exceptions import EventSchemaError
from .ids import ObjectKey, parse_key, parse_uuid, uuid7

Key = Annotated[ObjectKey, BeforeValidator(parse_key)]
"""A project or actor key as the envelope holds it: a UUID, an int or a short string."""

_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")


def parse_traceparent(value: object) -> str | None:
    """A W3C ``traceparent`` (version 00), or None for anything else.

    The W3C rule: a receiver ignores a trace context it cannot read and starts anew, so
    an event with a bad one still reads, without it.
    """
    if isinstance(value, str) and _TRACEPARENT.fullmatch(value):
        return value
    return None


Traceparent = Annotated[str | None, BeforeValidator(parse_traceparent)]

if TYPE_CHECKING:
    from .models import HandlerRun

PayloadT = TypeVar("PayloadT", bound=BaseModel)

_current_event: ContextVar[Event[Any] | None] = ContextVar("eventbus_current_event", default=None)


def current_event() -> Event[Any] | None:
    """The event whose handlers are running in this context, if any."""
    return _current_event.get()


# The durable run being executed (a HandlerRun row; eventbus/durable.py sets it).
_current_run: ContextVar[Any] = ContextVar("eventbus_current_run", default=None)


def current_run() -> HandlerRun | None:
    """The run being executed, inside a durable handler; else None.

    ``current_run().idempotency_key`` (event id and handler) is what to pass to other
    systems, so that a repeated run is recognised there too.
    """
    return _current_run.get()  # type: ignore[no-any-return]


class ActorType(enum.StrEnum):
    AGENT = "agent"
    USER = "user"
    SYSTEM = "system"


class EnvelopeFields(TypedDict, total=False):
    """The envelope fields a publisher may set; every other field is filled in."""

    project_id: ObjectKey | None
    actor_id: ObjectKey | None
    actor_type: ActorType | str
    correlation_id: UUID | str | None
    causation_id: UUID | str | None


class Event(BaseModel, Generic[PayloadT]):
    """A domain event. ``Event(type=..., payload=...)`` is enough; the rest defaults.

    ``type`` accepts the catalog's enum member or its string and always holds the
    member. ``payload`` accepts a dict or the payload model and is validated
    against the catalog model of ``type``. ``Event[TicketCreated]`` narrows the
    payload's static type.
    """

    model_config = ConfigDict(frozen=True)

    id: UUID
    type: enum.Enum
    timestamp: AwareDatetime
    project_id: Key | None = None
    actor_id: Key | None = None
    actor_type: ActorType = ActorType.SYSTEM
    payload: PayloadT
    correlation_id: UUID
    causation_id: UUID | None = None
    # The publisher's trace (eventbus.tracing); left out of the JSON when there is none,
    # so events published without tracing read and write as before.
    traceparent: Traceparent = Field(
        default=None,
        exclude_if=lambda value: value is None,
        json_schema_extra={"pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"},
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_from_catalog_and_context(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        entry = catalog.resolve(data.get("type"))
        data["type"] = entry.member
        model = entry.payload_model
        expected = cls.__pydantic_generic_metadata__["args"]
        if expected and not issubclass(model, expected[0]):
            raise ValueError(
                f"{cls.__name__} expects payload model {expected[0].__name__}, but the catalog "
                f"maps {entry.name!r} to {model.__name__}"
            )
        payload = data.get("payload")
        if isinstance(payload, BaseModel) and not isinstance(payload, model):
            raise ValueError(
                f"payload for {entry.name!r} must be {model.__name__}, not {type(payload).__name__}"
            )
        if not isinstance(payload, BaseModel):
            data["payload"] = model.model_validate(payload)
        return _fill_defaults(data)

    @model_validator(mode="after")
    def _timestamp_in_utc(self) -> Event[PayloadT]:
        if self.timestamp.utcoffset():
            object.__setattr__(self, "timestamp", self.timestamp.astimezone(UTC))
        return self

    @classmethod
    def _trusted(cls, fields: dict[str, Any]) -> Event[Any]:
        """Build from fields validated already (by :func:`new_event` or a log row).

        The same as ``model_construct`` with every field given, at a fifth of the cost.
        """
        event = cls.__new__(cls)
        object.__setattr__(event, "__dict__", fields)
        object.__setattr__(event, "__pydantic_fields_set__", _ALL_FIELDS)
        object.__setattr__(event, "__pydantic_extra__", None)
        object.__setattr__(event, "__pydantic_private__", None)
        return event

    @field_serializer("type")
    def _type_value(self, member: enum.Enum) -> str:
        return str(member.value)


_ALL_FIELDS = frozenset(Event.model_fields)


def _fill_defaults(fields: dict[str, Any]) -> dict[str, Any]:
    """A new id, now, and the chain of the event being handled, where not given.

    Only a new event (one without an id) joins the handled event's chain: an event
    rebuilt from JSON or a row keeps the causation it had, none included.
    """
    new = fields.get("id") is None
    if new:
        fields["id"] = uuid7()
    if fields.get("timestamp") is None:
        fields["timestamp"] = datetime.now(UTC)
    if new:
        fields["correlation_id"], fields["causation_id"] = _chain(
            fields["id"], fields.get("correlation_id"), fields.get("causation_id")
        )
    elif fields.get("correlation_id") is None:
        fields["correlation_id"] = fields["id"]
    return fields


def _chain(
    event_id: UUID, correlation_id: UUID | None, causation_id: UUID | None
) -> tuple[UUID, UUID | None]:
    """The correlation and causation ids: given ones win, else the handled event's chain."""
    parent = _current_event.get()
    if parent is None:
        return correlation_id or event_id, causation_id
    return correlation_id or parent.correlation_id, causation_id or parent.id


def validate_payload(entry: CatalogEntry, payload: object) -> BaseModel:
    """``payload`` (the model or a mapping) as ``entry``'s model, or EventSchemaError."""
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


def new_event(
    entry: CatalogEntry,
    payload: BaseModel,
    fields: EnvelopeFields,
    traceparent: str | None = None,
) -> Event[Any]:
    """A new event of ``entry`` around a validated payload (what ``publish()`` builds).

    ``traceparent`` is the publish span's (``eventbus.tracing``). Raises
    :class:`EventSchemaError` naming each envelope field that is not valid.
    """
    project_id = fields.get("project_id")
    actor_id = fields.get("actor_id")
    correlation_id = fields.get("correlation_id")
    causation_id = fields.get("causation_id")
    actor_type = _actor_type(fields.get("actor_type", ActorType.SYSTEM))
    ids = (project_id, actor_id, correlation_id, causation_id)
    if actor_type is None or not all(value is None or type(value) is UUID for value in ids):
        project_id, actor_id, correlation_id, causation_id = _parse_envelope(entry, fields)
    event_id = uuid7()
    correlation_id, causation_id = _chain(event_id, correlation_id, causation_id)  # type: ignore[arg-type]
    # Every field is valid by now, so skip Pydantic's second pass.
    return Event._trusted(
        {
            "id": event_id,
            "type": entry.member,
            "timestamp": datetime.now(UTC),
            "project_id": project_id,
            "actor_id": actor_id,
            "actor_type": actor_type,
            "payload": payload,
            "correlation_id": correlation_id,
            "causation_id": causation_id,
            "traceparent": traceparent,
        }
    )


def _parse_envelope(entry: CatalogEntry, fields: EnvelopeFields) -> list[Any]:
    """The key and id fields parsed; EventSchemaError naming every field that is not valid."""
    errors: list[tuple[str, str]] = []
    parsed: list[Any] = []
    for name, parse in _ENVELOPE_PARSERS:
        value = fields.get(name)
        try:
            parsed.append(None if value is None else parse(value))
        except ValueError as exc:
            errors.append((name, str(exc)))
            parsed.append(None)
    if _actor_type(fields.get("actor_type", ActorType.SYSTEM)) is None:
        errors.append(("actor_type", f"must be one of {', '.join(ActorType)}"))
    if errors:
        raise EventSchemaError(entry.name, errors)
    return parsed


_ENVELOPE_PARSERS: tuple[tuple[str, Any], ...] = (
    ("project_id", parse_key),
    ("actor_id", parse_key),
    ("correlation_id", parse_uuid),
    ("causation_id", parse_uuid),
)

_ACTOR_TYPES: dict[object, ActorType] = {
    **{member: member for member in ActorType},
    **{member.value: member for member in ActorType},
}


def _actor_type(value: object) -> ActorType | None:
    try:
        return _ACTOR_TYPES.get(value)
    except TypeError:  # unhashable
        return None
