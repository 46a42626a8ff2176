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

from tests.deploy.run import Size, run, summary

pytestmark = [
    pytest.mark.redis,
    pytest.mark.once,
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
]


def test_four_workers_two_relays_2000_sockets_miss_repeat_and_reorder_nothing(
    redis_url, tmp_path, capsys
):
    report = run(Size(run_dir=tmp_path / "run", redis_url=redis_url))
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
