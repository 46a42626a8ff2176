"""The chaos suite (tests/chaos): its checker on made-up records, and its quick mode for real.

The quick run starts PostgreSQL-backed processes of its own (a database of its own,
redis-server, uvicorn, two relay workers, three publishers, two consumers), kills them
on a seeded schedule, and asserts that every count is zero but resets. About a minute.
"""

import json
from pathlib import Path

import pytest

from tests.chaos.check import Log, check_consumer, check_log, failures, outcomes
from tests.fixtures_services import skip_or_fail
from tests.services import redis_server_binary

CHANNEL = "eventbus.project.1"


def write(path: Path, *records: dict) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def make_log(count: int) -> Log:
    log = Log()
    for position in range(1, count + 1):
        log.status[f"e{position}"] = "delivered"
        log.positions[(CHANNEL, f"e{position}")] = position
        log.by_channel[CHANNEL].add(position)
    return log


def event(position: int, event_id: str | None = None) -> dict:
    return {
        "kind": "event",
        "channel": CHANNEL,
        "position": position,
        "id": event_id or f"e{position}",
    }


def test_checker_counts_a_clean_stream_as_clean(tmp_path):
    path = write(tmp_path / "ws.jsonl", *(event(p) for p in range(1, 6)))
    counts = check_consumer(make_log(5), path, positioned_frames=True)
    assert (counts["expected"], counts["received"], counts["lost"]) == (5, 5, 0)
    assert counts["duplicates_raw"] == counts["order_violations"] == 0


def test_checker_counts_loss_duplicates_and_order(tmp_path):
    # 2 repeated, 4 before 3 (3 then arrives late and is dropped by the dedupe), 6 never.
    records = [event(1), event(2), event(2), event(4), event(3), event(5)]
    counts = check_consumer(make_log(6), write(tmp_path / "ws.jsonl", *records), True)
    assert counts["duplicates_raw"] == 1
    assert counts["order_violations"] == 1
    assert counts["lost"] == 2  # 3 (dropped by the dedupe) and 6
    assert counts["duplicates_after_dedupe"] == 0


def test_checker_counts_what_a_reset_covers_apart(tmp_path):
    reset = {"kind": "reset", "channel": CHANNEL, "reason": "pruned", "epoch": "e", "position": 3}
    records = [event(1), reset, event(4), event(5)]
    counts = check_consumer(make_log(6), write(tmp_path / "ws.jsonl", *records), True)
    assert (counts["lost"], counts["lost_covered_by_reset"], counts["resets"]) == (1, 2, 1)


def test_checker_looks_positions_up_when_events_carry_none(tmp_path):
    records = [{"kind": "event", "channel": CHANNEL, "id": f"e{p}"} for p in (1, 3, 2)]
    records.append({"kind": "event", "channel": CHANNEL, "id": "rolled-back"})
    counts = check_consumer(make_log(3), write(tmp_path / "sub.jsonl", *records), False)
    assert (counts["order_violations"], counts["phantom"], counts["lost"]) == (1, 1, 1)


def test_checker_compares_publishers_records_with_the_log(tmp_path):
    published = outcomes(
        [
            write(
                tmp_path / "publisher-0-1.jsonl",
                {"ready": True},
                *({"id": f"e{p}", "outcome": "begin"} for p in range(1, 6)),
                *({"id": f"e{p}", "outcome": "commit"} for p in (1, 2)),
                {"id": "e3", "outcome": "rollback"},
                {"id": "e4", "outcome": "error", "error": "OperationalError"},
            )
        ]
    )
    log = make_log(3)  # e1, e2 committed and e3 rolled back, yet in the log
    del log.status["e2"]  # committed, but missing
    log.status["e9"] = "pending"  # in the log, but no publisher wrote it down
    counts = check_log(log, published)
    assert (counts["committed"], counts["rolled_back"], counts["unknown"]) == (2, 1, 2)
    assert (counts["lost"], counts["unexpected"], counts["unexplained"]) == (1, 1, 1)
    assert counts["pending"] == 1
    result = {"log": counts, "consumers": {}}
    assert "log.lost=1" in failures(result) and "log.pending=1" in failures(result)


@pytest.mark.postgres
@pytest.mark.redis
def test_quick_chaos_run_loses_repeats_and_reorders_nothing(capsys):
    """One seed, short outages: every count is zero but resets (which are printed)."""
    from tests.chaos.run import postgres_problem, print_report, run_seed

    if redis_server_binary() is None:
        skip_or_fail("redis-server not installed")
    problem = postgres_problem()
    if problem:
        skip_or_fail(f"PostgreSQL is unreachable: {problem}")
    report = run_seed(seed=1, quick=True)
    with capsys.disabled():
        print()
        print_report(report)
    assert report["ok"], report["failures"]
    assert report["log"]["committed"] > 100
    assert all(c["received"] > 100 for c in report["consumers"].values())
    faults = [entry["what"] for entry in report["nemesis"]["log"]]
    assert sum("killed" in what for what in faults) == 5, faults
    caught = {k: v for e in report["nemesis"]["log"] for k, v in e.items() if k != "at"}
    assert caught["holding_claimed_rows"] > 0 and caught["inside_transaction"], caught
