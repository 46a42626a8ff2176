import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from eventbus import ActorType, publish
from eventbus.catalog import catalog
from eventbus.exceptions import EventSchemaError, PayloadTooLargeError, UnknownEventTypeError
from eventbus.ids import ObjectKey, parse_key
from eventbus.models import DeliveryStatus, EventRecord


class Command(BaseCommand):
    help = (
        "Publish one event of the catalog, validated: stored, dispatched and delivered like "
        "any other. Prints its id."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("type", metavar="TYPE", help="An event type, e.g. order.placed.")
        parser.add_argument(
            "--payload", required=True, metavar="JSON", help="A JSON object, e.g. '{\"id\": 1}'."
        )
        parser.add_argument("--project", metavar="KEY", help="The event's project_id.")
        parser.add_argument("--actor-id", metavar="KEY", help="The event's actor_id.")
        parser.add_argument(
            "--actor-type",
            choices=[actor.value for actor in ActorType],
            default=ActorType.SYSTEM.value,
        )

    def handle(self, *args: Any, **options: Any) -> None:
        # Every check comes before publish(): a refused event leaves no trace.
        event_type = options["type"]
        if event_type not in catalog:
            known = ", ".join(sorted(entry.name for entry in catalog)) or "none"
            raise CommandError(f"Unknown event type {event_type!r}. Known types: {known}.")
        try:
            payload = json.loads(options["payload"])
        except ValueError as exc:
            raise CommandError(f"--payload is not valid JSON: {exc}.") from exc
        if not isinstance(payload, dict):
            raise CommandError(f"--payload must be a JSON object, not {type(payload).__name__}.")
        project_id = _key("--project", options["project"])
        actor_id = _key("--actor-id", options["actor_id"])
        try:
            event = publish(
                event_type,
                payload,
                project_id=project_id,
                actor_id=actor_id,
                actor_type=options["actor_type"],
            )
        except EventSchemaError as exc:
            fields = "\n".join(f"  {path}: {message}" for path, message in exc.errors)
            raise CommandError(f"Invalid payload for {exc.event_type!r}:\n{fields}") from exc
        except (PayloadTooLargeError, UnknownEventTypeError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"published {event.type.value} {event.id}")
        row = EventRecord.objects.filter(id=event.id).values_list("status", "last_error").first()
        if row is not None and row[0] == DeliveryStatus.PENDING:
            self.stderr.write(
                f"not delivered yet ({row[1] or 'no sink reached'}); "
                "manage.py eventbus_relay retries it."
            )


def _key(option: str, text: str | None) -> ObjectKey | None:
    if text is None:
        return None
    try:
        return parse_key(text)
    except ValueError as exc:
        raise CommandError(f"{option}: {exc}.") from None
