"""Delivery health for probes: the backlog judged against thresholds, and its JSON view.

``manage.py eventbus_health`` and :func:`health_view` say the same thing: unhealthy when
the relay lags more than ``HEALTH_MAX_LAG`` seconds, or when more durable runs are dead,
more events failed delivery, or more events wait for a retry after a failed send than
their ``HEALTH_MAX_*`` setting allows; and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.http import HttpRequest, JsonResponse

from . import conf
from .backlog import Backlog, read_backlog


@dataclass(frozen=True)
class Thresholds:
    """What is still healthy: the most lag, in seconds, and the most of each count."""

    max_lag: float
    max_dead_runs: int
    max_failed_events: int
    max_retrying: int

    @classmethod
    def from_settings(cls, **overrides: Any) -> Thresholds:
        """The ``HEALTH_*`` settings, with ``overrides`` that are not None."""
        settings = conf.get_settings()
        values: dict[str, Any] = {
            "max_lag": settings.HEALTH_MAX_LAG,
            "max_dead_runs": settings.HEALTH_MAX_DEAD_RUNS,
            "max_failed_events": settings.HEALTH_MAX_FAILED_EVENTS,
            "max_retrying": settings.HEALTH_MAX_RETRYING,
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)


@dataclass(frozen=True)
class Health:
    """The verdict: healthy when ``problems`` is empty; each problem says why, in words."""

    problems: list[str] = field(default_factory=list)
    backlog: Backlog | None = None
    thresholds: Thresholds | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """The JSON the view answers and ``eventbus_health --json`` prints."""
        data: dict[str, Any] = {
            "status": "ok" if self.ok else "unhealthy",
            "problems": self.problems,
            "notes": self.notes,
        }
        if self.backlog is not None:
            backlog = self.backlog
            data["relay"] = {
                "lag_seconds": round(backlog.lag_seconds, 3),
                "pending_events": backlog.pending_events,
                "retrying_events": backlog.retrying_events,
                "failed_events": backlog.failed_events,
            }
            data["durable_runs"] = dict(backlog.runs)
        if self.thresholds is not None:
            data["thresholds"] = {
                "max_lag_seconds": self.thresholds.max_lag,
                "max_dead_runs": self.thresholds.max_dead_runs,
                "max_failed_events": self.thresholds.max_failed_events,
                "max_retrying": self.thresholds.max_retrying,
            }
        return data


def check_health(thresholds: Thresholds | None = None, using: str | None = None) -> Health:
    """Read the backlog and judge it; a database that cannot be read is a problem too."""
    thresholds = thresholds or Thresholds.from_settings()
    try:
        backlog = read_backlog(using)
    except Exception as exc:
        return Health(
            [f"The event log cannot be read: {type(exc).__name__}: {exc}"], None, thresholds
        )
    return judge(backlog, thresholds)


def judge(backlog: Backlog, thresholds: Thresholds) -> Health:
    """The problems of ``backlog`` under ``thresholds``."""
    problems: list[str] = []
    notes: list[str] = []
    if conf.get_settings().SINK is None:
        # Nothing hands events on: rows stay pending by design, so lag means nothing.
        notes.append("EVENTBUS['SINK'] is None: events are not relayed, lag is not checked.")
    else:
        if backlog.lag_seconds > thresholds.max_lag:
            problems.append(
                f"Relay lag is {backlog.lag_seconds:.1f} s, over {thresholds.max_lag:g} s: "
                f"{backlog.pending_events} event(s) wait for the sink since "
                f"{backlog.oldest_pending:%Y-%m-%d %H:%M:%S} UTC. Is manage.py eventbus_relay "
                "running, and the channel layer reachable?"
            )
        if backlog.retrying_events > thresholds.max_retrying:
            problems.append(
                f"Sends are failing: {backlog.retrying_events} event(s) wait for a retry "
                f"after their send to the sink raised (more than {thresholds.max_retrying}); "
                "see their last error in the admin's event log (status pending)."
            )
    if backlog.failed_events > thresholds.max_failed_events:
        problems.append(
            f"{backlog.failed_events} event(s) failed delivery after RELAY_MAX_ATTEMPTS "
            f"(more than {thresholds.max_failed_events}): re-deliver them from the admin."
        )
    if backlog.dead_runs > thresholds.max_dead_runs:
        problems.append(
            f"{backlog.dead_runs} durable run(s) are dead (more than "
            f"{thresholds.max_dead_runs}): read their tracebacks and retry them from the "
            "admin's handler runs."
        )
    return Health(problems, backlog, thresholds, notes)


def health_view(request: HttpRequest) -> JsonResponse:
    """The health as JSON: 200 when healthy, 503 (with the problems) when not.

    Mount it for your probes (``path("health/eventbus", health_view)``). It shows counts
    only, but has no access control of its own.
    """
    health = check_health()
    return JsonResponse(health.as_dict(), status=200 if health.ok else 503)
