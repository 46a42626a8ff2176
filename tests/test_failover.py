"""Redis Sentinel failover and a dead shard, with real processes (tests/chaos/failover.py).

Each run starts its own Redis side on loopback (a master, a replica and three sentinels;
or three shards), uvicorn with two WebSocket clients, a ``subscribe()`` consumer, a
publisher and a relay worker on a PostgreSQL database of its own, strikes mid-stream,
and counts what every reader got against the log. About 20 s a run, three runs.
"""

import pytest

from tests.fixtures_services import skip_or_fail
from tests.services import redis_server_binary

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.once]


@pytest.fixture(scope="module")
def template():
    from tests.chaos.failover import template_database
    from tests.chaos.run import postgres_problem

    if redis_server_binary() is None:
        skip_or_fail("redis-server not installed")
    if problem := postgres_problem():
        skip_or_fail(f"PostgreSQL is unreachable: {problem}")
    with template_database() as name:
        yield name


def run_and_print(mode: str, backend: str, template: str, capsys) -> dict:
    from tests.chaos.failover import run, summary

    report = run(mode, backend, template)
    with capsys.disabled():
        print()
        print(summary(report))
    assert report["ok"], report["failures"]
    assert report["log"]["committed"] > 30
    return report


@pytest.mark.parametrize("backend", ["core", "pubsub"])
def test_a_sentinel_failover_mid_stream_loses_repeats_and_reorders_nothing(
    backend, template, capsys
):
    """SIGKILL the master: the replica is promoted, every process finds it through the
    sentinels, and each reader has every event once, in order (gaps filled from the log)."""
    report = run_and_print("sentinel", backend, template, capsys)
    ports = report["fault"]["ports"]
    assert ports["new_master"] != ports["old_master"]
    for name, counts in report["consumers"].items():
        assert counts["lost"] == counts["resets"] == 0, name
        assert counts["after_fault"] > 0, f"{name} got nothing from the new master"


def test_a_dead_shard_holds_back_its_channels_only_and_they_catch_up(template, capsys):
    """Three shards, one SIGKILLed for 3 s and back empty: the channels on the others keep
    flowing meanwhile; the dead shard's channels are filled from the log once it is back.

    RedisChannelLayer only (its readers' own channels live on a shard too, the subtler
    case); ``python -m tests.chaos.failover shards pubsub`` runs the pub/sub layer, and
    tests/test_layers.py has both layers' batches against a dead shard."""
    report = run_and_print("shards", "core", template, capsys)
    for name, counts in report["consumers"].items():
        assert counts["lost"] == counts["resets"] == 0, name
        assert counts["during_fault"] > 0, f"{name}: the live shards' channels stalled"
        # Their events of the outage's first second came before the shard was back (the
        # relay's batches mix channels of every shard: each shard's share goes on its own).
        assert counts["held_back"] == 0, name
        assert counts["after_fault"] > 0, name
