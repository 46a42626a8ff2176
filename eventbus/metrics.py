"""Prometheus metrics: what each process counts, the backlog read at scrape time, and the
ways to expose them (``metrics_view``, or a port of its own with :func:`serve`).

Optional: ``pip install "django-eventbus[metrics]"`` (prometheus-client). Without it, or
with ``EVENTBUS['METRICS'] = False``, :func:`load` gives None at start-up: the dispatcher
holds no meter, and the rest of eventbus :data:`NO_METRICS`, whose methods do nothing.

Several processes (ASGI workers, the relay, task workers) are added up by
prometheus-client's multiprocess mode: set ``PROMETHEUS_MULTIPROC_DIR`` to an empty
directory before any of them starts; each writes its counts there and whichever process
serves ``/metrics`` adds them up (README, *Monitoring*).

The dispatcher's counts are its hot path, paid per event and per handler: they are
lock-free tallies that reach the Prometheus counters when scraped (and, in multiprocess
mode, every second, and at exit).
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

from django.http import HttpRequest, HttpResponse

from . import conf

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from .catalog import CatalogEntry
    from .inspection import Handler

logger = logging.getLogger("eventbus")

FLUSH_SECONDS = 1.0
"""How often a process in multiprocess mode writes its pending counts."""
RETIRE_SECONDS = 600.0
"""A dispatcher's tally that counted nothing for this long is dropped (see ``flush``)."""
BACKLOG_TIMEOUT = 10.0
"""Seconds a scrape waits for the backlog's queries before it goes without them."""


