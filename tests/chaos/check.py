"""The checker: counts, from the publishers' and consumers' records and the event log.

Per run:
- committed, rolled back, unknown outcome (a publisher killed between ``begin`` and its
  outcome, or a commit that raised), and how many of the unknown ones are in the log;
- lost from the log (committed, no row), unexpected in the log (rolled back, a row),
  rows no publisher wrote down; rows still pending or failed at the end; rows that
  have no position, and holes in a channel's positions.
Per consumer (the WebSocket one and the ``subscribe()`` one), over every channel:
- lost with no reset, and lost but covered by a reset (positions up to a reset's, not
  seen before it);
- duplicates: raw (an event seen again on a channel), and after the documented dedupe
  (drop an event at or below the last position seen on its channel; a reset moves that
  position) an event seen again anyway;
- order violations (a new event below a position seen already on its channel), events
  whose frame position is not the log's, and events not in the log at all.
A ``subscribe()`` event carries no position: its position is looked up in the log.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

ZERO_TARGETS = {
    "log": ("lost", "unexpected", "unexplained", "pending", "failed", "unpositioned", "holes"),
    "consumer": (
        "lost",
        "duplicates_after_dedupe",
        "order_violations",
        "wrong_position",
        "phantom",
    ),
}


@dataclass
class Log:
    """What the event log holds at the end of a run."""

    status: dict[str, str] = field(default_factory=dict)  # event id -> status
    positions: dict[tuple[str, str], int] = field(default_factory=dict)  # (channel, id) -> pos
    by_channel: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))


def read_log(conninfo: str) -> Log:
    log = Log()
    with psycopg.connect(conninfo, connect_timeout=5) as conn:
        for event_id, status in conn.execute("SELECT id, status FROM eventbus_eventrecord"):
            log.status[str(event_id)] = status
        for channel, position, event_id in conn.execute(
            "SELECT channel, position, event_id FROM eventbus_streamentry"
        ):
            log.positions[(channel, str(event_id))] = position
            log.by_channel[channel].add(position)
    return log


def records(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON lines of ``path``; a last line cut short by a kill is skipped."""
    if not path.exists():
        return
    with path.open() as file:
        for line in file:
            try:
                yield json.loads(line)
            except ValueError:
                continue


def outcomes(paths: Iterable[Path]) -> dict[str, str]:
    """Each published event id's outcome: commit, rollback, or unknown."""
    found: dict[str, str] = {}
    for path in paths:
        for record in records(path):
            if "id" not in record:
                continue
            outcome = record["outcome"]
            found[record["id"]] = {"begin": "unknown", "error": "unknown"}.get(outcome, outcome)
    return found


def check_log(log: Log, published: dict[str, str]) -> dict[str, int]:
    counts = Counter(published.values())
    in_log = set(log.status)
    unknown = {i for i, outcome in published.items() if outcome == "unknown"}
    positioned = {event_id for _, event_id in log.positions}
    statuses = Counter(log.status.values())
    return {
        "committed": counts["commit"],
        "rolled_back": counts["rollback"],
        "unknown": len(unknown),
        "unknown_in_log": len(unknown & in_log),
        "rows": len(in_log),
        "lost": sum(1 for i, o in published.items() if o == "commit" and i not in in_log),
        "unexpected": sum(1 for i, o in published.items() if o == "rollback" and i in in_log),
        "unexplained": len(in_log - set(published)),
        "pending": statuses["pending"],
        "failed": statuses["failed"],
        "unpositioned": len(in_log - positioned),
        "holes": sum(max(p, default=0) - len(p) for p in log.by_channel.values()),
    }


def check_consumer(log: Log, path: Path, positioned_frames: bool) -> dict[str, Any]:
    """The counts of one consumer's records against the log (see the module docstring)."""
    return count_consumer(log, records(path), positioned_frames)


def count_consumer(
    log: Log,
    found: Iterable[dict[str, Any]],
    positioned_frames: bool,
    subscribed: Iterable[str] | None = None,
) -> dict[str, Any]:
    """The counts of one consumer's records (``check_consumer``'s) against the log.

    ``subscribed``: the channels the consumer followed, when not every channel of the log.
    """
    channels: dict[str, dict[str, Any]] = {}

    def state(channel: str) -> dict[str, Any]:
        return channels.setdefault(
            channel,
            {"seen": set(), "accepted_ids": set(), "accepted": set(), "covered": set(),
             "top": 0, "last": 0, "counts": Counter()},
        )  # fmt: skip

    totals: Counter[str] = Counter()
    for record in found:
        kind = record.get("kind")
        if kind in ("connected", "disconnected"):
            totals["reconnects" if kind == "connected" else "disconnects"] += 1
        if kind not in ("event", "reset"):
            continue
        channel = record["channel"]
        st = state(channel)
        counts = st["counts"]
        if kind == "reset":
            counts["resets"] += 1
            position = int(record["position"])
            st["covered"].update(range(st["last"] + 1, position + 1))
            st["last"] = position
            st["top"] = max(st["top"], position)
            continue
        counts["received"] += 1
        event_id = record["id"]
        position = log.positions.get((channel, event_id))
        if position is None:
            counts["phantom"] += 1
            continue
        if positioned_frames and record.get("position") != position:
            counts["wrong_position"] += 1
        if event_id in st["seen"]:
            counts["duplicates_raw"] += 1
        elif position < st["top"]:
            counts["order_violations"] += 1
        st["seen"].add(event_id)
        st["top"] = max(st["top"], position)
        if position <= st["last"]:
            continue  # the documented dedupe drops it
        if event_id in st["accepted_ids"]:
            counts["duplicates_after_dedupe"] += 1
        st["accepted_ids"].add(event_id)
        st["accepted"].add(position)
        st["last"] = position

    per_channel = {}
    followed = log.by_channel if subscribed is None else set(subscribed)
    for channel in sorted(followed):
        expected = log.by_channel.get(channel, set())
        st = state(channel)
        missing = expected - st["accepted"]
        counts = st["counts"]
        counts["expected"] = len(expected)
        counts["lost"] = len(missing - st["covered"])
        counts["lost_covered_by_reset"] = len(missing & st["covered"])
        per_channel[channel] = dict(counts)
        totals.update(counts)
    names = (
        "expected", "received", "lost", "lost_covered_by_reset", "resets", "duplicates_raw",
        "duplicates_after_dedupe", "order_violations", "wrong_position", "phantom",
        "reconnects", "disconnects",
    )  # fmt: skip
    return {**{name: totals[name] for name in names}, "per_channel": per_channel}


def check(conninfo: str, run_dir: Path) -> dict[str, Any]:
    log = read_log(conninfo)
    published = outcomes(sorted(run_dir.glob("publisher-*.jsonl")))
    return {
        "log": check_log(log, published),
        "consumers": {
            "websocket": check_consumer(log, run_dir / "websocket.jsonl", True),
            "subscribe": check_consumer(log, run_dir / "subscribe.jsonl", False),
        },
    }


def failures(result: dict[str, Any]) -> list[str]:
    """Every count that should be zero and is not, as ``where.count=value``."""
    found = [
        f"log.{name}={result['log'][name]}" for name in ZERO_TARGETS["log"] if result["log"][name]
    ]
    for consumer, counts in result["consumers"].items():
        found += [
            f"{consumer}.{name}={counts[name]}" for name in ZERO_TARGETS["consumer"] if counts[name]
        ]
    return found
