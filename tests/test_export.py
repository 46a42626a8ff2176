"""eventbus.export and manage.py eventbus_catalog, each export checked by a real third-party
tool: the 2020-12 metaschema and validator (jsonschema), the AsyncAPI parser and tsc (npm,
from tests/js), and the CloudEvents SDK (cloudevents). The events they check are real:
published through the dispatcher, and frames read from the consumer.
"""

from __future__ import annotations

import enum
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from channels.testing import WebsocketCommunicator
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from django.core.management import CommandError, call_command
from django.test import override_settings
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as SchemaValidationError
from pydantic import BaseModel, ConfigDict

from eventbus import (
    EventSchemaError,
    EventSpec,
    UnknownEventTypeError,
    apublish,
    export,
    publish,
)
from eventbus.bus import get_event_bus
from eventbus.catalog import Catalog, catalog
from eventbus.channel_names import route
from eventbus.consumers import EventStreamConsumer
from eventbus.envelope import Event
from eventbus.exceptions import InvalidCloudEventError
from eventbus.wire import event_frame, public_json
from tests.fixtures_services import skip_or_fail
from tests.services import REPO_ROOT
from tests.testapp.events import ShopEvent
from tests.testapp.models import Membership

JS = REPO_ROOT / "tests" / "js"
STATIC = REPO_ROOT / "eventbus" / "static" / "eventbus"
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def u() -> str:
    return str(uuid4())


# One payload per type of each catalog; a type added to a catalog needs one here.
SHOP_PAYLOADS: dict[str, dict[str, Any]] = {
    "order.placed": {"order_id": 1, "title": "Desk"},
    "order.status_changed": {"order_id": 1, "old_status": "open", "new_status": "shipped"},
    "order.owner_changed": {"order_id": 1, "old_owner_id": None, "new_owner_id": 7},
    "order.closed": {"order_id": 1, "title": "Desk"},
    "order.deleted": {"order_id": 1},
    "note.added": {"note_id": u(), "text": "hi", "author_email": "secret@example.com"},
    "metric.sampled": {"name": "cpu", "value": 0.25},
    "file.attached": {"name": "a.txt", "content": b"hello"},
    "payment.received": {"payment_id": 1},
    "payment.settled": {"payment_id": 1},
}
DEMO_PAYLOADS: dict[str, dict[str, Any]] = {
    "triage.finished": {"conversation_id": u(), "title": "Printer", "priority": "high"},
    "ticket.created": {"ticket_id": u(), "title": "t", "status": "open", "priority": "normal"},
    "ticket.assignee_updated": {
        "ticket_id": u(),
        "old_assignee_id": None,
        "new_assignee_id": u(),
    },
    "ticket.status_updated": {"ticket_id": u(), "old_status": "open", "new_status": "closed"},
    "ticket.escalated": {"ticket_id": u(), "reason": "angry", "level": 2},
    "ticket.closed": {"ticket_id": u(), "title": "t"},
    "agent.spawned": {"agent_id": u(), "name": "Ada", "role": "triage"},
    "agent.status_changed": {"agent_id": u(), "old_status": "idle", "new_status": "working"},
    "agent.message": {"agent_id": u(), "message_id": u(), "role": "assistant", "content": "hi"},
    "agent.terminated": {"agent_id": u(), "reason": "done"},
    "issue.created": {"issue_id": u(), "title": "t", "priority": "low"},
    "issue.updated": {"issue_id": u(), "changed_fields": ["title"]},
    "issue.assigned": {"issue_id": u(), "assignee_id": u()},
    "issue.closed": {"issue_id": u(), "resolution": "fixed"},
    "sprint.started": {
        "sprint_id": u(),
        "name": "S1",
        "starts_on": "2026-01-05",
        "ends_on": "2026-01-19",
        "issue_ids": [u()],
    },
    "sprint.completed": {"sprint_id": u(), "completed_issue_ids": [u()]},
    "approval.requested": {"approval_id": u(), "requested_by": u(), "action": "deploy"},
    "approval.granted": {"approval_id": u(), "approver_id": u()},
    "approval.denied": {"approval_id": u(), "approver_id": u(), "reason": "no"},
}
# Envelopes of every shape: each kind of key, each actor type, with and without causation.
ENVELOPES: list[dict[str, Any]] = [
    {"project_id": uuid4()},
    {"project_id": 42, "actor_id": uuid4(), "actor_type": "agent", "causation_id": uuid4()},
    {"project_id": "acme-1", "actor_id": 7, "actor_type": "user"},
    {"actor_id": "svc_a", "actor_type": "system", "causation_id": uuid4()},
]