def multiprocess_dir() -> str | None:
    """prometheus-client's multiprocess directory, when set (the library reads it too)."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Recorder:
    """What eventbus measures, as calls that do nothing: the recorder when metrics are off.

    :class:`Metrics` does the same calls for real. Every method is safe to call from any
    thread and never raises.
    """

    enabled = False

    # The dispatcher's (dispatcher.Meter): per event, and per handler.
    def published(self, entry: CatalogEntry) -> None: ...

    def dispatched(self, handlers: tuple[Handler, ...]) -> None: ...

    def handler_failed(self, handler: str) -> None: ...

    # Durable runs, in the task worker.
    def durable_run(self, handler: str, outcome: str) -> None: ...

    # The relay: events the sink took, and sends that raised (path: hand_off or relay).
    def delivered(self, count: int, path: str) -> None: ...

    def send_failed(self, path: str) -> None: ...

    # The channel layer: messages it dropped, their channel at capacity.
    def layer_dropped(self, count: int) -> None: ...

    # WebSockets in this process.
    def socket_opened(self) -> None: ...

    def socket_closed(self) -> None: ...

    def subscribed(self) -> None: ...

    def unsubscribed(self) -> None: ...

    def socket_too_slow(self) -> None: ...

    def replayed(self, events: int) -> None: ...

    def reset(self, reason: str) -> None: ...

    def rate_limited(self, limit: str) -> None: ...

    # Presence: this process's present connections, and the joins and leaves it announced.
    def presence_joined(self) -> None: ...

    def presence_left(self) -> None: ...

    def presence_changed(self, kind: str, count: int) -> None: ...

    def flush(self) -> None: ...


NO_METRICS = Recorder()


class Metrics(Recorder):
    """The Prometheus metrics of this process; one per process (see :func:`load`)."""

    enabled = True

    def __init__(self) -> None:
        from prometheus_client import REGISTRY, Counter, Gauge

        # The hot path's tallies, by object: by catalog entry (its type), and by tuple of
        # handlers (one bump per event, spread over its handlers only when flushed).
        self._published: dict[int, _Tally] = {}
        self._dispatched: dict[int, _Tally] = {}
        self._retired: list[_Tally] = []
        self._lock = threading.Lock()  # new tallies, and the flush
        self._multiprocess = multiprocess_dir() is not None
        # Registered first: a scrape of the default registry flushes before it reads.
        REGISTRY.register(_FlushFirst(self))
        counter = Counter
        self.events_published = counter(
            "eventbus_events_published",
            "Events published, by type, counted after their commit.",
            ["type"],
        )
        self.events_stored = counter(
            "eventbus_events_stored",
            "Events written to the event log, by type, counted after their commit.",
            ["type"],
        )
        self.handler_runs = counter(
            "eventbus_handler_runs",
            "In-process handler calls, by handler (its dotted path).",
            ["handler"],
        )
        self.handler_failures = counter(
            "eventbus_handler_failures",
            "In-process handlers (and event_published receivers) that raised, by handler.",
            ["handler"],
        )
        self.durable_runs = counter(
            "eventbus_durable_executions",
            "Durable run executions in task workers, by handler and outcome "
            "(done, retrying, dead, skipped).",
            ["handler", "outcome"],
        )
        self.relay_delivered = counter(
            "eventbus_relay_delivered",
            "Events the sink took, by path (hand_off: right after the commit; relay: the "
            "relay worker's retries and sweeps).",
            ["path"],
        )
        self.send_errors = counter(
            "eventbus_send_errors",
            "Sends to the sink that raised, by path (hand_off, relay); the events wait "
            "for the relay's retry.",
            ["path"],
        )
        self.layer_drops = counter(
            "eventbus_channel_layer_dropped_messages",
            "Messages the channel layer dropped because their channel was at capacity "
            "(RedisChannelLayer, as eventbus batches them).",
        )
        self.sockets = Gauge(
            "eventbus_websocket_connections",
            "Open WebSockets in this process.",
            multiprocess_mode="liveall",
        )
        self.subscriptions = Gauge(
            "eventbus_websocket_subscriptions",
            "Channel subscriptions of the open WebSockets in this process.",
            multiprocess_mode="liveall",
        )
        self.presence = Gauge(
            "eventbus_presence_connections",
            "Connections of this process present on a channel (PRESENCE), one per socket "
            "and channel.",
            multiprocess_mode="liveall",
        )
        self.presence_changes = counter(
            "eventbus_presence_changes",
            "Presence joins and leaves this process announced (a leave of a dead "
            "process's user is announced by whoever pruned it), by kind.",
            ["kind"],
        )
        self.slow_sockets = counter(
            "eventbus_websocket_too_slow",
            "WebSockets closed (4408) because the client fell WS_SEND_QUEUE frames or "
            "WS_SEND_TIMEOUT behind.",
        )
        self.replays = counter(
            "eventbus_resume_replays",
            "Resumes answered from the event log (a subscribe with a position or since).",
        )
        self.replayed_events = counter(
            "eventbus_resume_replayed_events",
            "Events sent from the event log to resuming sockets.",
        )
        self.resets = counter(
            "eventbus_resets",
            "Reset frames sent to sockets, by reason (docs/protocol.md).",
            ["reason"],
        )
        self.rate_limits = counter(
            "eventbus_rate_limited",
            "Client actions refused by a limit, by limit (connections, connects, frames, "
            "subscribes, replays).",
            ["limit"],
        )
        REGISTRY.register(BacklogCollector())
        os.register_at_fork(after_in_child=self._forked)
        atexit.register(self._flush_at_exit)
        if self._multiprocess:  # the scrape is in another process: write every second
            self._start_flusher()

    # -- the hot path: tallies without a lock, flushed later ------------------------------

    def published(self, entry: CatalogEntry) -> None:
        tally = self._published.get(id(entry))
        if tally is None:
            tally = self._tally(self._published, id(entry), entry)
        tally.bump()

    def dispatched(self, handlers: tuple[Handler, ...]) -> None:
        tally = self._dispatched.get(id(handlers))
        if tally is None:
            tally = self._tally(self._dispatched, id(handlers), handlers)
        tally.bump()

    def _tally(self, tallies: dict[Any, _Tally], key: Any, of: Any) -> _Tally:
        with self._lock:
            tally = tallies.get(key)
            if tally is None:
                # The tally holds ``of``, so its id stays its own while it is counted.
                tally = tallies[key] = _Tally(of)
            return tally

    def flush(self) -> None:
        """Move what the tallies counted since the last flush into the Prometheus counters.

        Whether a type's events were stored is read now: ``LOG`` and the type's ``log``
        flag do not change while a process runs (tests aside).
        """
        settings = conf.get_settings()
        published: list[tuple[CatalogEntry, int]] = []
        runs: dict[str, int] = {}
        now = time.monotonic()
        with self._lock:
            # Tallies of tuples of handlers that are gone (subscriptions changed) would
            # stay forever: one idle for RETIRE_SECONDS leaves its dict, and is read for
            # RETIRE_SECONDS more, for a thread that took it from the dict just before.
            kept = []
            for tally in self._retired:
                self._spread(tally.of, tally.take(), published, runs)
                if now - tally.idle_since < 2 * RETIRE_SECONDS:
                    kept.append(tally)
            self._retired = kept
            every: tuple[dict[Any, _Tally], ...] = (self._published, self._dispatched)
            for tallies in every:
                for key, tally in list(tallies.items()):
                    count = tally.take()
                    if count:
                        self._spread(tally.of, count, published, runs)
                        tally.idle_since = now
                    elif now - tally.idle_since > RETIRE_SECONDS:
                        del tallies[key]
                        self._retired.append(tally)
        for entry, count in published:
            self.events_published.labels(type=entry.name).inc(count)
            if settings.LOG and entry.spec.log:
                self.events_stored.labels(type=entry.name).inc(count)
        for name, count in runs.items():
            self.handler_runs.labels(handler=name).inc(count)

    @staticmethod
    def _spread(
        of: Any, count: int, published: list[tuple[CatalogEntry, int]], runs: dict[str, int]
    ) -> None:
        if not count:
            return
        if isinstance(of, tuple):  # handlers: each ran once per dispatch
            for handler in of:
                runs[handler.name] = runs.get(handler.name, 0) + count
        else:
            published.append((of, count))

    def _flush_at_exit(self) -> None:
        # In multiprocess mode the last second's counts are written only here.
        try:
            self.flush()
        except Exception:
            logger.exception("Could not write eventbus's metrics at exit")

    def _start_flusher(self) -> None:
        threading.Thread(target=self._flush_forever, name="eventbus-metrics", daemon=True).start()

    def _flush_forever(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            try:
                self.flush()
            except Exception:  # a full disk: the counts wait for the next try
                logger.exception("Could not write eventbus's metrics")

    def _forked(self) -> None:
        # What the parent counted is the parent's to write; its thread did not follow.
        self._lock = threading.Lock()
        self._published, self._dispatched, self._retired = {}, {}, []
        if self._multiprocess:
            self._start_flusher()

    def metric_families(self, names: Iterable[str]) -> list[Any]:
        """This process's families of these names (flushed first), for the dashboard."""
        from prometheus_client.metrics import MetricWrapperBase

        self.flush()
        wanted = set(names)
        return [
            family
            for value in vars(self).values()
            if isinstance(value, MetricWrapperBase)
            for family in value.collect()
            if family.name in wanted
        ]

    # -- the rest: rare enough to go straight to Prometheus -------------------------------

    def handler_failed(self, handler: str) -> None:
        self.handler_failures.labels(handler=handler).inc()

    def durable_run(self, handler: str, outcome: str) -> None:
        self.durable_runs.labels(handler=handler, outcome=outcome.split(":")[0]).inc()

    def delivered(self, count: int, path: str) -> None:
        self.relay_delivered.labels(path=path).inc(count)

    def send_failed(self, path: str) -> None:
        self.send_errors.labels(path=path).inc()

    def layer_dropped(self, count: int) -> None:
        self.layer_drops.inc(count)

    def socket_opened(self) -> None:
        self.sockets.inc()

    def socket_closed(self) -> None:
        self.sockets.dec()

    def subscribed(self) -> None:
        self.subscriptions.inc()

    def unsubscribed(self) -> None:
        self.subscriptions.dec()

    def socket_too_slow(self) -> None:
        self.slow_sockets.inc()

    def presence_joined(self) -> None:
        self.presence.inc()

    def presence_left(self) -> None:
        self.presence.dec()

    def presence_changed(self, kind: str, count: int) -> None:
        self.presence_changes.labels(kind=kind).inc(count)

    def replayed(self, events: int) -> None:
        self.replays.inc()
        self.replayed_events.inc(events)

    def reset(self, reason: str) -> None:
        self.resets.labels(reason=reason).inc()

    def rate_limited(self, limit: str) -> None:
        self.rate_limits.labels(limit=limit).inc()


