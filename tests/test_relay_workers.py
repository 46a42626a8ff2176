"""Concurrent relay workers over one backlog: every event once, duplicates counted."""

import asyncio
import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any
from uuid import uuid4

import pytest
from asgiref.sync import async_to_sync
from django.db import DatabaseError, connection, connections
from django.test import override_settings
from django.utils import timezone

from eventbus.bus import EventBus
from eventbus.ids import uuid7
from eventbus.models import DeliveryStatus, EventRecord, StreamEntry, StreamHead
from eventbus.relay import Relay

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.db_heavy]

BACKLOG = 1000


class CountingSink:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ids: list[Any] = []

    async def send(self, events) -> None:
        with self.lock:
            self.ids.extend(event.id for event in events)


PROJECTS = [uuid4() for _ in range(3)]


def make_backlog(count: int) -> None:
    """``count`` committed events never handed off, spread over three project channels."""
    old = timezone.now() - timedelta(minutes=5)
    EventRecord.objects.bulk_create(
        EventRecord(
            id=uuid7(),
            type="order.deleted",
            timestamp=old,
            project_id=str(PROJECTS[n % len(PROJECTS)]),
            payload={"order_id": n},
            correlation_id=uuid7(),
        )
        for n in range(count)
    )


def run_workers(workers: int, sink: CountingSink) -> dict[str, int]:
    errors: list[BaseException] = []
    lock_retries = Counter()

    def work(name: str) -> None:
        relay = Relay(sink=sink)
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                try:
                    report = relay.run_once()
                except DatabaseError:  # SQLite: the other worker holds the write lock
                    lock_retries[name] += 1
                    time.sleep(0.01)
                    continue
                if (
                    not report
                    and not EventRecord.objects.filter(status=DeliveryStatus.PENDING).exists()
                ):
                    return
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)
    return dict(lock_retries)


@override_settings(EVENTBUS={"CATALOGS": [], "RELAY_BATCH_SIZE": 50})
def test_two_workers_deliver_each_event_once(capsys):
    make_backlog(BACKLOG)
    sink = CountingSink()
    started = time.monotonic()
    lock_retries = run_workers(2, sink)
    elapsed = time.monotonic() - started
    counts = Counter(sink.ids)
    duplicates = sum(n - 1 for n in counts.values())
    print(
        f"\n[two relay workers, {connection.vendor}] backlog {BACKLOG}, delivered "
        f"{len(counts)}, duplicates {duplicates}, lock retries {lock_retries}, {elapsed:.2f} s"
    )
    assert len(counts) == BACKLOG
    assert duplicates == 0
    assert EventRecord.objects.filter(status=DeliveryStatus.DELIVERED).count() == BACKLOG
    sequences = list(EventRecord.objects.values_list("sequence", flat=True))
    assert None not in sequences and len(set(sequences)) == BACKLOG
    assert_positions_are_one_to_n_per_channel()


def assert_positions_are_one_to_n_per_channel() -> None:
    """Each event has one position on its channel; each channel's run 1..N, no repeats."""
    entries = list(StreamEntry.objects.values_list("channel", "position", "event_id"))
    assert len({event_id for _, _, event_id in entries}) == len(entries) == BACKLOG
    by_channel: dict[str, list[int]] = {}
    for channel, position, _ in entries:
        by_channel.setdefault(channel, []).append(position)
    assert sorted(by_channel) == sorted(EventBus.get_project_channel(p) for p in PROJECTS)
    for channel, positions in by_channel.items():
        assert sorted(positions) == list(range(1, len(positions) + 1)), channel
    heads = dict(StreamHead.objects.values_list("channel", "position"))
    assert heads == {channel: len(positions) for channel, positions in by_channel.items()}


@pytest.mark.postgres
@override_settings(EVENTBUS={"CATALOGS": [], "RELAY_BATCH_SIZE": 50})
def test_skip_locked_keeps_workers_apart_on_postgres():
    """Both workers take part; neither waits on the other's rows."""
    make_backlog(BACKLOG)
    sink = CountingSink()
    run_workers(2, sink)
    assert len(set(sink.ids)) == len(sink.ids) == BACKLOG
    assert_positions_are_one_to_n_per_channel()


@override_settings(EVENTBUS={"CATALOGS": [], "RELAY_BATCH_SIZE": 100})
async def test_worker_loop_drains_a_backlog_bigger_than_a_batch():
    """arun() claims the next batch while sending one; every event goes out once, in order."""
    from asgiref.sync import sync_to_async

    await sync_to_async(make_backlog)(350)
    sink = CountingSink()
    delivered = await asyncio.wait_for(Relay(sink=sink).arun(until_idle=True), 60)
    expected = await sync_to_async(
        lambda: list(EventRecord.objects.order_by("timestamp", "id").values_list("id", flat=True))
    )()
    assert delivered == 350 and sink.ids == expected
    pending = await sync_to_async(EventRecord.objects.filter(status=DeliveryStatus.PENDING).count)()
    assert pending == 0


