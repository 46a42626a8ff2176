"""Say whether delivery is healthy, for a probe: exit status 0 when it is, 1 when not."""

from __future__ import annotations

import json
import math
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from eventbus.health import Thresholds, check_health


class Command(BaseCommand):
    help = (
        "Check delivery health: relay lag, events waiting for a retry after a failed send, "
        "failed events, dead durable runs. Exit status 0 when healthy, 1 when not (each "
        "problem printed), 2 for a bad option. Thresholds default to EVENTBUS['HEALTH_*']."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--max-lag", help="Seconds of relay lag still healthy (HEALTH_MAX_LAG)."
        )
        parser.add_argument(
            "--max-dead-runs", help="Dead durable runs still healthy (HEALTH_MAX_DEAD_RUNS)."
        )
        parser.add_argument(
            "--max-failed-events",
            help="Events failed delivery still healthy (HEALTH_MAX_FAILED_EVENTS).",
        )
        parser.add_argument(
            "--max-retrying",
            help="Events waiting for a retry after a failed send still healthy "
            "(HEALTH_MAX_RETRYING).",
        )
        parser.add_argument("--json", action="store_true", help="Print the report as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        thresholds = Thresholds.from_settings(
            max_lag=_seconds(options["max_lag"]),
            max_dead_runs=_count("--max-dead-runs", options["max_dead_runs"]),
            max_failed_events=_count("--max-failed-events", options["max_failed_events"]),
            max_retrying=_count("--max-retrying", options["max_retrying"]),
        )
        health = check_health(thresholds)
        if options["json"]:
            self.stdout.write(json.dumps(health.as_dict(), indent=2))
        else:
            self._print(health)
        if not health.ok:
            raise SystemExit(1)

    def _print(self, health: Any) -> None:
        backlog = health.backlog
        if backlog is not None:
            self.stdout.write(
                f"relay: lag {backlog.lag_seconds:.1f} s, {backlog.pending_events} pending, "
                f"{backlog.retrying_events} retrying, {backlog.failed_events} failed; "
                f"durable runs: {backlog.pending_runs} pending, "
                f"{backlog.runs.get('running', 0)} running, {backlog.dead_runs} dead"
            )
        for note in health.notes:
            self.stdout.write(f"note: {note}")
        if health.ok:
            self.stdout.write(self.style.SUCCESS("healthy"))
            return
        for problem in health.problems:
            self.stderr.write(f"unhealthy: {problem}")


def _seconds(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise CommandError(
            f"--max-lag must be a number of seconds, not {text!r}.", returncode=2
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise CommandError(
            f"--max-lag must be a positive number of seconds, not {text}.", returncode=2
        )
    return value


def _count(option: str, text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise CommandError(
            f"{option} must be a whole number, not {text!r}.", returncode=2
        ) from None
    if value < 0:
        raise CommandError(f"{option} must be 0 or more, not {value}.", returncode=2)
    return value
