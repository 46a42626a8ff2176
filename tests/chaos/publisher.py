"""A publisher process: transactions of 1 to 3 events, about 10% of them rolled back.

``python -m tests.chaos.publisher RECORDS SEED [--no-hand-off]``, with the Django settings
of ``tests.chaos.settings``. Each event's id is written to RECORDS (JSON lines,
line-buffered, so a SIGKILL loses nothing written) as ``begin`` once published inside
the transaction, ``holding`` while the transaction waits a moment with all of them in,
``committing`` as it ends, then ``commit`` or ``rollback`` once it is over. An id
with no outcome is an unknown one: the process died in between. SIGTERM ends the loop
after the current transaction.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import time
from typing import Any

PROJECTS = (1, 2, 3)
AGENT = 1
ROLLBACK_SHARE = 0.1
# Each transaction holds its events a moment before it ends, so a kill can land inside.
HOLD_SECONDS = (0.01, 0.05)
PAUSE_SECONDS = (0.03, 0.12)
MAX_SECONDS = 600.0


class RolledBack(Exception):
    pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("records")
    parser.add_argument("seed", type=int)
    args = parser.parse_args()

    import django

    django.setup()
    from django.db import connection, transaction

    from eventbus import ActorType, publish
    from tests.testapp.events import ShopEvent

    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    rng = random.Random(args.seed)
    # The failover run spreads events over more channels (so over every shard).
    projects = tuple(range(1, int(os.environ.get("EVENTBUS_CHAOS_PROJECTS", len(PROJECTS))) + 1))
    deadline = time.monotonic() + MAX_SECONDS
    with open(args.records, "a", buffering=1) as records:

        def note(outcome: str, ids: list[str], **extra: Any) -> None:
            for event_id in ids:
                record = {"id": event_id, "outcome": outcome, "t": round(time.time(), 3), **extra}
                records.write(json.dumps(record) + "\n")

        records.write(json.dumps({"ready": True}) + "\n")
        # The failover run starts its publishers with everything else and lets them go
        # once every reader is ready (EVENTBUS_CHAOS_GO names the file it then creates).
        go = os.environ.get("EVENTBUS_CHAOS_GO")
        while go and not os.path.exists(go) and not stopping and time.monotonic() < deadline:
            time.sleep(0.05)
        while not stopping and time.monotonic() < deadline:
            ids: list[str] = []
            rollback = rng.random() < ROLLBACK_SHARE
            try:
                with transaction.atomic():
                    for _ in range(rng.randint(1, 3)):
                        agent = rng.random() < 0.3
                        event = publish(
                            ShopEvent.ORDER_PLACED,
                            {"order_id": rng.randrange(10**6), "title": "chaos"},
                            project_id=rng.choice(projects),
                            actor_type=ActorType.AGENT if agent else ActorType.SYSTEM,
                            actor_id=AGENT if agent else None,
                        )
                        ids.append(str(event.id))
                        note("begin", [ids[-1]])
                    # The nemesis kills on this line: the rows are in, the commit is not.
                    records.write(json.dumps({"holding": len(ids)}) + "\n")
                    time.sleep(rng.uniform(*HOLD_SECONDS))
                    if rollback:
                        raise RolledBack
                    records.write(json.dumps({"committing": len(ids)}) + "\n")
            except RolledBack:
                note("rollback", ids)
            except Exception as exc:  # the commit itself failed: the outcome is unknown
                note("error", ids, error=f"{type(exc).__name__}: {exc}"[:300])
                connection.close()
            else:
                note("commit", ids)
            time.sleep(rng.uniform(*PAUSE_SECONDS))


if __name__ == "__main__":
    main()
