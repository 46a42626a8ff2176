"""The wire format: an event as JSON, for the log, the channel layer and the socket.

Every encoding of an event lives here, as channels_redis keeps its serialization in
one place: the payload JSON stored in the log (with the size limit), the public JSON
that leaves the process (``private_fields`` removed), the channel-layer message that
carries it, and the WebSocket frames built around it (docs/protocol.md).
"""

from __future__ import annotations

import functools
import json
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError

from . import conf
from .catalog import CatalogEntry, catalog
from .envelope import Event
from .exceptions import EventSchemaError, PayloadTooLargeError

MESSAGE_TYPE = "eventbus.event"
"""The ``type`` of eventbus's channel-layer messages (read by the fan-out, never a handler)."""


def payload_json(event: Event[Any]) -> bytes:
    """The payload as JSON; refuses what cannot be stored or sent.

    Raises :class:`EventSchemaError` for data JSON cannot hold and
    :class:`PayloadTooLargeError` past ``EVENTBUS['MAX_PAYLOAD_BYTES']``.
    """
    try:
        raw: bytes = event.payload.__pydantic_serializer__.to_json(event.payload)
    except (PydanticSerializationError, ValueError, TypeError) as exc:
        raise EventSchemaError(
            str(event.type.value), [("payload", f"is not JSON-serializable: {exc}")]
        ) from exc
    limit = conf.get_settings().MAX_PAYLOAD_BYTES
    if len(raw) > limit:
        raise PayloadTooLargeError(
            f"Payload of {event.type.value!r} is {len(raw)} bytes of JSON, over the limit of "
            f"{limit} (EVENTBUS['MAX_PAYLOAD_BYTES'])."
        )
    return raw


def public_json(event: Event[Any], entry: CatalogEntry | None = None) -> str:
    """The event as JSON without its type's ``private_fields``."""
    private = (entry or catalog.resolve(event.type)).spec.private_fields
    if not private:
        return event.model_dump_json()
    # Excluded by field name, so a field serialized under an alias is left out too.
    data = event.model_dump(mode="json", exclude={"payload": set(private)})
    return json.dumps(data, separators=(",", ":"))


def parse_event(raw: str | bytes) -> Event[Any]:
    """Rebuild an event from :func:`public_json`; private fields stay unset."""
    try:
        return Event.model_validate_json(raw)
    except ValidationError:
        data = json.loads(raw)
        entry = catalog.resolve(data["type"])
        if not entry.spec.private_fields:
            raise
        # The payload lacks its private fields on purpose: keep the rest, typed.
        model = entry.payload_model
        partial = {
            name: _coerce(model.model_fields[name].annotation, value)
            for name, value in data["payload"].items()
            if name in model.model_fields
        }
        data["payload"] = model.model_construct(**partial)
        return Event.model_validate(data)


def _coerce(annotation: Any, value: Any) -> Any:
    return TypeAdapter(annotation).validate_python(value)


def layer_message(
    event: Event[Any], channel: str, raw: str | None = None, position: int | None = None
) -> dict[str, Any]:
    """The channel-layer message that carries ``event`` (its public JSON) to ``channel``.

    id, event_type and the position on ``channel`` ride along so the fan-out and sockets
    can order, filter and dedupe without parsing the event (and ``traceparent``, when the
    event has one, so the fan-out's span joins its trace). No position: the event is
    not in the log (``EventSpec(log=False)``, ``EventBus.send``), so live only.
    """
    message: dict[str, Any] = {
        "type": MESSAGE_TYPE,
        "channel": channel,
        "id": str(event.id),
        "event_type": str(event.type.value),
        "event": raw or public_json(event),
    }
    if position is not None:
        message["position"] = position
    if event.traceparent is not None:
        message["traceparent"] = event.traceparent
    return message


def frame_json(frame: dict[str, Any]) -> str:
    """A control frame (``subscribed``, ``error``, ...) as compact JSON."""
    return json.dumps(frame, separators=(",", ":"))


@functools.lru_cache(maxsize=16)
def event_frame(channel: str, raw_event: str, position: int | None = None) -> str:
    """The ``event`` frame around an event's public JSON, with its position on ``channel``.

    The event is JSON already: splice it in rather than parse and dump it again. The
    fan-out asks once per socket for the same event: build the frame once, and let
    every socket's queue share it.
    """
    where = "" if position is None else f',"position":{int(position)}'
    return f'{{"type":"event","channel":{json.dumps(channel)}{where},"event":{raw_event}}}'


def presence_frame(channel: str, kind: str, key: str, raw_info: str) -> str:
    """A ``presence`` frame of one join or leave; ``raw_info`` is the stored JSON."""
    return (
        f'{{"type":"presence","channel":{json.dumps(channel)},"kind":{json.dumps(kind)},'
        f'"user":{{"key":{json.dumps(key)},"info":{raw_info}}}}}'
    )
