"""manage.py eventbus_replay: a durable handler run again over the log, once per event.

The handler is tests/testapp/handlers.py's ``audit_payment``: each run it completes
writes one ``Effect`` row, so the rows tell which events it ran on, how often and in
what order.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import StringIO
from typing import Any
from uuid import UUID, uuid4

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from eventbus import durable, publish
from eventbus.models import EventRecord, HandlerReplay, HandlerRun, RunStatus
from tests.testapp.events import ShopEvent
from tests.testapp.models import Effect

pytestmark = pytest.mark.django_db

AUDIT = "tests.testapp.handlers.audit_payment"
NOTIFY = "tests.testapp.handlers.notify_payment"
T0 = datetime(2024, 3, 5, 12, 0, tzinfo=UTC)


def payments(count: int, start: datetime = T0, **payload: Any) -> list[UUID]:
    """``count`` payment events, one a second from ``start``, with their runs pending."""
    ids = []
    for n in range(count):
        event = publish(ShopEvent.PAYMENT_RECEIVED, {"payment_id": n, **payload})
        EventRecord.objects.filter(pk=event.id).update(timestamp=start + timedelta(seconds=n))
        ids.append(event.id)
    return ids


def replay(*args: str) -> str:
    out = StringIO()
    call_command("eventbus_replay", *args, stdout=out)
    return out.getvalue()


def audited() -> list[UUID]:
    """The events audit_payment ran on, in the order it ran."""
    return list(
        Effect.objects.filter(handler="audit").order_by("id").values_list("event_id", flat=True)
    )


def audit_runs() -> dict[UUID, str]:
    return dict(HandlerRun.objects.filter(handler=AUDIT).values_list("event_id", "status"))


def test_replay_runs_the_handler_once_per_event_in_log_order_creating_missing_runs():
    events = payments(7)
    # The relay numbered four of them (in hand-off order, not timestamp order); the
    # others were not handed off yet: they come after, by timestamp.
    for sequence, event_id in enumerate([events[3], events[1], events[0], events[5]], start=1):
        EventRecord.objects.filter(pk=event_id).update(sequence=sequence)
    # A handler added after events 2 and 6 were published: they have no run of it.
    HandlerRun.objects.filter(handler=AUDIT, event_id__in=[events[2], events[6]]).delete()

    out = replay(AUDIT, "--batch-size", "3")

    assert audited() == [events[i] for i in (3, 1, 0, 5, 2, 4, 6)]
    assert audit_runs() == dict.fromkeys(events, RunStatus.DONE)
    lines = out.splitlines()
    assert lines[0] == f"Replaying {AUDIT} over payment.received: 7 event(s)."
    assert lines[1:4] == [  # batches of 3 in each stretch: the numbered, then the rest
        "[########            ] 3/7 events, 3 ran, 0 already done",
        "[###########         ] 4/7 events, 4 ran, 0 already done",
        "[####################] 7/7 events, 7 ran, 0 already done, 2 runs created",
    ]
    assert lines[4] == "Done: 7 events, 7 ran, 0 already done, 2 runs created."
    assert not HandlerReplay.objects.exists()  # finished: nothing to continue
    # The other handlers' runs are untouched.
    assert set(HandlerRun.objects.exclude(handler=AUDIT).values_list("status", flat=True)) == {
        RunStatus.PENDING
    }


def test_a_second_replay_runs_nothing_again():
    events = payments(4)
    replay(AUDIT)

    out = replay(AUDIT, "--batch-size", "2")

    assert "Done: 4 events, 0 ran, 4 already done." in out
    assert sorted(audited()) == sorted(events)


def test_force_runs_done_and_dead_runs_again():
    events = payments(3)
    replay(AUDIT)
    HandlerRun.objects.filter(handler=AUDIT, event_id=events[1]).update(
        status=RunStatus.DEAD, attempts=5
    )

    out = replay(AUDIT, "--force")

    assert "Done: 3 events, 3 ran, 0 already done." in out
    assert audited() == events + events
    assert audit_runs() == dict.fromkeys(events, RunStatus.DONE)
    # Fresh attempts, as the admin's retry gives: a run forced again and again that
    # fails is retried, not dead at once for attempts spent on earlier versions.
    attempts = HandlerRun.objects.filter(handler=AUDIT).values_list("attempts", flat=True)
    assert set(attempts) == {1}


def test_without_force_dead_runs_are_left_alone_and_counted():
    events = payments(3)
    HandlerRun.objects.filter(handler=AUDIT, event_id=events[0]).update(status=RunStatus.DEAD)

    out = replay(AUDIT)

    assert "Done: 3 events, 2 ran, 0 already done, 1 dead left alone." in out
    assert audited() == events[1:]


def test_a_run_that_raises_is_recorded_and_the_replay_goes_on():
    payments(2, fail_times=1)

    out = replay(NOTIFY)

    assert "Done: 2 events, 0 ran, 0 already done, 2 raised." in out
    assert "2 run(s) raised: the workers retry them" in out
    runs = HandlerRun.objects.filter(handler=NOTIFY)
    assert {(run.status, run.attempts) for run in runs} == {(RunStatus.PENDING, 1)}
    assert "notify failed on attempt 1" in runs[0].last_error
    # A new replay (a new start time) tries them again: their second attempt passes.
    assert "Done: 2 events, 2 ran" in replay(NOTIFY)


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, call: int, after_the_run: bool) -> None:
    """Stop the replay with Ctrl-C at its ``call``-th run, before or after it commits."""
    execute = durable.execute
    calls = 0

    def interrupted(run_id: str, *args: Any, **kwargs: Any) -> str:
        nonlocal calls
        calls += 1
        if calls == call:
            if after_the_run:
                execute(run_id, *args, **kwargs)
            raise KeyboardInterrupt
        return execute(run_id, *args, **kwargs)

    monkeypatch.setattr(durable, "execute", interrupted)


@pytest.mark.parametrize("after_the_run", [False, True], ids=["before", "after"])
def test_an_interrupted_replay_continues_and_runs_each_event_once(monkeypatch, after_the_run):
    events = payments(7)
    _interrupt_at(monkeypatch, call=5, after_the_run=after_the_run)

    with pytest.raises(CommandError, match=r"Interrupted after 4 of 7 events\. Run the same"):
        replay(AUDIT, "--batch-size", "3")
    assert HandlerReplay.objects.count() == 1  # after the first batch
    monkeypatch.undo()
    dry = replay(AUDIT, "--dry-run")
    assert dry.startswith("Continues the replay started at")
    assert "\n4 event(s) of payment.received match" in dry
    out = replay(AUDIT, "--batch-size", "3")

    assert f"Continuing the replay of {AUDIT} started at" in out
    assert "4 event(s) left" in out  # the first batch is not read again
    assert sorted(audited()) == sorted(events)  # none missed, none twice
    assert audit_runs() == dict.fromkeys(events, RunStatus.DONE)
    assert not HandlerReplay.objects.exists()


@pytest.mark.parametrize("after_the_run", [False, True], ids=["before", "after"])
def test_an_interrupted_forced_replay_continues_without_running_anything_twice(
    monkeypatch, after_the_run
):
    events = payments(7)
    replay(AUDIT)  # each event audited once
    _interrupt_at(monkeypatch, call=5, after_the_run=after_the_run)

    with pytest.raises(CommandError, match="Interrupted after 4 of 7 events"):
        replay(AUDIT, "--force", "--batch-size", "3")
    monkeypatch.undo()
    out = replay(AUDIT, "--force", "--batch-size", "3")

    assert "4 event(s) left" in out
    # Events 4 (and 5, stopped after it ran) were run again in the batch that did not
    # finish: the continuation knows them by their finish time and leaves them.
    tried = 2 if after_the_run else 1
    assert f"Done: 4 events, {4 - tried} ran, 0 already done, {tried} tried since" in out
    assert sorted(audited()) == sorted(events + events)  # once before, once forced
    assert not HandlerReplay.objects.exists()


def test_restart_forgets_an_interrupted_replay(monkeypatch):
    events = payments(4)
    _interrupt_at(monkeypatch, call=3, after_the_run=True)
    with pytest.raises(CommandError):
        replay(AUDIT, "--force", "--batch-size", "2")
    monkeypatch.undo()

    out = replay(AUDIT, "--force", "--restart")

    assert "Replaying" in out and "Continuing" not in out
    assert "Done: 4 events, 4 ran" in out
    assert len(audited()) == 3 + 4
    assert set(audited()) == set(events)


def test_another_selection_is_another_replay(monkeypatch):
    payments(4)
    _interrupt_at(monkeypatch, call=3, after_the_run=False)
    with pytest.raises(CommandError):
        replay(AUDIT, "--batch-size", "2")
    monkeypatch.undo()

    out = replay(AUDIT, "--force")  # not the interrupted one: that was without --force

    assert "Continuing" not in out and "Done: 4 events, 4 ran" in out
    assert HandlerReplay.objects.count() == 1  # the other one, still there to continue


def test_dry_run_counts_and_changes_nothing():
    events = payments(6)
    HandlerRun.objects.filter(handler=AUDIT, event_id=events[0]).delete()
    HandlerRun.objects.filter(handler=AUDIT, event_id__in=events[1:3]).update(status=RunStatus.DONE)
    HandlerRun.objects.filter(handler=AUDIT, event_id=events[3]).update(status=RunStatus.DEAD)
    before = list(HandlerRun.objects.order_by("id").values())

    out = replay(AUDIT, "--dry-run")
    forced = replay(AUDIT, "--dry-run", "--force")

    assert out.splitlines() == [
        f"6 event(s) of payment.received match. Runs of {AUDIT}: 1 missing, "
        "2 pending or running, 2 done, 1 dead.",
        "Would run 3 (creating 1 run(s)); 2 done and 1 dead left alone. "
        "Dry run: nothing was changed.",
    ]
    assert "Would run 6 (creating 1 run(s)). Dry run" in forced
    assert list(HandlerRun.objects.order_by("id").values()) == before
    assert not Effect.objects.exists()
    assert not HandlerReplay.objects.exists()


def test_since_and_until_take_event_ids_in_log_order():
    events = payments(6)

    replay(AUDIT, "--since", str(events[1]), "--until", str(events[3]).upper())

    assert audited() == events[1:4]


def test_since_and_until_take_dates_and_date_times():
    days = [payments(2, start=T0 + timedelta(days=n)) for n in range(4)]  # 5, 6, 7, 8 March

    replay(AUDIT, "--since", "2024-03-06", "--until", "2024-03-07")  # both days included
    assert audited() == days[1] + days[2]

    Effect.objects.all().delete()
    replay(AUDIT, "--force", "--since", "2024-03-05T12:00:01", "--until", "2024-03-08T12:00:00")
    assert audited() == days[0][1:] + days[1] + days[2] + days[3][:1]  # to the microsecond


def test_events_published_after_the_replay_started_are_left_to_the_workers():
    (old,) = payments(1)
    (later,) = payments(1, start=timezone.now() + timedelta(hours=1))

    replay(AUDIT)

    assert audited() == [old]
    assert audit_runs()[later] == RunStatus.PENDING


def test_type_restricts_to_one_type_the_handler_handles():
    events = payments(2)

    assert "Done: 2 events, 2 ran" in replay(AUDIT, "--type", "payment.received")
    assert audited() == events


# -- bad input: each refused before anything runs ---------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["tests.testapp.handlers.nope"],
            "'tests.testapp.handlers.nope' is not a durable handler. The durable handlers "
            "are:\n  tests.testapp.handlers.record_payment (payment.received)\n",
        ),
        (
            ["tests.testapp.handlers.remember_order"],  # in-process, not durable
            "'tests.testapp.handlers.remember_order' is not a durable handler.",
        ),
        ([AUDIT, "--type", "payment.lost"], "Unknown event type 'payment.lost'"),
        (
            [AUDIT, "--type", "order.placed"],
            f"{AUDIT} does not handle 'order.placed'; it handles: payment.received.",
        ),
        ([AUDIT, "--since", "yesterday"], "--since 'yesterday' is neither an event id nor"),
        ([AUDIT, "--until", "2024-13-01"], "--until '2024-13-01' is not a valid date"),
        ([AUDIT, "--since", "2024-02-30T10:00"], "--since '2024-02-30T10:00' is not a valid"),
        (
            [AUDIT, "--since", "0192f4c6-7d1e-7a3b-9c2d-1e2f3a4b5c6d"],
            "--since '0192f4c6-7d1e-7a3b-9c2d-1e2f3a4b5c6d': there is no event with this id",
        ),
        (
            [AUDIT, "--since", "2024-03-06", "--until", "2024-03-05"],
            "--since '2024-03-06' comes after --until '2024-03-05': nothing to replay.",
        ),
        (
            [AUDIT, "--since", "2024-03-05T13:00", "--until", "2024-03-05T12:00"],
            "comes after --until",
        ),
        ([AUDIT, "--batch-size", "0"], "--batch-size must be at least 1, not 0."),
        ([AUDIT, "--batch-size", "-5"], "--batch-size must be at least 1, not -5."),
    ],
)
def test_bad_input_is_refused_with_what_is_wrong(args, message):
    payments(1)

    with pytest.raises(CommandError) as refused:
        replay(*args)

    assert message in str(refused.value)
    assert not Effect.objects.exists() and not HandlerReplay.objects.exists()


def test_since_after_until_by_event_ids_is_refused():
    first, second = payments(2)

    with pytest.raises(CommandError, match="comes after --until"):
        replay(AUDIT, "--since", str(second), "--until", str(first))
    with pytest.raises(CommandError, match="comes after --until"):
        replay(AUDIT, "--since", str(second), "--until", "2024-03-05T12:00:00")
    assert "Done: 1 events" in replay(AUDIT, "--since", str(first), "--until", str(first))


def test_an_unknown_id_is_one_not_in_the_log():
    with pytest.raises(CommandError, match="no event with this id in the log"):
        replay(AUDIT, "--until", str(uuid4()))