@pytest.fixture
def demo_catalog() -> Iterator[None]:
    """The demo's catalog (project/events.py) in the process-wide one, for this test."""
    from project.events import EVENT_PAYLOAD_MAP

    saved = dict(catalog._entries)
    catalog.register(EVENT_PAYLOAD_MAP, source="project.events.EVENT_PAYLOAD_MAP")
    try:
        yield
    finally:
        catalog._entries.clear()
        catalog._entries.update(saved)


def publish_all(payloads: dict[str, dict[str, Any]]) -> list[Event[Any]]:
    """One published event of each type (in a transaction, as publishers do)."""
    assert set(payloads) <= {entry.name for entry in catalog}
    return [
        publish(event_type, payload, **ENVELOPES[index % len(ENVELOPES)])
        for index, (event_type, payload) in enumerate(payloads.items())
    ]


def validator(document: dict[str, Any], definition: str | None = None) -> Draft202012Validator:
    schema = document if definition is None else {**document, "$ref": f"#/$defs/{definition}"}
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def branch_of(document: dict[str, Any], event_type: str) -> dict[str, Any]:
    (branch,) = [
        branch
        for branch in document["$defs"]["Event"]["oneOf"]
        if branch["properties"]["type"] == {"const": event_type}
    ]
    return branch


def payload_def(document: dict[str, Any], event_type: str) -> dict[str, Any]:
    ref = branch_of(document, event_type)["properties"]["payload"]["$ref"]
    return document["$defs"][ref.rsplit("/", 1)[-1]]


# -- JSON Schema ---------------------------------------------------------------------------


def demo_only() -> Catalog:
    from project.events import EVENT_PAYLOAD_MAP

    demo = Catalog()
    demo.register(EVENT_PAYLOAD_MAP)
    return demo


@pytest.mark.parametrize("which", ["tests", "demo"])
def test_every_schema_is_valid_json_schema_2020_12(which):
    event_catalog = catalog if which == "tests" else demo_only()
    for document in (
        export.json_schema(event_catalog),
        export.cloudevents_schema(event_catalog),
        *(export.payload_schema(entry.name, event_catalog) for entry in event_catalog),
    ):
        assert document["$schema"] == DIALECT
        Draft202012Validator.check_schema(document)


def test_payload_schemas_say_what_the_json_holds():
    placed = export.payload_schema(ShopEvent.ORDER_PLACED)
    # quantity has a default, but model_dump_json() always writes it.
    assert placed["required"] == ["order_id", "title", "quantity"]
    note = export.payload_schema("note.added")
    assert set(note["properties"]) == {"note_id", "text"}
    assert "author_email" not in json.dumps(note)
    with pytest.raises(UnknownEventTypeError):
        export.payload_schema("no.such")


@pytest.mark.django_db
@pytest.mark.parametrize("which", ["tests", "demo"])
def test_real_events_and_frames_validate_against_the_schemas(which, request):
    if which == "demo":
        request.getfixturevalue("demo_catalog")
    events = publish_all(SHOP_PAYLOADS if which == "tests" else DEMO_PAYLOADS)
    document = export.json_schema()
    events_validator = validator(document)
    frames_validator = validator(document, "ServerFrame")
    for event in events:
        raw = public_json(event)
        public = json.loads(raw)
        events_validator.validate(public)
        validator(export.payload_schema(event.type)).validate(public["payload"])
        # Nothing the schema does not name (they stay open to additions, so check here);
        # an event published without tracing has no traceparent, the one optional field.
        branch = branch_of(document, public["type"])
        assert set(public) == set(branch["required"]) == set(branch["properties"]) - {"traceparent"}
        assert set(public["payload"]) == set(payload_def(document, public["type"])["properties"])
        for channel in route(event):
            frames_validator.validate(json.loads(event_frame(channel, raw, 3)))
            frames_validator.validate(json.loads(event_frame(channel, raw)))
    # The schemas are not vacuous: a wrong payload is refused.
    wrong = json.loads(public_json(events[0]))
    first_field = next(iter(wrong["payload"]))
    wrong["payload"][first_field] = {"not": "this"}
    with pytest.raises(SchemaValidationError):
        events_validator.validate(wrong)


