import re
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from eventbus.models import DeliveryStatus, EventRecord, HandlerRun, RunStatus

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_SPAN = re.compile(r"^(\d+)([smhdw])$")


def parse_span(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``2w``, ``45s`` -> timedelta; anything else raises."""
    match = _SPAN.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise CommandError(
            f"--older-than {text!r} is not a span: use a positive number and a unit, "
            "e.g. 30d, 12h, 90m, 2w or 45s."
        )
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


class Command(BaseCommand):
    help = (
        "Delete delivered events older than a span, in batches; pending and failed rows "
        "stay, and so do events whose durable handler runs have not finished."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", required=True, help="A span such as 30d, 12h, 2w.")
        parser.add_argument("--batch-size", type=int, default=1000)
        parser.add_argument("--dry-run", action="store_true", help="Count, delete nothing.")

    def handle(self, *args: Any, **options: Any) -> None:
        span = parse_span(options["older_than"])
        batch_size = options["batch_size"]
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        cutoff = timezone.now() - span
        unfinished = HandlerRun.objects.filter(
            status__in=(RunStatus.PENDING, RunStatus.RUNNING)
        ).values("event_id")
        old = EventRecord.objects.filter(
            status=DeliveryStatus.DELIVERED, timestamp__lt=cutoff
        ).exclude(id__in=unfinished)
        if options["dry_run"]:
            self.stdout.write(
                f"would delete {old.count()} delivered event(s) before {cutoff:%Y-%m-%d %H:%M:%S}"
            )
            return
        deleted = 0
        while True:
            ids = list(old.order_by("timestamp").values_list("id", flat=True)[:batch_size])
            if not ids:
                break
            deleted += EventRecord.objects.filter(id__in=ids).delete()[0]
        self.stdout.write(f"deleted {deleted} delivered event(s) before {cutoff:%Y-%m-%d %H:%M:%S}")
