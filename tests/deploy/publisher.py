"""A publisher: ``python -m tests.deploy.publisher RECORDS INDEX COUNT SECONDS PROJECTS GO``.

Once set up it writes ``{"ready": true}`` to RECORDS and waits (at most ``GO_TIMEOUT``
seconds) for the file GO to exist, so that the publishers start together. With the
suite's settings (``tests.settings``, pointed at the run's database and Redis),
it publishes COUNT ``order.placed`` events, paced evenly over about SECONDS, numbered
1..COUNT in ``order_id`` and spread over the projects (a JSON list of UUIDs) round
robin from an offset of its own, so that every channel gets events of every publisher.
Each event is its own transaction. RECORDS gets one JSON line per event once it is
committed: its id, ``"outcome": "commit"`` (the chaos checker's format), the publisher,
its number and its project; or ``"error"`` when the publish raised. Its last line is the
CPU time it used and the seconds its events took.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

GO_TIMEOUT = 600.0


def main() -> None:
    records_path, index, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    seconds = float(sys.argv[4])
    projects = json.loads(Path(sys.argv[5]).read_text())
    go = Path(sys.argv[6])

    import django

    django.setup()
    from eventbus import publish
    from tests.testapp.events import ShopEvent

    interval = seconds / max(count, 1)
    with open(records_path, "a", buffering=1) as records:
        records.write(json.dumps({"ready": True}) + "\n")
        deadline = time.monotonic() + GO_TIMEOUT
        while not go.exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"no {go} within {GO_TIMEOUT:.0f} s")
            time.sleep(0.02)
        started = time.monotonic()
        for n in range(1, count + 1):
            project = projects[(index * 7 + n) % len(projects)]
            record = {"publisher": index, "n": n, "project": project}
            try:
                event = publish(
                    ShopEvent.ORDER_PLACED,
                    {"order_id": n, "title": f"publisher {index}"},
                    project_id=project,
                )
            except Exception as exc:  # counted by the checker as an unknown outcome
                records.write(json.dumps({**record, "outcome": "error", "error": repr(exc)}) + "\n")
            else:
                records.write(
                    json.dumps({**record, "id": str(event.id), "outcome": "commit"}) + "\n"
                )
            time.sleep(max(0.0, started + n * interval - time.monotonic()))
        elapsed = round(time.monotonic() - started, 2)
        records.write(
            json.dumps({"cpu_seconds": round(time.process_time(), 2), "seconds": elapsed}) + "\n"
        )


if __name__ == "__main__":
    main()