@override_settings(EVENTBUS={"CATALOGS": [], "RELAY_BATCH_SIZE": 100})
async def test_worker_loop_stops_when_asked_and_sends_what_it_claimed():
    from asgiref.sync import sync_to_async

    await sync_to_async(make_backlog)(250)
    sink = CountingSink()
    stop = asyncio.Event()
    stop.set()  # asked to stop before it starts: nothing is claimed
    assert await Relay(sink=sink).arun(stop=stop) == 0 and sink.ids == []


@override_settings(EVENTBUS={"CATALOGS": [], "RELAY_BATCH_SIZE": 50})
def test_two_worker_loops_deliver_each_event_once():
    """Two arun() loops over one backlog, as two ``eventbus_relay`` processes run: each
    marks what it sent delivered in its next claim's transaction, and nothing is lost,
    sent twice or numbered twice."""
    make_backlog(BACKLOG)
    sink = CountingSink()
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                # async_to_sync: the loop's database work runs in this thread, on its
                # own connection, as in a process of its own.
                async_to_sync(Relay(sink=sink).arun)(until_idle=True)
                if not EventRecord.objects.filter(status=DeliveryStatus.PENDING).exists():
                    return
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=loop) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert not errors, errors
    assert len(set(sink.ids)) == len(sink.ids) == BACKLOG
    assert EventRecord.objects.filter(status=DeliveryStatus.DELIVERED).count() == BACKLOG
    sequences = list(EventRecord.objects.values_list("sequence", flat=True))
    assert None not in sequences and len(set(sequences)) == BACKLOG
    assert_positions_are_one_to_n_per_channel()


@override_settings(EVENTBUS={"CATALOGS": [], "RELAY_BATCH_SIZE": 20})
def test_worker_loop_commits_once_per_batch(monkeypatch):
    """A backlog drains at one transaction per batch: what a batch sent is marked
    delivered by the transaction that claims a later one (and the last by one more)."""
    make_backlog(100)  # five batches
    commits = Counter()
    wrapper = type(connections["default"])
    real_commit = wrapper.commit

    def counting_commit(self) -> None:
        commits[threading.current_thread().name] += 1
        real_commit(self)

    monkeypatch.setattr(wrapper, "commit", counting_commit)
    monkeypatch.setattr("eventbus.relay.Relay._asweep", lambda self: asyncio.sleep(0))
    sink = CountingSink()
    assert asyncio.run(Relay(sink=sink).arun(until_idle=True)) == 100
    monkeypatch.undo()
    # Six claims (the last finds nothing) and the last batch's mark; before, every
    # batch's mark was a transaction of its own (eleven).
    assert sum(commits.values()) == 7, commits
    assert EventRecord.objects.filter(status=DeliveryStatus.DELIVERED).count() == 100


@override_settings(EVENTBUS={"CATALOGS": [], "RELAY_BATCH_SIZE": 100})
def test_a_batch_is_leased_numbered_and_read_by_one_statement():
    """The claim is one UPDATE ... RETURNING on the log (SQLite also reads MAX(sequence)
    first), and the statements of a batch do not grow with it."""
    from django.test.utils import CaptureQueriesContext

    make_backlog(190)
    Relay(sink=CountingSink()).run_once()  # 100 events; the channels' heads exist now
    with CaptureQueriesContext(connection) as captured:
        report = Relay(sink=CountingSink()).run_once()
    assert len(report.delivered) == 90
    statements = [
        query["sql"].split("times: ", 1)[-1].strip()  # executemany: "N times: SQL"
        for query in captured.captured_queries
        if not query["sql"].startswith(("BEGIN", "COMMIT", "SAVEPOINT", "RELEASE SAVEPOINT"))
    ]
    on_the_log = [sql for sql in statements if "eventbus_eventrecord" in sql]
    # The claim, and the outcome's mark; SQLite's MAX(sequence).
    assert len(on_the_log) == (2 if connection.vendor == "postgresql" else 3), on_the_log
    assert sum(sql.startswith("UPDATE") for sql in on_the_log) == 2, on_the_log
    # The heads locked, then moved on with the entries inserted (one statement on
    # PostgreSQL, two executemany on SQLite).
    assert len(statements) == (4 if connection.vendor == "postgresql" else 6), statements
