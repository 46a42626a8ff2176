"""The catalog in formats other tools read: JSON Schema, AsyncAPI, TypeScript, CloudEvents.

Everything here describes what leaves the process, as ``eventbus.wire`` makes it: the
public JSON of an event (its type's ``private_fields`` left out) and the WebSocket
frames of docs/protocol.md. Payload schemas come from Pydantic
(``model_json_schema(mode="serialization")``), so they say what the JSON holds, not what
a publisher may pass. ``manage.py eventbus_catalog`` prints each of them; nothing here
runs at import.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic.json_schema import GenerateJsonSchema, models_json_schema
from pydantic_core import core_schema

from .catalog import Catalog, CatalogEntry, catalog
from .envelope import Event, _current_event, validate_payload
from .exceptions import EventSchemaError, InvalidCloudEventError
from .wire import _coerce, public_json

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
ASYNCAPI_VERSION = "3.0.0"
CLOUDEVENTS_SPECVERSION = "1.0"
DEFAULT_SOURCE = "/eventbus"
"""The CloudEvents ``source`` of :func:`to_cloudevent` unless the caller gives one."""

# The protocol's words (docs/protocol.md): the frames' schemas and the .d.ts list them.
RESET_REASONS = (
    "since_unknown",
    "position_unknown",
    "epoch_changed",
    "pruned",
    "too_many_missed",
    "log_unavailable",
    "replay_limited",
)
ERROR_CODES = (
    "invalid_json",
    "binary_not_supported",
    "frame_too_large",
    "unknown_action",
    "missing_field",
    "invalid_field",
    "invalid_channel",
    "too_many_subscriptions",
    "forbidden",
    "not_subscribed",
    "unavailable",
    "no_presence",
    "presence_unavailable",
    "rate_limited",
)
UNSUBSCRIBE_REASONS = ("requested", "forbidden")

_REF = "#/$defs/{model}"
_CHANNEL = {
    "type": "string",
    "pattern": "^[A-Za-z0-9._-]{1,90}$",
    "description": "A channel name: eventbus.project.<key>, eventbus.agent.<key>, or a "
    "custom router's.",
}
_POSITION = {"type": "integer", "minimum": 0}
_EPOCH = {"type": "string", "maxLength": 16}
# Names this module gives its own definitions; a payload model's definition of the
# same name is renamed instead.
_OWN_DEFS = (
    "Event",
    "EventFrame",
    "SubscribedFrame",
    "ResetFrame",
    "UnsubscribedFrame",
    "PongFrame",
    "ErrorFrame",
    "ServerFrame",
    "SubscribeAction",
    "UnsubscribeAction",
    "PingAction",
    "ClientFrame",
    "CloudEvent",
)


# -- payload and envelope schemas ---------------------------------------------------------


class _WireJsonSchema(GenerateJsonSchema):
    """Serialization schemas in which every field the JSON always holds is required.

    ``model_dump_json()`` writes fields that have defaults too, so a reader (and a
    TypeScript type) may count on them.
    """

    def field_is_required(
        self,
        field: core_schema.ModelField | core_schema.DataclassField | core_schema.TypedDictField,
        total: bool,
    ) -> bool:
        if self.mode == "serialization" and field["type"] != "typed-dict-field":
            return field.get("serialization_exclude_if") is None
        return super().field_is_required(field, total)


@dataclass(frozen=True)
class _Schemas:
    """The public payload of each type and every definition they use, refs ``#/$defs/``."""

    entries: tuple[CatalogEntry, ...]
    payloads: dict[str, str]  # event type -> name of its public payload's definition
    defs: dict[str, dict[str, Any]]
    envelope: dict[str, Any]  # the envelope's properties but type and payload
    key: dict[str, Any]  # a project or actor key (not null)
    optional: frozenset[str]  # envelope properties the JSON may leave out (traceparent)

    def payload_ref(self, entry: CatalogEntry) -> str:
        return _REF.format(model=self.payloads[entry.name])

    def event(self, entry: CatalogEntry) -> dict[str, Any]:
        """The public JSON of one type's events."""
        properties = {name: self.envelope.get(name) for name in Event.model_fields}
        properties["type"] = {"const": entry.name}
        properties["payload"] = {"$ref": self.payload_ref(entry)}
        return {
            "type": "object",
            "title": f"{entry.name} event",
            "description": f"An event of type {entry.name} (payload version "
            f"{entry.spec.version}), as wire.public_json() makes it.",
            "properties": properties,
            "required": [name for name in properties if name not in self.optional],
        }