class _Tally:
    """A count that threads bump without a lock: ``next()`` on an ``itertools.count`` is
    one atomic step. The flush reads it with ``next()`` too, keeping its reads apart."""

    __slots__ = ("_count", "_flushed", "_reads", "bump", "idle_since", "of")

    def __init__(self, of: Any) -> None:
        self.of = of
        self._count = itertools.count()
        self.bump = self._count.__next__
        self._reads = 0
        self._flushed = 0
        self.idle_since = time.monotonic()  # when it was last seen counting

    def take(self) -> int:
        """How many bumps since the last take (the flush's, under its lock)."""
        total = next(self._count) - self._reads
        self._reads += 1
        new, self._flushed = total - self._flushed, total
        return new


class _FlushFirst:
    """A collector that yields nothing: collected first, it flushes the pending counts."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> list[Any]:
        self.metrics.flush()
        return []


class BacklogCollector:
    """The backlog (``eventbus.backlog``) as gauges, read from the database at each scrape.

    The same numbers from every process that serves them: aggregate with ``max``. The
    queries run on a thread of their own, which closes its connection as Django's request
    cycle would: a scrape served by prometheus-client's HTTP server never passes there.
    """

    def describe(self) -> list[Any]:
        return list(self._families(None))

    def collect(self) -> Iterator[Any]:
        try:
            backlog = _backlog_reader().submit(_read_backlog).result(timeout=BACKLOG_TIMEOUT)
        except FutureTimeout:
            logger.warning("eventbus metrics: the backlog queries took over %s s", BACKLOG_TIMEOUT)
            return iter(())
        except Exception as exc:  # the database is away: the other metrics still go out
            logger.warning("eventbus metrics: could not read the backlog: %s", exc)
            return iter(())
        return self._families(backlog)

    def _families(self, backlog: Any) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        def gauge(name: str, text: str, value: float | None) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, text)
            if value is not None:
                family.add_metric([], value)
            return family

        yield gauge(
            "eventbus_relay_lag_seconds",
            "Age of the oldest pending event of the log: how far delivery is behind.",
            None if backlog is None else backlog.lag_seconds,
        )
        yield gauge(
            "eventbus_relay_pending_events",
            "Events of the log not yet delivered to the sink.",
            None if backlog is None else backlog.pending_events,
        )
        yield gauge(
            "eventbus_relay_retrying_events",
            "Pending events whose last send raised: they wait for the relay's retry.",
            None if backlog is None else backlog.retrying_events,
        )
        yield gauge(
            "eventbus_relay_failed_events",
            "Events the relay gave up on after RELAY_MAX_ATTEMPTS (re-deliver them).",
            None if backlog is None else backlog.failed_events,
        )
        runs = GaugeMetricFamily(
            "eventbus_durable_runs",
            "Durable runs not done, by status: pending, running, dead (retry them).",
            labels=["status"],
        )
        if backlog is not None:
            for status, count in sorted(backlog.runs.items()):
                runs.add_metric([status], count)
        yield runs


def _read_backlog() -> Any:
    from django.db import close_old_connections

    from .backlog import read_backlog

    # Connections closed around it, as Django does around a request (CONN_MAX_AGE keeps
    # one open between scrapes, where the project asks for that).
    close_old_connections()
    try:
        return read_backlog()
    finally:
        close_old_connections()


_reader: tuple[int, ThreadPoolExecutor] | None = None


def _backlog_reader() -> ThreadPoolExecutor:
    global _reader
    if _reader is None or _reader[0] != os.getpid():  # threads do not survive a fork
        _reader = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="eventbus-backlog"))
    return _reader[1]


# -- exposing them ------------------------------------------------------------------------


def exposition_registry() -> CollectorRegistry:
    """What a scrape reads: this process's registry, or in multiprocess mode every
    process's counts from the directory, with the backlog."""
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    path = multiprocess_dir()
    if path is None:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    registry.register(BacklogCollector())
    return registry


