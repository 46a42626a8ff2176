"""The multi-process deployment of README's *Deployment*, run at a quick size.

``uvicorn --workers 4`` on one port, two relay workers, three publisher processes and
2,000 WebSockets in two client processes, signed in as 200 project members and
subscribed to 50 project channels (one socket in five follows two), on the suite's
redis-server (``RedisChannelLayer``) and the PostgreSQL test database; one relay worker
is SIGKILLed mid-stream while it holds claimed rows. Every socket's frames are counted
against the event log (``tests/deploy/run.py``). About a minute on 2 idle cores, so it
runs once: ``python -m tests.deploy`` runs the other layer, SQLite, or any size.
"""

import pytest

from tests.chaos.check import Log
from tests.deploy.run import ZERO, Size, count_sockets, failures, run, summary

A, B = "eventbus.project.a", "eventbus.project.b"


def make_log() -> Log:
    """Channel A holds events a1..a4 at positions 1..4, channel B b1, b2."""
    log = Log()
    for channel, count in ((A, 4), (B, 2)):
        for position in range(1, count + 1):
            event_id = f"{channel[-1]}{position}"
            log.status[event_id] = "delivered"
            log.positions[(channel, event_id)] = position
            log.by_channel[channel].add(position)
    return log


def socket(channels: list[str], *events: tuple[str, int], open: bool = True) -> dict:
    frames = [["subscribed", c, 0, None] for c in channels]
    frames += [["event", c, p, f"{c[-1]}{p}"] for c, p in events]
    return {"worker": "1", "channels": channels, "open": open, "frames": frames}


def test_socket_counts_of_a_clean_run_are_zero_but_what_was_expected():
    sockets = [socket([A], *((A, p) for p in range(1, 5))), socket([A, B], (B, 1), (A, 1),
               (A, 2), (B, 2), (A, 3), (A, 4))]  # fmt: skip
    committed = {A: {"a1", "a2", "a3", "a4"}, B: {"b1", "b2"}}
    counts = count_sockets(make_log(), sockets, committed)
    assert (counts["expected"], counts["received"], counts["subscriptions"]) == (10, 10, 3)
    assert not [name for name in ZERO if counts.get(name)]


def test_socket_counts_catch_loss_repeats_disorder_and_other_channels():
    sockets = [
        socket([A], (A, 1), (A, 2), (A, 2), (A, 4), (A, 3)),  # 2 twice; 3 after 4, so dropped
        socket([B], (B, 1), (A, 1), open=False),  # A is not its channel; b2 never came
    ]
    # b3 was committed (the publishers' records say so) but never positioned nor sent.
    committed = {A: {"a1", "a2", "a3", "a4"}, B: {"b1", "b2", "b3"}}
    counts = count_sockets(make_log(), sockets, committed)
    assert counts["duplicates_raw"] == 1 and counts["duplicates_after_dedupe"] == 0
    assert counts["order_violations"] == 1
    assert counts["lost"] == 2  # a3 (dropped by the dedupe) and b2
    assert counts["missed"] == 2  # b2 and b3: a3 came, out of order
    assert counts["foreign"] == 1 and counts["closed"] == 1


def test_a_run_fails_on_any_count_that_is_not_zero():
    log_counts = dict.fromkeys(("lost", "unexplained", "pending", "failed", "unpositioned",
                                "holes"), 0)  # fmt: skip
    report = {"crashed": [], "log": log_counts, "sockets": {"lost": 0, "foreign": 0}}
    assert failures(report) == []
    report["sockets"]["lost"] = 3
    report["log"]["pending"] = 1
    report["crashed"] = ["relay-1"]
    assert failures(report) == ["crashed:relay-1", "lost=3", "log.pending=1"]
    assert failures({"error": "ServiceError: uvicorn"}) == ["error: ServiceError: uvicorn"]


@pytest.mark.redis
@pytest.mark.once
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_four_workers_two_relays_2000_sockets_miss_repeat_and_reorder_nothing(
    redis_url, tmp_path, capsys
):
    report = run(Size(run_dir=tmp_path / "run", redis_url=redis_url, db_pool=True))
    with capsys.disabled():
        print("\n" + summary(report))
    assert report["ok"], report["failures"]
    sockets = report["sockets"]
    assert sockets["subscriptions"] == 2400 and report["channels"] == 50
    assert report["log"]["committed"] == 600
    # 600 events over 50 channels: 12 a channel, to every one of its subscriptions.
    assert sockets["received"] == sockets["expected"] == 2400 * 12
    # The port's sockets spread over all four workers.
    assert len(report["sockets_per_worker"]) == 4
    assert report["relay_killed"]["holding_claimed_rows"] > 0