def _schemas(event_catalog: Catalog | None, broadcast_only: bool = False) -> _Schemas:
    entries = tuple(
        entry
        for entry in (event_catalog if event_catalog is not None else catalog)
        if entry.spec.broadcast or not broadcast_only
    )
    models = list(dict.fromkeys(entry.payload_model for entry in entries))
    refs, top = models_json_schema(
        [(Event, "serialization"), *((model, "serialization") for model in models)],
        by_alias=False,
        ref_template=_REF,
        schema_generator=_WireJsonSchema,
    )
    defs: dict[str, dict[str, Any]] = top.get("$defs", {})
    event_def = defs.pop(_ref_name(refs[(Event, "serialization")]))
    payload_bound = event_def["properties"]["payload"]
    envelope = {
        name: prop
        for name, prop in event_def["properties"].items()
        if name not in ("type", "payload")
    }
    optional = frozenset(envelope) - set(event_def.get("required", ()))
    # Left out when None (Event.traceparent): when it is there, it is a string.
    envelope["traceparent"] = _not_null(envelope["traceparent"])
    key = {
        "anyOf": [part for part in envelope["project_id"]["anyOf"] if part.get("type") != "null"],
        "description": "A key: a UUID, an integer, or 1 to 64 letters, digits, '-' or '_'.",
    }
    base = {model: _ref_name(refs[(model, "serialization")]) for model in models}
    if "$ref" in payload_bound:  # the generic envelope's BaseModel: nobody's payload
        defs.pop(_ref_name(payload_bound), None)
    # A definition reached from another one, or the payload of a type with no private
    # field, is needed whole; a type that drops fields from it gets a copy of its own.
    whole = {ref for schema in defs.values() for ref in _ref_names(schema)}
    whole |= {base[entry.payload_model] for entry in entries if not entry.spec.private_fields}
    original = copy.deepcopy(defs)
    payloads: dict[str, str] = {}
    public: dict[tuple[str, frozenset[str]], str] = {}  # (model's def, private) -> def
    for entry in entries:
        name = base[entry.payload_model]
        private = entry.spec.private_fields
        if private:
            if (name, private) not in public:
                taken = name in whole or any(model == name for model, _ in public)
                new = _unique(f"{name}Public", defs) if taken else name
                defs[new] = _without(original[name], private)
                public[(name, private)] = new
            name = public[(name, private)]
        payloads[entry.name] = name
    kept = _reachable(defs, [*payloads.values(), *_ref_names(envelope)])
    renames = {name: _unique(name, {*kept, *_OWN_DEFS}) for name in kept if name in _OWN_DEFS}
    if renames:
        kept = {renames.get(name, name): _renamed(schema, renames) for name, schema in kept.items()}
        payloads = {event_type: renames.get(name, name) for event_type, name in payloads.items()}
        envelope = _renamed(envelope, renames)
    return _Schemas(entries, payloads, kept, envelope, key, optional)


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` without its ``null`` branch (``anyOf: [X, null]`` becomes ``X``)."""
    branches = [part for part in schema.get("anyOf", ()) if part.get("type") != "null"]
    if len(branches) != 1:
        return schema
    rest = {key: value for key, value in schema.items() if key not in ("anyOf", "default")}
    return {**branches[0], **rest}


def _without(schema: dict[str, Any], private: frozenset[str]) -> dict[str, Any]:
    """A payload's schema without the fields wire.public_json() leaves out."""
    public = dict(schema)
    public["properties"] = {
        name: prop for name, prop in schema.get("properties", {}).items() if name not in private
    }
    if "required" in schema:
        public["required"] = [name for name in schema["required"] if name not in private]
    return public


def payload_schema(event_type: object, event_catalog: Catalog | None = None) -> dict[str, Any]:
    """The JSON Schema (2020-12) of one type's public payload, on its own.

    Raises :class:`UnknownEventTypeError` for a type not in the catalog.
    """
    event_catalog = event_catalog if event_catalog is not None else catalog
    entry = event_catalog.resolve(event_type)
    single = Catalog()
    single.register({entry.member: entry.spec}, source=entry.source)
    schemas = _schemas(single)
    name = schemas.payloads[entry.name]
    root = schemas.defs[name]
    used = _reachable(schemas.defs, _ref_names(root))
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        **root,
        **({"$defs": used} if used else {}),
    }


def json_schema(event_catalog: Catalog | None = None) -> dict[str, Any]:
    """One JSON Schema (2020-12) document for everything eventbus sends as JSON.

    The document validates an event's public JSON (``#/$defs/Event``: one branch per
    type, each with its payload); ``#/$defs/ServerFrame`` and ``#/$defs/ClientFrame``
    validate WebSocket frames, and every payload has its definition.
    """
    schemas = _schemas(event_catalog)
    defs = dict(schemas.defs)
    defs["Event"] = {
        "title": "Event",
        "description": "An event's public JSON: its type's private fields are left out.",
        "oneOf": [schemas.event(entry) for entry in schemas.entries],
    }
    defs.update(_frame_defs(lambda name: _REF.format(model=name), {"$ref": "#/$defs/Event"}))
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": "eventbus events",
        "description": "Validates an event's public JSON. The WebSocket frames are "
        "#/$defs/ServerFrame and #/$defs/ClientFrame (docs/protocol.md).",
        "$ref": "#/$defs/Event",
        "$defs": defs,
    }


def _frame_defs(ref: Callable[[str], str], event: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The frames of docs/protocol.md; ``event`` is the schema of an event frame's event."""

    def frame(
        title: str, description: str, optional: tuple[str, ...] = (), **properties: Any
    ) -> dict[str, Any]:
        return {
            "type": "object",
            "title": title,
            "description": description,
            "properties": properties,
            "required": [name for name in properties if name not in optional],
        }

    nullable = {"type": ["string", "null"]}
    return {
        "EventFrame": frame(
            "EventFrame",
            "An event of the channel. No position: the event is kept out of the log "
            "(live only, at most once).",
            optional=("position",),
            type={"const": "event"},
            channel=_CHANNEL,
            position={**_POSITION, "minimum": 1},
            event=event,
        ),
        "SubscribedFrame": frame(
            "SubscribedFrame",
            "The subscription is on: `replayed` events follow, then live ones.",
            type={"const": "subscribed"},
            channel=_CHANNEL,
            replayed={"type": "integer", "minimum": 0},
            epoch=_EPOCH,
            position=_POSITION,
        ),
        "ResetFrame": frame(
            "ResetFrame",
            "The server cannot vouch for the events before `position`: reload your "
            "state; the events after it follow.",
            type={"const": "reset"},
            channel=_CHANNEL,
            reason={"enum": list(RESET_REASONS)},
            epoch=_EPOCH,
            position=_POSITION,
        ),
        "UnsubscribedFrame": frame(
            "UnsubscribedFrame",
            "The socket left the channel: asked to, or its access ended.",
            type={"const": "unsubscribed"},
            channel=_CHANNEL,
            reason={"enum": list(UNSUBSCRIBE_REASONS)},
        ),
        "PresenceFrame": frame(
            "PresenceFrame",
            "Who is on the channel (after a subscribe with `presence: true`): a "
            "`snapshot` of every present user, then each user's `join` (its first "
            "connection) and `leave` (its last).",
            optional=("users", "user"),
            type={"const": "presence"},
            channel=_CHANNEL,
            kind={"enum": ["snapshot", "join", "leave"]},
            users={
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "key": {"type": "string"},
                        "info": {"type": "object"},
                        "connections": {"type": "integer", "minimum": 1},
                    },
                    "required": ["key", "info", "connections"],
                },
            },
            user={
                "type": "object",
                "properties": {"key": {"type": "string"}, "info": {"type": "object"}},
                "required": ["key", "info"],
            },
        ),
        "PongFrame": frame("PongFrame", "The answer to a ping.", type={"const": "pong"}),
        "ErrorFrame": frame(
            "ErrorFrame",
            "A client frame the server refused; the connection stays up.",
            type={"const": "error"},
            code={"enum": list(ERROR_CODES)},
            message={"type": "string"},
            action=nullable,
            channel=nullable,
        ),
        "ServerFrame": {
            "title": "ServerFrame",
            "description": "A frame the server sends.",
            "oneOf": [
                {"$ref": ref(name)}
                for name in (
                    "EventFrame",
                    "SubscribedFrame",
                    "ResetFrame",
                    "UnsubscribedFrame",
                    "PresenceFrame",
                    "PongFrame",
                    "ErrorFrame",
                )
            ],
        },
        "SubscribeAction": frame(
            "SubscribeAction",
            "Receive a channel's events: those after `position` (with its `epoch`) "
            "first, then live ones; only the types matching `types` (shell-style); "
            "with `presence`, the channel's presence frames too.",
            optional=("position", "epoch", "since", "types", "presence"),
            action={"const": "subscribe"},
            channel=_CHANNEL,
            position={"type": ["integer", "null"], "minimum": 0},
            epoch={"type": ["string", "null"], "maxLength": 16},
            since={"type": ["string", "null"], "format": "uuid"},
            types={
                "type": ["array", "null"],
                "items": {"type": "string", "minLength": 1, "maxLength": 200},
                "maxItems": 50,
            },
            presence={"type": "boolean"},
        ),
        "UnsubscribeAction": frame(
            "UnsubscribeAction",
            "Leave a channel.",
            action={"const": "unsubscribe"},
            channel=_CHANNEL,
        ),
        "PingAction": frame("PingAction", "Keep the connection alive.", action={"const": "ping"}),
        "ClientFrame": {
            "title": "ClientFrame",
            "description": "A frame a client sends.",
            "oneOf": [
                {"$ref": ref(name)}
                for name in ("SubscribeAction", "UnsubscribeAction", "PingAction")
            ],
        },
    }


# -- AsyncAPI -------------------------------------------------------------------------------

_ASYNCAPI_REF = "#/components/schemas/{model}"
# Message name -> the frame's schema, for the socket's control messages.
_CLIENT_ACTIONS = (
    ("subscribe", "SubscribeAction"),
    ("unsubscribe", "UnsubscribeAction"),
    ("ping", "PingAction"),
)
_SERVER_FRAMES = (
    ("subscribed", "SubscribedFrame"),
    ("reset", "ResetFrame"),
    ("unsubscribed", "UnsubscribedFrame"),
    ("presence", "PresenceFrame"),
    ("pong", "PongFrame"),
    ("error", "ErrorFrame"),
)


def asyncapi_document(
    event_catalog: Catalog | None = None, *, title: str = "eventbus", version: str = "1.0.0"
) -> dict[str, Any]:
    """An AsyncAPI 3.0 document of the WebSocket API, seen from the server.

    The socket carries the client's actions and the control frames; the project and
    agent channels carry one message per event type that is broadcast, its payload
    the event frame with that type's public payload.
    """
    schemas = _schemas(event_catalog, broadcast_only=True)
    ref = _ASYNCAPI_REF.format

    def draft7(schema: dict[str, Any]) -> dict[str, Any]:
        converted: dict[str, Any] = _draft7(_renamed(schema, {}, template=_ASYNCAPI_REF))
        return converted

    frames = _frame_defs(lambda name: ref(model=name), {})
    components_schemas = {name: draft7(schema) for name, schema in schemas.defs.items()}
    components_schemas.update(
        {name: frames[name] for name in frames if name not in ("EventFrame", "ServerFrame")}
    )
    messages = {
        name: {
            "name": name,
            "title": frame_name,
            "summary": frames[frame_name]["description"],
            "payload": {"$ref": ref(model=frame_name)},
        }
        for name, frame_name in (*_CLIENT_ACTIONS, *_SERVER_FRAMES)
    }
    event_messages: list[str] = []
    for entry in schemas.entries:
        key = _unique(_component_key(entry.name), messages)
        event_messages.append(key)
        frame = copy.deepcopy(frames["EventFrame"])
        frame["title"] = f"{entry.name} frame"
        frame["properties"]["event"] = draft7(schemas.event(entry))
        messages[key] = {
            "name": entry.name,
            "title": entry.name,
            "summary": f"An event of type {entry.name}, payload "
            f"{entry.payload_model.__name__} (version {entry.spec.version}).",
            "contentType": "application/json",
            "correlationId": {
                "description": "The id of the event that started the chain.",
                "location": "$message.payload#/event/correlation_id",
            },
            "payload": frame,
            "x-eventbus-version": entry.spec.version,
        }

    def channel_messages(keys: Iterable[str]) -> dict[str, Any]:
        return {key: {"$ref": f"#/components/messages/{key}"} for key in keys}

    key_parameter = (
        "The {what}'s key: a UUID as 32 hex digits, an integer or a string of 1 to 64 "
        "letters, digits, '-' or '_'."
    )
    channels = {
        "socket": {
            "address": "/ws/events/",
            "title": "The WebSocket",
            "description": "One connection per client, where the project's ASGI routing "
            "mounts eventbus.routing.websocket_application() (the demo: /ws/events/). "
            "It carries the client's actions and the server's control frames.",
            "messages": channel_messages(name for name, _ in (*_CLIENT_ACTIONS, *_SERVER_FRAMES)),
        },
        "project": {
            "address": "eventbus.project.{project_key}",
            "title": "A project's events",
            "description": "Every broadcast event with this project_id (the default "
            "router), multiplexed on the socket after a subscribe.",
            "parameters": {"project_key": {"description": key_parameter.format(what="project")}},
            "messages": channel_messages(event_messages),
        },
        "agent": {
            "address": "eventbus.agent.{agent_key}",
            "title": "An agent's events",
            "description": "Every broadcast event whose payload has this agent_id, or "
            "whose actor is this agent (the default router).",
            "parameters": {"agent_key": {"description": key_parameter.format(what="agent")}},
            "messages": channel_messages(event_messages),
        },
    }

    def operation(
        action: str, channel: str, keys: Iterable[str], summary: str, reply: str | None = None
    ) -> dict[str, Any]:
        op: dict[str, Any] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": summary,
            "messages": [{"$ref": f"#/channels/{channel}/messages/{key}"} for key in keys],
        }
        if reply is not None:
            op["reply"] = {
                "channel": {"$ref": f"#/channels/{channel}"},
                "messages": [{"$ref": f"#/channels/{channel}/messages/{reply}"}],
            }
        return op

    operations = {
        "receiveSubscribe": operation(
            "receive", "socket", ["subscribe"], "A client subscribes to a channel.", "subscribed"
        ),
        "receiveUnsubscribe": operation(
            "receive", "socket", ["unsubscribe"], "A client leaves a channel.", "unsubscribed"
        ),
        "receivePing": operation("receive", "socket", ["ping"], "A client pings.", "pong"),
        "sendControlFrames": operation(
            "send",
            "socket",
            [name for name, _ in _SERVER_FRAMES],
            "Control frames: subscribed, reset, unsubscribed, presence, pong, errors.",
        ),
        "sendProjectEvents": operation(
            "send", "project", event_messages, "A project's events, in position order."
        ),
        "sendAgentEvents": operation(
            "send", "agent", event_messages, "An agent's events, in position order."
        ),
    }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": title,
            "version": version,
            "description": "eventbus's WebSocket protocol (docs/protocol.md) and the event "
            "catalog: JSON text frames; private fields never leave the server.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "app": {
                "host": "{host}",
                "protocol": "wss",
                "pathname": "/ws/events/",
                "description": "Your site, where its ASGI routing serves eventbus.",
                "variables": {"host": {"default": "localhost:8000"}},
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": components_schemas, "messages": messages},
    }


def _component_key(name: str) -> str:
    """A component key AsyncAPI accepts (letters, digits, '.', '-', '_')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"


def _draft7(schema: Any) -> Any:
    """A 2020-12 schema in the dialect AsyncAPI 3.0 reads (JSON Schema draft 7 and more)."""
    if isinstance(schema, list):
        return [_draft7(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _draft7(value) for key, value in schema.items()}
    if "prefixItems" in out:
        items = out.pop("items", None)
        out["items"] = out.pop("prefixItems")
        if items is not None:
            out["additionalItems"] = items
    discriminator = out.get("discriminator")
    if isinstance(discriminator, dict):  # OpenAPI's object; AsyncAPI's is the property name
        out["discriminator"] = discriminator.get("propertyName")
    return out


# -- TypeScript -----------------------------------------------------------------------------

_IDENTIFIER = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*\Z")
_TS_RESERVED = {"EventPayloads", "EventType"}


def typescript_declarations(event_catalog: Catalog | None = None) -> str:
    """TypeScript declarations of the broadcast types' public payloads, for eventbus.d.ts.

    ``EventPayloads`` maps each type to its payload; ``new EventBusClient<EventPayloads>()``
    then narrows ``event.payload`` by ``event.type``.
    """
    schemas = _schemas(event_catalog, broadcast_only=True)
    defs = _reachable(schemas.defs, schemas.payloads.values())
    names: dict[str, str] = {}
    for def_name in defs:
        names[def_name] = _unique(_ts_identifier(def_name), {*names.values(), *_TS_RESERVED})
    lines = [
        "// The event catalog's payloads, for eventbus.js (see eventbus.d.ts).",
        "// Generated by `python manage.py eventbus_catalog --format typescript`: do not edit.",
        "// Private fields and types that are not broadcast are left out: they never reach",
        "// a browser.",
        "",
    ]
    for def_name, schema in defs.items():
        lines.extend(_ts_comment(schema.get("description"), ""))
        lines.append(_ts_declaration(names[def_name], schema, names))
        lines.append("")
    lines.append("/** Each event type that reaches the WebSocket, with its payload. */")
    lines.append("export interface EventPayloads {")
    for entry in schemas.entries:
        lines.append(f"  /** {_comment_text(entry.name)} (payload version {entry.spec.version}) */")
        lines.append(f"  {_ts_key(entry.name)}: {names[schemas.payloads[entry.name]]};")
    lines.append("}")
    lines.append("")
    lines.append("export type EventType = keyof EventPayloads;")
    return "\n".join(lines) + "\n"


def _ts_declaration(name: str, schema: dict[str, Any], names: Mapping[str, str]) -> str:
    if _is_plain_object(schema):
        return f"export interface {name} {_ts_object(schema, names, '')}"
    return f"export type {name} = {_ts_type(schema, names, '')};"


def _is_plain_object(schema: dict[str, Any]) -> bool:
    return (
        schema.get("type") == "object"
        and "properties" in schema
        and not any(key in schema for key in ("anyOf", "oneOf", "allOf", "$ref"))
        and schema.get("additionalProperties") in (None, False)
    )


def _ts_type(schema: Any, names: Mapping[str, str], indent: str) -> str:
    """The TypeScript type of a JSON value ``schema`` allows (wider where TS cannot say)."""
    if schema is True or schema == {}:
        return "unknown"
    if schema is False:
        return "never"
    if "$ref" in schema:
        return names[_ref_name(schema)]
    if "const" in schema:
        return json.dumps(schema["const"], ensure_ascii=False)
    if "enum" in schema:
        return " | ".join(json.dumps(value, ensure_ascii=False) for value in schema["enum"])
    for keyword, glue in (("anyOf", " | "), ("oneOf", " | "), ("allOf", " & ")):
        if keyword in schema:
            parts = [_ts_type(part, names, indent) for part in schema[keyword]]
            return glue.join(dict.fromkeys(f"({part})" if " " in part else part for part in parts))
    kinds = schema.get("type")
    if isinstance(kinds, list):
        return " | ".join(_ts_type({**schema, "type": kind}, names, indent) for kind in kinds)
    if kinds == "string":
        return "string"
    if kinds in ("integer", "number"):
        return "number"
    if kinds == "boolean":
        return "boolean"
    if kinds == "null":
        return "null"
    if kinds == "array":
        return _ts_array(schema, names, indent)
    if kinds == "object":
        return _ts_object(schema, names, indent)
    return "unknown"


def _ts_array(schema: dict[str, Any], names: Mapping[str, str], indent: str) -> str:
    if "prefixItems" in schema:
        parts = [_ts_type(item, names, indent) for item in schema["prefixItems"]]
        rest = schema.get("items", True)
        if rest is not False:
            parts.append(f"...{_ts_element(_ts_type(rest, names, indent))}[]")
        return f"[{', '.join(parts)}]"
    return f"{_ts_element(_ts_type(schema.get('items', True), names, indent))}[]"


def _ts_element(text: str) -> str:
    return f"({text})" if " " in text else text


def _ts_object(schema: dict[str, Any], names: Mapping[str, str], indent: str) -> str:
    properties = schema.get("properties", {})
    # Pydantic leaves additionalProperties out for a model: its JSON has its fields only.
    extra = schema.get("additionalProperties", not properties)
    inner = indent + "  "
    lines = ["{"]
    required = set(schema.get("required", ()))
    for name, prop in properties.items():
        lines.extend(_ts_comment(prop.get("description"), inner))
        optional = "" if name in required else "?"
        lines.append(f"{inner}{_ts_key(name)}{optional}: {_ts_type(prop, names, inner)};")
    body = "\n".join(lines) + f"\n{indent}}}"
    if extra is False:
        return body
    index = f"{{ [key: string]: {_ts_type(extra, names, inner)} }}"
    # An index signature must cover every property's type: intersect instead.
    return index if not properties else f"{body} & {index}"


def _ts_key(name: str) -> str:
    return name if _IDENTIFIER.match(name) else json.dumps(name, ensure_ascii=False)


def _ts_identifier(name: str) -> str:
    text = re.sub(r"[^A-Za-z0-9_$]", "_", name)
    return text if _IDENTIFIER.match(text) else f"_{text}"


def _ts_comment(text: str | None, indent: str) -> list[str]:
    if not text:
        return []
    lines = _comment_text(text).strip().splitlines()
    if len(lines) == 1:
        return [f"{indent}/** {lines[0]} */"]
    return [f"{indent}/**", *(f"{indent} * {line}".rstrip() for line in lines), f"{indent} */"]


def _comment_text(text: str) -> str:
    return text.replace("*/", "*\\/")


# -- CloudEvents ----------------------------------------------------------------------------

# CloudEvents extension attributes (lowercase letters and digits) for the envelope's
# fields that CloudEvents has no attribute of its own for.
_EXTENSIONS = (
    ("correlationid", "correlation_id"),
    ("causationid", "causation_id"),
    ("projectid", "project_id"),
    ("actorid", "actor_id"),
    ("actortype", "actor_type"),
    # The CloudEvents Distributed Tracing extension's attribute: the same W3C value.
    ("traceparent", "traceparent"),
)
_JSON_CONTENT_TYPE = re.compile(r"(application|text)/([A-Za-z0-9.+-]+\+)?json(;.*)?\Z")


def to_cloudevent(event: Event[Any], *, source: str = DEFAULT_SOURCE) -> dict[str, Any]:
    """The event as a CloudEvents 1.0 JSON object (structured content mode).

    ``data`` is the public payload: the type's private fields are left out, as on every
    other way out of the process. ``source`` is a URI-reference naming the producer.
    The envelope's other fields are the extension attributes ``correlationid``,
    ``causationid``, ``projectid``, ``actorid``, ``actortype`` and ``traceparent`` (the
    Distributed Tracing extension's); those that are None are left out. Raises
    :class:`InvalidCloudEventError` for an empty ``source``.
    """
    if not isinstance(source, str) or not source:
        raise InvalidCloudEventError(f"source must be a non-empty URI-reference, not {source!r}.")
    public = json.loads(public_json(event))
    cloudevent = {
        "specversion": CLOUDEVENTS_SPECVERSION,
        "id": public["id"],
        "source": source,
        "type": public["type"],
        "time": public["timestamp"],
        "datacontenttype": "application/json",
        "data": public["payload"],
    }
    for attribute, field_name in _EXTENSIONS:
        if public.get(field_name) is not None:
            cloudevent[attribute] = public[field_name]
    return cloudevent


def from_cloudevent(cloudevent: Mapping[str, Any]) -> Event[Any]:
    """The event a CloudEvents 1.0 JSON object (as :func:`to_cloudevent` makes) carries.

    ``from_cloudevent(to_cloudevent(event)) == event`` for every type without private
    fields; for the others the private fields stay unset, as in ``wire.parse_event``.
    Missing ``correlationid``: the event starts its own chain; missing ``actortype``:
    ``system``. Attributes eventbus does not know (``subject``, other extensions) are
    ignored. Raises :class:`InvalidCloudEventError` naming the attribute that is
    missing or wrong, :class:`UnknownEventTypeError` for a type not in the catalog, and
    :class:`EventSchemaError` naming each ``data`` field that does not fit its model.
    """
    if not isinstance(cloudevent, Mapping):
        raise InvalidCloudEventError(
            f"A CloudEvent is a JSON object, not {type(cloudevent).__name__}."
        )
    missing = [
        name
        for name in ("specversion", "id", "source", "type", "time", "data")
        if cloudevent.get(name) is None
    ]
    if missing:
        hint = " (binary data_base64 is not supported)" if "data_base64" in cloudevent else ""
        raise InvalidCloudEventError(
            f"The CloudEvent lacks the required attribute(s) {', '.join(missing)}{hint}."
        )
    if cloudevent["specversion"] != CLOUDEVENTS_SPECVERSION:
        raise InvalidCloudEventError(
            f"specversion {cloudevent['specversion']!r} is not supported: eventbus reads "
            f"CloudEvents {CLOUDEVENTS_SPECVERSION}."
        )
    content_type = cloudevent.get("datacontenttype", "application/json")
    if not (isinstance(content_type, str) and _JSON_CONTENT_TYPE.match(content_type)):
        raise InvalidCloudEventError(
            f"datacontenttype {content_type!r} is not JSON: eventbus events carry JSON data."
        )
    for name in ("id", "source", "type", "time"):
        if not isinstance(cloudevent[name], str) or not cloudevent[name]:
            raise InvalidCloudEventError(f"{name} must be a non-empty string.")
    entry = catalog.resolve(cloudevent["type"])
    data = cloudevent["data"]
    if not isinstance(data, Mapping):
        raise InvalidCloudEventError(
            f"data must be a JSON object (the payload), not {type(data).__name__}."
        )
    payload = _payload(entry, data)
    fields = {
        "id": cloudevent["id"],
        "type": entry.member,
        "timestamp": cloudevent["time"],
        "payload": payload,
        "correlation_id": cloudevent.get("correlationid", cloudevent["id"]),
        "actor_type": cloudevent.get("actortype", "system"),
    }
    for attribute, field_name in (
        ("causationid", "causation_id"),
        ("projectid", "project_id"),
        ("actorid", "actor_id"),
        ("traceparent", "traceparent"),
    ):
        fields[field_name] = cloudevent.get(attribute)
    # The event comes from elsewhere: it takes no chain from an event handled here.
    token = _current_event.set(None)
    try:
        return Event.model_validate(fields)
    except ValidationError as exc:
        attributes = {field_name: attribute for attribute, field_name in _EXTENSIONS}
        attributes["timestamp"] = "time"
        problems = "; ".join(
            f"{attributes.get(str(error['loc'][0]), error['loc'][0])}: {error['msg']}"
            for error in exc.errors()
        )
        raise InvalidCloudEventError(f"The CloudEvent is not a valid event: {problems}.") from exc
    finally:
        _current_event.reset(token)


def _payload(entry: CatalogEntry, data: Mapping[str, Any]) -> Any:
    """``data`` as the type's payload; its private fields are absent on purpose."""
    private = entry.spec.private_fields
    if not private:
        try:
            return validate_payload(entry, data)
        except EventSchemaError as exc:
            raise EventSchemaError(entry.name, _in_data(exc.errors)) from exc
    model = entry.payload_model
    partial: dict[str, Any] = {}
    errors: list[tuple[str, str]] = []
    for name, info in model.model_fields.items():
        if name in private:
            continue
        if name not in data:
            if info.is_required():
                errors.append((f"data.{name}", "Field required"))
            continue
        try:
            partial[name] = _coerce(info.annotation, data[name])
        except ValidationError as exc:
            errors.append((f"data.{name}", exc.errors()[0]["msg"]))
    if errors:
        raise EventSchemaError(entry.name, errors)
    return model.model_construct(**partial)


def _in_data(errors: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(f"data.{path}" if path != "payload" else "data", message) for path, message in errors]


def cloudevents_schema(event_catalog: Catalog | None = None) -> dict[str, Any]:
    """The JSON Schema (2020-12) of the CloudEvents :func:`to_cloudevent` makes."""
    schemas = _schemas(event_catalog)

    def branch(entry: CatalogEntry) -> dict[str, Any]:
        envelope = schemas.envelope
        properties = {
            "specversion": {"const": CLOUDEVENTS_SPECVERSION},
            "id": envelope["id"],
            "source": {"type": "string", "minLength": 1, "format": "uri-reference"},
            "type": {"const": entry.name},
            "time": envelope["timestamp"],
            "datacontenttype": {"const": "application/json"},
            "data": {"$ref": schemas.payload_ref(entry)},
            "correlationid": envelope["correlation_id"],
            "causationid": {"type": "string", "format": "uuid"},
            "projectid": schemas.key,
            "actorid": schemas.key,
            "actortype": envelope["actor_type"],
            "traceparent": envelope["traceparent"],
        }
        return {
            "type": "object",
            "title": f"{entry.name} CloudEvent",
            "properties": properties,
            "required": [
                "specversion",
                "id",
                "source",
                "type",
                "time",
                "datacontenttype",
                "data",
                "correlationid",
            ],
        }

    defs = dict(schemas.defs)
    defs["CloudEvent"] = {
        "title": "CloudEvent",
        "description": "An eventbus event as a CloudEvents 1.0 JSON object "
        "(eventbus.export.to_cloudevent).",
        "oneOf": [branch(entry) for entry in schemas.entries],
    }
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": "eventbus CloudEvents",
        "$ref": "#/$defs/CloudEvent",
        "$defs": defs,
    }


# -- helpers ------------------------------------------------------------------------------


def _ref_name(schema: Mapping[str, Any]) -> str:
    ref: str = schema["$ref"]
    return ref.rsplit("/", 1)[-1]


def _ref_names(schema: Any) -> list[str]:
    """The definitions ``schema`` refers to, directly."""
    found: list[str] = []
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "$ref" and isinstance(value, str):
                found.append(value.rsplit("/", 1)[-1])
            else:
                found.extend(_ref_names(value))
    elif isinstance(schema, list):
        for item in schema:
            found.extend(_ref_names(item))
    return found


def _renamed(schema: Any, renames: Mapping[str, str], template: str = _REF) -> Any:
    """``schema`` with its refs renamed, written with ``template``."""
    if isinstance(schema, list):
        return [_renamed(item, renames, template) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "$ref" and isinstance(value, str):
            name = value.rsplit("/", 1)[-1]
            out[key] = template.format(model=renames.get(name, name))
        else:
            out[key] = _renamed(value, renames, template)
    return out


def _reachable(defs: Mapping[str, dict[str, Any]], roots: Iterable[str]) -> dict[str, Any]:
    """The definitions ``roots`` use, themselves included, in definition order."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_ref_names(defs[name]))
    return {name: schema for name, schema in defs.items() if name in seen}


def _unique(name: str, taken: Iterable[str]) -> str:
    taken = set(taken)
    if name not in taken:
        return name
    number = 2
    while f"{name}{number}" in taken:
        number += 1
    return f"{name}{number}"