def metrics_view(request: HttpRequest) -> HttpResponse:
    """``/metrics`` for Prometheus: mount it with ``path("metrics", metrics_view)``.

    503 with the reason when metrics are off. It has no access control of its own:
    mount it where only your Prometheus reaches, or wrap it in your own check.
    """
    metrics = get_metrics()
    if not metrics.enabled:
        return HttpResponse(off_reason(), status=503, content_type="text/plain; charset=utf-8")
    from prometheus_client.exposition import choose_encoder

    metrics.flush()
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(exposition_registry()), content_type=content_type)


def serve(port: int, addr: str = "0.0.0.0") -> Any:
    """Serve ``/metrics`` on a port of this process's own, from a thread (the relay's
    ``--metrics-port``); the server, to ``shutdown()``. Raises :class:`RuntimeError` when
    metrics are off, and ``OSError`` when the port is taken."""
    metrics = get_metrics()
    if not metrics.enabled:
        raise RuntimeError(off_reason())
    from prometheus_client import start_http_server

    server, _ = start_http_server(
        port, addr=addr, registry=_Flushing(metrics, exposition_registry())
    )
    return server


class _Flushing:
    """A registry view that flushes the pending counts before each read."""

    def __init__(self, metrics: Recorder, registry: Any) -> None:
        self.metrics = metrics
        self.registry = registry

    def collect(self) -> Iterable[Any]:
        self.metrics.flush()
        return self.registry.collect()  # type: ignore[no-any-return]

    def restricted_registry(self, names: Iterable[str]) -> Any:
        self.metrics.flush()
        return self.registry.restricted_registry(names)


def off_reason() -> str:
    """Why metrics are off, for the view and the dashboard."""
    if not conf.get_settings().METRICS:
        return "eventbus metrics are off: EVENTBUS['METRICS'] is False.\n"
    return 'eventbus metrics are off: install prometheus-client ("django-eventbus[metrics]").\n'


# -- the process's metrics ----------------------------------------------------------------

_metrics: Recorder = NO_METRICS
_instance: Metrics | None = None


def load() -> Metrics | None:
    """This process's metrics, decided once at start-up (``AppConfig.ready()``): None when
    ``METRICS`` is off or prometheus-client is not installed."""
    global _instance
    if not conf.get_settings().METRICS:
        return None
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return None
    if _instance is None:  # Prometheus refuses a metric registered twice
        _instance = Metrics()
    return _instance


def get_metrics() -> Recorder:
    """The process's recorder, as wired at start-up (:data:`NO_METRICS` when off)."""
    return _metrics


def set_metrics(metrics: Recorder | None) -> None:
    """Wire the process's recorder: ``AppConfig.ready()``, and tests. The dispatcher
    takes its own from its stages."""
    global _metrics
    _metrics = metrics if metrics is not None else NO_METRICS