def test_schemas_of_a_catalog_with_name_clashes_shared_models_and_recursion():
    class Kind(enum.StrEnum):
        SHOWN = "x.shown"
        HIDDEN = "x.hidden"
        TREE = "x.tree"

    class ServerFrame(BaseModel):  # the name of one of the export's own definitions
        model_config = ConfigDict(frozen=True)
        secret: str
        shown: int

    class Tree(BaseModel):
        model_config = ConfigDict(frozen=True)
        name: str
        children: list[Tree] = []

    clashing = Catalog()
    clashing.register(
        {
            Kind.SHOWN: ServerFrame,
            Kind.HIDDEN: EventSpec(ServerFrame, private_fields=frozenset({"secret"})),
            Kind.TREE: Tree,
        }
    )
    document = export.json_schema(clashing)
    Draft202012Validator.check_schema(document)
    assert set(payload_def(document, "x.shown")["properties"]) == {"secret", "shown"}
    assert set(payload_def(document, "x.hidden")["properties"]) == {"shown"}
    assert document["$defs"]["ServerFrame"]["title"] == "ServerFrame"  # the frames' union
    assert "oneOf" in document["$defs"]["ServerFrame"]
    tree = {"name": "a", "children": [{"name": "b", "children": []}]}
    validator(export.payload_schema("x.tree", clashing)).validate(tree)
    with pytest.raises(SchemaValidationError):
        validator(export.payload_schema("x.tree", clashing)).validate(
            {"name": "a", "children": [1]}
        )
    text = export.typescript_declarations(clashing)
    assert "children: Tree[];" in text
    assert '"x.hidden": ServerFramePublic;' in text


# -- the WebSocket, through the real consumer ----------------------------------------------------


@pytest.mark.node
@pytest.mark.django_db(transaction=True)
@pytest.mark.db_heavy
@override_settings(
    EVENTBUS={
        "CATALOGS": ["tests.testapp.events.EVENT_PAYLOAD_MAP"],
        "AUTHORIZE": "tests.testapp.authorization.may_subscribe",
        "PRESENCE": "tests.testapp.presence.presence",
    }
)
async def test_frames_from_the_consumer_validate_and_compile(django_user_model, tmp_path):
    from asgiref.sync import sync_to_async

    project = uuid4()
    channel = get_event_bus().get_project_channel(project)
    user = await sync_to_async(django_user_model.objects.create)(username="member")
    await sync_to_async(Membership.objects.create)(user=user, project_id=project)
    document = export.json_schema()
    server = validator(document, "ServerFrame")
    client = validator(document, "ClientFrame")
    sent: list[dict[str, Any]] = []  # valid client frames, then two the server refuses
    received: list[dict[str, Any]] = []

    ws = WebsocketCommunicator(EventStreamConsumer.as_asgi(), "/ws/events/")
    ws.scope["user"] = user
    assert (await ws.connect(timeout=5))[0]

    async def send(frame: dict[str, Any], answers: int = 1) -> None:
        sent.append(frame)
        await ws.send_to(text_data=json.dumps(frame))
        for _ in range(answers):
            received.append(json.loads(await ws.receive_from(timeout=5)))

    try:
        await send({"action": "subscribe", "channel": channel, "types": ["order.*", "note.*"]})
        for event_type in ("order.placed", "note.added"):
            await apublish(event_type, SHOP_PAYLOADS[event_type], project_id=project)
            received.append(json.loads(await ws.receive_from(timeout=5)))
        live = Event(type="order.deleted", payload={"order_id": 3}, project_id=project)
        await get_event_bus().send(channel, live)  # live only: no position
        received.append(json.loads(await ws.receive_from(timeout=5)))
        await send({"action": "ping"})
        await send({"action": "subscribe", "channel": channel, "presence": True}, 2)
        await send({"action": "subscribe", "channel": channel, "position": 99, "epoch": None}, 2)
        await send({"action": "dance"})
        await send({"action": "subscribe", "channel": "no spaces"})
        await send({"action": "unsubscribe", "channel": channel})
    finally:
        await ws.disconnect()

    kinds = [frame["type"] for frame in received]
    assert kinds == [
        "subscribed",
        "event",
        "event",
        "event",
        "pong",
        "subscribed",
        "presence",
        "subscribed",
        "reset",
        "error",
        "error",
        "unsubscribed",
    ]
    assert "position" not in received[3] and received[1]["position"] == 1
    assert received[6]["users"] == [
        {"key": str(user.pk), "info": {"name": "member"}, "connections": 1}
    ]
    assert "author_email" not in json.dumps(received)
    for frame in received:
        server.validate(frame)
    for frame in [*sent[:-3], sent[-1]]:
        client.validate(frame)
    for frame in sent[-3:-1]:  # the unknown action and the bad channel name
        assert not client.is_valid(frame)
    # The same real frames, as TypeScript literals of the .d.ts types, compile.
    result = tsc(
        node_and_packages(),
        tmp_path,
        {
            "catalog.ts": export.typescript_declarations(),
            "frames.ts": (
                'import type { ServerFrame } from "./eventbus.js";\n'
                'import type { EventPayloads } from "./catalog";\n'
                f"export const frames: ServerFrame<EventPayloads>[] = {json.dumps(received)};\n"
            ),
        },
    )
    assert result.returncode == 0, result.stdout


