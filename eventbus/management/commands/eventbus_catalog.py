import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from eventbus import export
from eventbus.catalog import CatalogEntry, catalog
from eventbus.dispatcher import get_event_dispatcher

FORMATS: dict[str, Callable[[], str]] = {
    "jsonschema": lambda: _json(export.json_schema()),
    "asyncapi": lambda: _json(export.asyncapi_document()),
    "typescript": lambda: export.typescript_declarations(),
    "cloudevents-schema": lambda: _json(export.cloudevents_schema()),
}


class Command(BaseCommand):
    help = (
        "Print the event catalog: a table of its types (default), or for other tools a "
        "JSON Schema (2020-12) of the events and frames, an AsyncAPI 3.0 document of the "
        "WebSocket API, TypeScript declarations for eventbus.js, or a JSON Schema of the "
        "CloudEvents eventbus.export.to_cloudevent() makes."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--format", choices=["table", *FORMATS], default="table", help="Default: table."
        )
        parser.add_argument(
            "--output", metavar="PATH", help="Write to this file instead of stdout."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        fmt = options["format"]
        if fmt != "table" and fmt not in FORMATS:  # call_command skips argparse's choices
            known = ", ".join(["table", *FORMATS])
            raise CommandError(f"Unknown --format {fmt!r}: use one of {known}.")
        text = _table(list(catalog)) if fmt == "table" else FORMATS[fmt]()
        if options["output"] is None:
            self.stdout.write(text, ending="" if text.endswith("\n") else "\n")
            return
        path = Path(options["output"])
        try:
            path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"Cannot write --output {path}: {exc.strerror or exc}.") from exc
        self.stderr.write(f"wrote {fmt} to {path}")


def _json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _table(entries: list[CatalogEntry]) -> str:
    if not entries:
        return "No event types: EVENTBUS['CATALOGS'] names no catalog, or they are empty.\n"
    dispatcher = get_event_dispatcher()
    header = ("type", "version", "payload", "broadcast", "log", "private fields", "handlers")
    rows = [header]
    for entry in entries:
        model = entry.payload_model
        handlers = [
            f"{handler.name} (durable)" if handler.durable else handler.name
            for handler in dispatcher.handlers(entry.member)
        ]
        rows.append(
            (
                entry.name,
                str(entry.spec.version),
                f"{model.__module__}.{model.__qualname__}",
                "yes" if entry.spec.broadcast else "no",
                "yes" if entry.spec.log else "no",
                ", ".join(sorted(entry.spec.private_fields)) or "-",
                ", ".join(handlers) or "-",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header) - 1)]
    lines = [
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n"
