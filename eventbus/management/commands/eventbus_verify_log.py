"""Read the whole event log under the current catalog, and say which rows no longer read."""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from eventbus.catalog import catalog
from eventbus.exceptions import UnknownEventTypeError
from eventbus.models import EVENT_COLUMNS, EventRecord, event_from_columns

_VERSION = EVENT_COLUMNS.index("payload_version")


class Command(BaseCommand):
    help = (
        "Read every event-log row (or those of --type) in batches as the current catalog "
        "reads it: upcast to its payload version and validated. Reports rows read, "
        "upcast and unreadable, with why; exits with status 1 when any row is unreadable."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--type", dest="event_type", help="Only rows of this event type.")
        parser.add_argument("--batch-size", type=int, default=1000)
        parser.add_argument(
            "--show", type=int, default=20, help="Unreadable rows to list (default 20)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        batch_size = options["batch_size"]
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        rows = EventRecord.objects.all()
        if options["event_type"]:
            try:
                rows = rows.filter(type=catalog.resolve(options["event_type"]).name)
            except UnknownEventTypeError:
                raise CommandError(
                    f"--type {options['event_type']!r} is not in the catalog."
                ) from None
        total = rows.count()
        read = upcast = 0
        failures: Counter[str] = Counter()
        examples: list[str] = []
        last: tuple[Any, Any] | None = None
        done = 0
        while True:
            page = rows.order_by("timestamp", "id")
            if last is not None:  # keyset pagination: each batch is one index range
                page = page.filter(timestamp__gte=last[0]).exclude(
                    timestamp=last[0], id__lte=last[1]
                )
            batch = list(page.values_list(*EVENT_COLUMNS)[:batch_size])
            if not batch:
                break
            for columns in batch:
                try:
                    event = event_from_columns(*columns)
                except Exception as exc:
                    reason = _reason(exc)
                    failures[reason] += 1
                    if len(examples) < options["show"]:
                        examples.append(f"  {columns[0]} {columns[1]}: {reason}")
                    continue
                read += 1
                if columns[_VERSION] < catalog.resolve(event.type).spec.version:
                    upcast += 1
            done += len(batch)
            last = (batch[-1][2], batch[-1][0])
            self._progress(done, total)
        if total:
            sys.stderr.write("\n")
        unreadable = sum(failures.values())
        self.stdout.write(
            f"{done} row(s): {read} readable ({upcast} upcast from an older version), "
            f"{unreadable} unreadable"
        )
        for reason, count in failures.most_common():
            self.stdout.write(f"  {count} x {reason}")
        if examples:
            self.stdout.write("unreadable rows:")
            self.stdout.write("\n".join(examples))
        if unreadable:
            raise SystemExit(1)

    def _progress(self, done: int, total: int) -> None:
        width = 30
        filled = width * done // total if total else width
        sys.stderr.write(f"\r[{'#' * filled}{' ' * (width - filled)}] {done}/{total} rows")
        sys.stderr.flush()


def _reason(exc: Exception) -> str:
    """One line saying why a row does not read (the first line of the error)."""
    text = f"{type(exc).__name__}: {exc}"
    return text.splitlines()[0][:300]