def test_the_protocol_words_are_those_of_docs_protocol_md():
    text = (REPO_ROOT / "docs" / "protocol.md").read_text()
    reasons_table = text.split("Reasons:")[1].split("The JS client")[0]
    reasons = re.findall(r"^\s*\| `(\w+)` \| .* \|$", reasons_table, re.M)
    codes = re.findall(r"^\| `(\w+)` \| .* \| stays up \|$", text, re.M)
    assert tuple(reasons) == export.RESET_REASONS
    assert tuple(codes) == export.ERROR_CODES


# -- AsyncAPI, with the official parser -------------------------------------------------------


@pytest.fixture(scope="session")
def node() -> str:
    """The node binary, with tests/js's packages installed (scripts/test.sh runs npm ci)."""
    return node_and_packages()


def node_and_packages() -> str:
    path = shutil.which("node")
    if path is None:
        skip_or_fail("node not installed")
    for package in ("typescript", "@asyncapi/parser"):
        if not (JS / "node_modules" / package / "package.json").is_file():
            skip_or_fail(f"{package} not installed in tests/js: run `npm ci` there")
    return path


def parse_asyncapi(node: str, document: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "asyncapi.json"
    path.write_text(json.dumps(document))
    result = subprocess.run(
        [node, str(JS / "asyncapi.mjs"), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.stdout, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    assert result.returncode == (1 if report["errors"] else 0)
    return report


@pytest.mark.node
@pytest.mark.parametrize("which", ["tests", "demo"])
def test_the_asyncapi_parser_finds_no_error(which, node, tmp_path):
    event_catalog = catalog if which == "tests" else demo_only()
    document = export.asyncapi_document(event_catalog)
    report = parse_asyncapi(node, document, tmp_path)
    assert report["errors"] == []
    assert report["channels"] == ["socket", "project", "agent"]
    broadcast = [entry.name for entry in event_catalog if entry.spec.broadcast]
    assert report["messages"] == [
        "subscribe",
        "unsubscribe",
        "ping",
        "subscribed",
        "reset",
        "unsubscribed",
        "presence",
        "pong",
        "error",
        *broadcast,
    ]
    assert document["channels"]["project"]["address"] == "eventbus.project.{project_key}"
    assert document["channels"]["agent"]["parameters"].keys() == {"agent_key"}


@pytest.mark.node
def test_the_asyncapi_parser_does_report_errors(node, tmp_path):
    """The parser run is not a rubber stamp: a broken schema is an error."""
    document = export.asyncapi_document()
    document["components"]["schemas"]["OrderPlaced"]["properties"]["title"]["type"] = "text"
    report = parse_asyncapi(node, document, tmp_path)
    assert any(error["path"].endswith("title/type") for error in report["errors"])


def test_nothing_exported_names_a_private_field_or_a_type_kept_off_the_socket():
    for text in (
        json.dumps(export.json_schema()),
        json.dumps(export.asyncapi_document()),
        json.dumps(export.cloudevents_schema()),
        export.typescript_declarations(),
    ):
        assert "author_email" not in text
    for text in (json.dumps(export.asyncapi_document()), export.typescript_declarations()):
        assert "metric.sampled" not in text and "MetricSampled" not in text


# -- TypeScript, with tsc ---------------------------------------------------------------------

TSCONFIG = {
    "compilerOptions": {
        "strict": True,
        "noEmit": True,
        "target": "es2022",
        "module": "esnext",
        "moduleResolution": "bundler",
        "lib": ["es2022", "dom"],
        "types": [],
    }
}

GOOD_SAMPLE = """\
import { EventBusClient, type EventOf } from "./eventbus.js";
import type { EventPayloads } from "./catalog";

const bus = new EventBusClient<EventPayloads>("/ws/events/", {
  onReset: (channel, reason, { epoch, position }) => console.log(channel, reason, epoch, position),
  onError: (frame) => console.log(frame.type === "error" ? frame.code : frame.reason),
});
bus.connect();
const stop = bus.subscribe("eventbus.project.1", { types: ["order.*"] }, (event, channel, position) => {
  if (event.type === "order.placed") {
    const title: string = event.payload.title;
    const quantity: number = event.payload.quantity;
    console.log(title, quantity, channel, position);
  } else if (event.type === "order.status_changed") {
    const status: "open" | "shipped" | "closed" = event.payload.new_status;
    console.log(status);
  }
});
stop();
bus.subscribe("eventbus.project.1", { types: ["note.added", "order.pl?ced"] }, (event) => {
  switch (event.type) {
    case "note.added":
      console.log(event.payload.note_id, event.payload.text);
      break;
    case "order.placed":
      console.log(event.payload.order_id);
      break;
  }
});
bus.subscribe("eventbus.agent.7", {}, (event) => {
  if (event.type === "file.attached") console.log(event.payload.content.length);
});
const where = bus.position("eventbus.project.1");
if (where !== null) bus.subscribe("eventbus.project.1", { position: where.position, epoch: where.epoch });
const untyped = new EventBusClient("/ws/events/");
untyped.subscribe("c", { types: null }, (event) => console.log(event.type, event.payload["any"]));
const one: EventOf<EventPayloads, "order.deleted">["payload"] = { order_id: 1 };
console.log(one);
bus.close();
"""

# Each line that must not compile, and what tsc must say about it.
BAD_SAMPLES = {
    'if (event.type === "order.placed") console.log(event.payload.titel);': "'titel'",
    'if (event.type === "note.added") console.log(event.payload.author_email);': "'author_email'",
    'if (event.type === "order.placed") { const n: string = event.payload.order_id; }': "'number'",
}


def tsc(node: str, directory: Path, files: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Type-check ``files`` with eventbus.d.ts next to them, as a user's project would."""
    shutil.copy(STATIC / "eventbus.d.ts", directory / "eventbus.d.ts")
    shutil.copy(STATIC / "eventbus.js", directory / "eventbus.js")
    for name, text in files.items():
        (directory / name).write_text(text)
    config = {**TSCONFIG, "files": sorted(files)}
    (directory / "tsconfig.json").write_text(json.dumps(config))
    return subprocess.run(
        [node, str(JS / "node_modules" / "typescript" / "bin" / "tsc"), "-p", "tsconfig.json"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.node
def test_typescript_narrows_payloads_by_type(node, tmp_path):
    catalog_ts = export.typescript_declarations()
    good = tsc(node, tmp_path, {"catalog.ts": catalog_ts, "good.ts": GOOD_SAMPLE})
    assert good.returncode == 0, good.stdout
    for line, named in BAD_SAMPLES.items():
        sample = (
            'import { EventBusClient } from "./eventbus.js";\n'
            'import type { EventPayloads } from "./catalog";\n'
            'new EventBusClient<EventPayloads>().subscribe("c", {}, (event) => {\n'
            f"  {line}\n"
            "});\n"
        )
        bad = tsc(node, tmp_path, {"catalog.ts": catalog_ts, "bad.ts": sample})
        assert bad.returncode != 0, line
        assert "bad.ts(4," in bad.stdout and named in bad.stdout, bad.stdout


@pytest.mark.node
def test_a_types_filter_narrows_the_events_a_callback_gets(node, tmp_path):
    sample = (
        'import { EventBusClient } from "./eventbus.js";\n'
        'import type { EventPayloads } from "./catalog";\n'
        'new EventBusClient<EventPayloads>().subscribe("c", { types: ["order.*"] }, (event) => {\n'
        '  if (event.type === "note.added") console.log(event);\n'
        "});\n"
    )
    result = tsc(node, tmp_path, {"catalog.ts": export.typescript_declarations(), "f.ts": sample})
    assert result.returncode != 0
    assert "f.ts(4," in result.stdout and '"note.added"' in result.stdout, result.stdout


@pytest.mark.node
@pytest.mark.django_db
@pytest.mark.parametrize("which", ["tests", "demo"])
def test_real_events_compile_as_the_generated_types(which, request, node, tmp_path):
    if which == "demo":
        request.getfixturevalue("demo_catalog")
    events = publish_all(SHOP_PAYLOADS if which == "tests" else DEMO_PAYLOADS)
    broadcast = [
        json.loads(public_json(event))
        for event in events
        if catalog.resolve(event.type).spec.broadcast
    ]
    sample = (
        'import type { EventOf } from "./eventbus.js";\n'
        'import type { EventPayloads } from "./catalog";\n'
        f"export const events: EventOf<EventPayloads>[] = {json.dumps(broadcast, indent=1)};\n"
    )
    result = tsc(
        node, tmp_path, {"catalog.ts": export.typescript_declarations(), "events.ts": sample}
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.node
def test_the_d_ts_lists_the_protocol_words(node, tmp_path):
    def union(words: tuple[str, ...]) -> str:
        return " | ".join(json.dumps(word) for word in words)

    sample = (
        'import type { ErrorCode, ResetReason } from "./eventbus.js";\n'
        "type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;\n"
        f"export const reasons: Same<ResetReason, {union(export.RESET_REASONS)}> = true;\n"
        f"export const codes: Same<ErrorCode, {union(export.ERROR_CODES)}> = true;\n"
    )
    result = tsc(node, tmp_path, {"words.ts": sample})
    assert result.returncode == 0, result.stdout


# -- CloudEvents, with the official SDK ---------------------------------------------------------


def through_the_sdk(cloudevent: dict[str, Any]) -> dict[str, Any]:
    """Read with the CloudEvents SDK (it validates the attributes), then write it back."""
    parsed = JSONFormat().read(CloudEvent, json.dumps(cloudevent).encode())
    assert parsed.get_specversion() == "1.0"
    assert parsed.get_id() == cloudevent["id"] and parsed.get_type() == cloudevent["type"]
    assert parsed.get_data() == cloudevent["data"]
    written: dict[str, Any] = json.loads(JSONFormat().write(parsed))
    return written


@pytest.mark.django_db
@pytest.mark.parametrize("which", ["tests", "demo"])
def test_cloudevents_round_trip_through_the_sdk_exactly(which, request):
    if which == "demo":
        request.getfixturevalue("demo_catalog")
    events = publish_all(SHOP_PAYLOADS if which == "tests" else DEMO_PAYLOADS)
    schema = validator(export.cloudevents_schema())
    for event in events:
        cloudevent = export.to_cloudevent(event, source="https://shop.example/events")
        schema.validate(cloudevent)
        assert cloudevent["data"] == json.loads(public_json(event))["payload"]
        back = export.from_cloudevent(through_the_sdk(cloudevent))
        if catalog.resolve(event.type).spec.private_fields:
            assert public_json(back) == public_json(event)
        else:
            assert back == event
            assert back.payload == event.payload and back.model_dump() == event.model_dump()
        assert export.to_cloudevent(back, source="https://shop.example/events") == cloudevent


@pytest.mark.django_db
def test_a_cloudevent_carries_the_envelope_in_extensions():
    cause = uuid4()
    event = publish(
        "note.added",
        SHOP_PAYLOADS["note.added"],
        project_id=42,
        actor_id="svc_a",
        actor_type="agent",
        causation_id=cause,
    )
    cloudevent = export.to_cloudevent(event)
    assert cloudevent == {
        "specversion": "1.0",
        "id": str(event.id),
        "source": export.DEFAULT_SOURCE,
        "type": "note.added",
        "time": json.loads(public_json(event))["timestamp"],
        "datacontenttype": "application/json",
        "data": {"note_id": SHOP_PAYLOADS["note.added"]["note_id"], "text": "hi"},
        "correlationid": str(event.correlation_id),
        "causationid": str(cause),
        "projectid": 42,
        "actorid": "svc_a",
        "actortype": "agent",
    }
    back = export.from_cloudevent(cloudevent)
    assert back.payload.text == "hi" and back.payload.note_id == UUID(cloudevent["data"]["note_id"])
    assert back.payload.model_fields_set == {"note_id", "text"}  # the private field: unset


@pytest.mark.django_db(transaction=True)
def test_reading_a_cloudevent_in_a_handler_takes_no_chain_from_it(dispatcher):
    outside = Event(type="order.deleted", payload={"order_id": 1})
    cloudevent = export.to_cloudevent(outside)
    read: list[Event[Any]] = []
    dispatcher.subscribe(
        ShopEvent.ORDER_CLOSED, lambda event: read.append(export.from_cloudevent(cloudevent))
    )
    dispatcher.publish(ShopEvent.ORDER_CLOSED, {"order_id": 1, "title": "t"})
    assert read == [outside]
    assert read[0].causation_id is None


def test_cloudevent_without_optional_extensions_starts_its_own_chain():
    event_id = u()
    event = export.from_cloudevent(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": "/elsewhere",
            "type": "order.deleted",
            "time": "2026-01-02T03:04:05Z",
            "data": {"order_id": 9},
            "subject": "ignored",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        }
    )
    assert str(event.correlation_id) == event_id and event.causation_id is None
    assert event.project_id is None and event.actor_type == "system"


def good_cloudevent() -> dict[str, Any]:
    return export.to_cloudevent(Event(type="order.placed", payload={"order_id": 1, "title": "t"}))


def without(name: str) -> dict[str, Any]:
    cloudevent = good_cloudevent()
    del cloudevent[name]
    return cloudevent


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: without("id"), InvalidCloudEventError, "required attribute(s) id"),
        (lambda: without("source"), InvalidCloudEventError, "required attribute(s) source"),
        (lambda: without("type"), InvalidCloudEventError, "required attribute(s) type"),
        (
            lambda: without("specversion"),
            InvalidCloudEventError,
            "required attribute(s) specversion",
        ),
        (lambda: without("time"), InvalidCloudEventError, "required attribute(s) time"),
        (lambda: without("data"), InvalidCloudEventError, "required attribute(s) data"),
        (
            lambda: (
                {k: v for k, v in good_cloudevent().items() if k not in ("id", "data")}
                | {"data_base64": "aGk="}
            ),
            InvalidCloudEventError,
            "id, data (binary data_base64 is not supported)",
        ),
        (lambda: good_cloudevent() | {"specversion": "0.3"}, InvalidCloudEventError, "'0.3'"),
        (
            lambda: good_cloudevent() | {"type": "order.shredded"},
            UnknownEventTypeError,
            "'order.shredded'",
        ),
        (
            lambda: good_cloudevent() | {"datacontenttype": "text/xml"},
            InvalidCloudEventError,
            "text/xml",
        ),
        (
            lambda: good_cloudevent() | {"data": [1, 2]},
            InvalidCloudEventError,
            "data must be a JSON object",
        ),
        (
            lambda: good_cloudevent() | {"id": "nope"},
            InvalidCloudEventError,
            "id: Input should be a valid UUID",
        ),
        (lambda: good_cloudevent() | {"time": "yesterday"}, InvalidCloudEventError, "time: "),
        (lambda: good_cloudevent() | {"projectid": "a.b"}, InvalidCloudEventError, "projectid: "),
        (lambda: good_cloudevent() | {"actortype": "robot"}, InvalidCloudEventError, "actortype: "),
        (lambda: good_cloudevent() | {"source": ""}, InvalidCloudEventError, "source must be"),
        (
            lambda: good_cloudevent() | {"data": {"order_id": "x", "title": "t"}},
            EventSchemaError,
            "data.order_id",
        ),
        (
            lambda: good_cloudevent() | {"type": "note.added", "data": {"text": "hi"}},
            EventSchemaError,
            "data.note_id: Field required",
        ),
        (lambda: "not a dict", InvalidCloudEventError, "not str"),
    ],
)
def test_a_bad_cloudevent_is_refused_naming_the_problem(make, error, message):
    with pytest.raises(error) as caught:
        export.from_cloudevent(make())
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError | LookupError)


def test_the_sdk_refuses_what_from_cloudevent_refuses():
    """The attribute checks agree with the SDK's on the CloudEvents rules they share."""
    from cloudevents.core.exceptions import CloudEventValidationError

    for bad in (without("source"), good_cloudevent() | {"specversion": "0.3"}):
        with pytest.raises(CloudEventValidationError):
            JSONFormat().read(CloudEvent, json.dumps(bad).encode())
        with pytest.raises(InvalidCloudEventError):
            export.from_cloudevent(bad)


def test_to_cloudevent_refuses_an_empty_source():
    with pytest.raises(ValueError, match="source"):
        export.to_cloudevent(Event(type="order.deleted", payload={"order_id": 1}), source="")


# -- manage.py eventbus_catalog ------------------------------------------------------------------


def run(*args: str) -> str:
    out = StringIO()
    call_command("eventbus_catalog", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_the_table_lists_types_versions_flags_and_handlers():
    lines = run().splitlines()
    assert lines[0].split() == [
        "type",
        "version",
        "payload",
        "broadcast",
        "log",
        "private",
        "fields",
        "handlers",
    ]
    rows = {line.split()[0]: line.split(maxsplit=6) for line in lines[1:]}
    assert set(rows) == {entry.name for entry in catalog}
    assert rows["order.placed"][:6] == [
        "order.placed",
        "1",
        "tests.testapp.events.OrderPlaced",
        "yes",
        "yes",
        "-",
    ]
    assert "tests.testapp.handlers.remember_order" in rows["order.placed"][6]
    assert rows["metric.sampled"][3:5] == ["no", "no"]
    assert rows["note.added"][5] == "author_email"
    assert "tests.testapp.handlers.record_payment (durable)" in rows["payment.received"][6]


@pytest.mark.parametrize(
    ("fmt", "build"),
    [
        ("jsonschema", export.json_schema),
        ("asyncapi", export.asyncapi_document),
        ("cloudevents-schema", export.cloudevents_schema),
    ],
)
def test_each_json_format_prints_its_document(fmt, build):
    assert json.loads(run("--format", fmt)) == build()


def test_typescript_goes_to_a_file_with_output(tmp_path):
    path = tmp_path / "catalog.d.ts"
    assert run("--format", "typescript", "--output", str(path)) == ""
    assert path.read_text() == export.typescript_declarations()


def test_a_bad_format_is_refused_naming_it():
    with pytest.raises(CommandError, match="invalid choice: 'yaml'"):
        run("--format", "yaml")
    with pytest.raises(CommandError, match="Unknown --format 'yaml'"):
        call_command("eventbus_catalog", format="yaml", stdout=StringIO())


@pytest.mark.parametrize("where", ["a directory", "a missing directory"])
def test_an_unwritable_output_is_refused_naming_it(where, tmp_path):
    path = tmp_path if where == "a directory" else tmp_path / "missing" / "catalog.json"
    with pytest.raises(CommandError, match=f"Cannot write --output {re.escape(str(path))}"):
        run("--format", "jsonschema", "--output", str(path))
    assert not (tmp_path / "missing").exists()
