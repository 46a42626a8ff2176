from datetime import datetime, time, timedelta
from typing import Any
from uuid import UUID

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from eventbus.catalog import catalog
from eventbus.dispatcher import get_event_dispatcher
from eventbus.handler_replay import Preview, Progress, Selection, preview, replay
from eventbus.ids import parse_uuid
from eventbus.models import EventRecord, HandlerReplay

BAR = 20


class Command(BaseCommand):
    help = (
        "Run a durable handler again over events already in the log, in log order (the "
        "events numbered when the replay starts, by sequence, then the others by timestamp "
        "and id; events published after it starts are left to the workers), in batches, in "
        "this process. Runs already done are skipped and dead ones left alone, unless "
        "--force. Progress is saved after each batch: after an interruption, the same "
        "command continues where it stopped, and a --force replay does not run again what "
        "it already ran (runs that finished after it first started are skipped)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("handler", metavar="HANDLER", help="A durable handler's dotted path.")
        parser.add_argument(
            "--type", metavar="T", help="Only events of this type (default: all it handles)."
        )
        parser.add_argument(
            "--since",
            metavar="ID|DATE",
            help="From this event (included) in log order, or from this ISO date or "
            "date-time (the event's timestamp; a naive one is in TIME_ZONE).",
        )
        parser.add_argument(
            "--until",
            metavar="ID|DATE",
            help="Up to this event (included), or up to this date-time (included), or to "
            "the end of this date.",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Count events and runs; change nothing."
        )
        parser.add_argument(
            "--force", action="store_true", help="Run done and dead runs again too."
        )
        parser.add_argument(
            "--restart",
            action="store_true",
            help="Start over instead of continuing an interrupted replay of the same selection.",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=500,
            metavar="N",
            help="Events read, run and saved as progress at a time (default 500).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] < 1:
            raise CommandError(f"--batch-size must be at least 1, not {options['batch_size']}.")
        dispatcher = get_event_dispatcher()
        name = options["handler"]
        types = _types(name, options["type"], dispatcher.durable_handlers())
        since = _bound("--since", options["since"], end=False)
        until = _bound("--until", options["until"], end=True)
        _check_order(options["since"], since, options["until"], until)
        selection = Selection(
            handler=name,
            types=types,
            since_event=since if isinstance(since, UUID) else None,
            since_time=since if isinstance(since, datetime) else None,
            until_event=until if isinstance(until, UUID) else None,
            before_time=until if isinstance(until, datetime) else None,
            force=options["force"],
        )
        if options["dry_run"]:
            self._preview(selection, preview(selection))
            return

        progress: Progress | None = None

        def started(counted: Progress, continues: HandlerReplay | None) -> None:
            nonlocal progress
            progress = counted
            if continues is None:
                what = f"Replaying {name} over {', '.join(types)}"
                self.stdout.write(f"{what}: {counted.total} event(s).")
            else:
                self.stdout.write(
                    f"Continuing the replay of {name} started at "
                    f"{timezone.localtime(continues.started_at):%Y-%m-%d %H:%M:%S}: "
                    f"{counted.total} event(s) left."
                )

        try:
            done = replay(
                selection,
                dispatcher,
                batch_size=options["batch_size"],
                restart=options["restart"],
                on_start=started,
                on_batch=lambda now: self.stdout.write(_bar(now)),
            )
        except KeyboardInterrupt:
            where = f" after {progress.events} of {progress.total} events" if progress else ""
            raise CommandError(
                f"Interrupted{where}. Run the same command again to continue "
                "(with --restart to start over)."
            ) from None
        self.stdout.write(f"Done: {_counts(done)}.")
        if done.failed:
            self.stdout.write(
                f"{done.failed} run(s) raised: the workers retry them after their backoff, "
                "or they are dead; see the admin's handler runs."
            )

    def _preview(self, selection: Selection, seen: Preview) -> None:
        if seen.continues is not None:
            self.stdout.write(
                "Continues the replay started at "
                f"{timezone.localtime(seen.continues.started_at):%Y-%m-%d %H:%M:%S}."
            )
        self.stdout.write(
            f"{seen.events} event(s) of {', '.join(selection.types)} match. Runs of "
            f"{selection.handler}: {seen.missing} missing, {seen.waiting} pending or running, "
            f"{seen.done} done, {seen.dead} dead"
            + (f", {seen.tried} tried since the replay started" if seen.tried else "")
            + "."
        )
        left = "" if selection.force else f"; {seen.done} done and {seen.dead} dead left alone"
        self.stdout.write(
            f"Would run {seen.would_run} (creating {seen.missing} run(s)){left}. "
            "Dry run: nothing was changed."
        )


def _types(name: str, only: str | None, durable: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The types to replay ``name`` over; CommandError names what is wrong."""
    if name not in durable:
        known = "\n".join(f"  {handler} ({', '.join(types)})" for handler, types in durable.items())
        raise CommandError(
            f"{name!r} is not a durable handler. "
            + (f"The durable handlers are:\n{known}" if known else "There are none.")
        )
    handled = durable[name]
    if only is None:
        return handled
    if only not in catalog:
        raise CommandError(f"Unknown event type {only!r}: it is not in any catalog.")
    type_name = catalog.resolve(only).name
    if type_name not in handled:
        raise CommandError(f"{name} does not handle {only!r}; it handles: {', '.join(handled)}.")
    return (type_name,)


def _bound(option: str, text: str | None, end: bool) -> UUID | datetime | None:
    """An event id (in the log), or the time an ISO date or date-time starts or ends.

    The end of ``--until`` is exclusive: the next midnight for a date, one microsecond
    (the log's precision) after a date-time.
    """
    if text is None:
        return None
    try:
        event_id = parse_uuid(text)
    except ValueError:
        pass
    else:
        if not EventRecord.objects.filter(pk=event_id).exists():
            raise CommandError(f"{option} {text!r}: there is no event with this id in the log.")
        return event_id
    try:
        # A date first: parse_datetime() would read 2024-03-05 as its midnight.
        day = parse_date(text.strip())
        moment = None if day else parse_datetime(text.strip())
    except ValueError as exc:  # well formed, impossible: 2024-02-30
        raise CommandError(f"{option} {text!r} is not a valid date: {exc}.") from exc
    if moment is None and day is None:
        raise CommandError(
            f"{option} {text!r} is neither an event id nor an ISO date or date-time "
            "(e.g. 2024-03-05 or 2024-03-05T12:00)."
        )
    if moment is None:
        assert day is not None
        moment = datetime.combine(day + timedelta(days=1) if end else day, time())
    elif end:
        moment += timedelta(microseconds=1)
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


def _check_order(
    since_text: str | None,
    since: UUID | datetime | None,
    until_text: str | None,
    until: UUID | datetime | None,
) -> None:
    """Refuse a range that ends before it starts."""
    if since is None or until is None:
        return
    if isinstance(since, datetime) and isinstance(until, datetime):
        wrong = since >= until
    elif isinstance(since, UUID) and isinstance(until, UUID):
        wrong = _log_order(since) > _log_order(until)
    elif isinstance(since, UUID):
        assert isinstance(until, datetime)
        wrong = _timestamp(since) >= until
    else:
        assert isinstance(since, datetime) and isinstance(until, UUID)
        wrong = since > _timestamp(until)
    if wrong:
        raise CommandError(
            f"--since {since_text!r} comes after --until {until_text!r}: nothing to replay."
        )


def _log_order(event_id: UUID) -> tuple[int, int, datetime | None, UUID]:
    sequence, timestamp = EventRecord.objects.values_list("sequence", "timestamp").get(pk=event_id)
    if sequence is not None:
        return (0, sequence, None, event_id)
    return (1, 0, timestamp, event_id)


def _timestamp(event_id: UUID) -> datetime:
    moment: datetime = EventRecord.objects.values_list("timestamp", flat=True).get(pk=event_id)
    return moment


def _bar(progress: Progress) -> str:
    filled = BAR * progress.events // progress.total if progress.total else BAR
    filled = min(filled, BAR)
    return f"[{'#' * filled}{' ' * (BAR - filled)}] {progress.events}/{progress.total} events, " + (
        _counts(progress, events=False)
    )


def _counts(progress: Progress, events: bool = True) -> str:
    parts = [f"{progress.events} events"] if events else []
    parts += [f"{progress.ran} ran", f"{progress.already_done} already done"]
    for count, what in (
        (progress.failed, "raised"),
        (progress.dead, "dead left alone"),
        (progress.tried, "tried since the replay started"),
        (progress.created, "runs created"),
    ):
        if count:
            parts.append(f"{count} {what}")
    return ", ".join(parts)
