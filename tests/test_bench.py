"""Smoke test of the benchmark suite: each benchmark runs a few iterations and reports rows.

The real runs are `bash scripts/bench.sh`; timings are never asserted here.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"bench", "what", "eventbus", "anchor", "anchor_name", "unit", "ratio", "target", "met"}


def run_bench(module: str, *arguments: str, unsigned: frozenset[str] = frozenset()) -> list[dict]:
    """The rows of ``module --quick``; ``unsigned``: benches whose value may be 0 or below
    (a difference of RSS over a few sockets)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.pop("EVENTBUS_TEST_DB", None)
    done = subprocess.run(
        [sys.executable, "-m", module, "--quick", *arguments],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("BENCH_JSON ")
    rows = json.loads(last.removeprefix("BENCH_JSON "))
    assert rows, "a benchmark reported nothing"
    for result in rows:
        assert set(result) >= KEYS, KEYS - set(result)
        if result["bench"] in unsigned:
            continue
        assert result["eventbus"] > 0 and result["anchor"] > 0
        assert result["ratio"] == pytest.approx(result["eventbus"] / result["anchor"], rel=0.01)
        assert result["met"] in (True, False, None)
    return rows


@pytest.mark.parametrize(
    ("module", "arguments"),
    [
        ("bench.dispatch", ()),
        ("bench.async_dispatch", ()),
        ("bench.logged_publish", ("--db", "sqlite")),
    ],
)
def test_in_process_benchmarks_run(module, arguments):
    run_bench(module, *arguments)


def test_observability_benchmark_runs():
    rows = run_bench("bench.observability", "--db", "sqlite")
    assert [r["bench"] for r in rows] == ["observability_dispatch"] * 2 + [
        "observability_logged"
    ] * 2
    sampled_out, recorded = rows[0], rows[1]
    assert sampled_out["target"] == "≤ 1.15×" and sampled_out["anchor_name"].endswith("off")
    assert (
        recorded["met"] is None
        and recorded["limit"] > 0
        and "bare SDK spans" in recorded["limit_name"]
    )


@pytest.mark.redis
def test_presence_benchmark_runs():
    rows = run_bench("bench.presence")
    assert [r["bench"] for r in rows] == ["presence_join_leave", "presence_heartbeat"]
    assert all(r["target"] == "≤ 2×" for r in rows)


def test_replay_benchmark_runs():
    rows = run_bench("bench.replay")
    assert [r["rows"] for r in rows] == [10_000, 20_000]
    assert all(r["unit"] == "ms" and r["before_positions_ms"] > 0 for r in rows)


def check_durable_rows(rows: list[dict]) -> None:
    """Every row of bench.durable, and the counts it checked: no run lost or run twice."""
    from bench.durable import QUICK, SIDES

    by_kind: dict[str, list[dict]] = {}
    for result in rows:
        by_kind.setdefault(result["bench"], []).append(result)
    assert sorted(by_kind) == [
        "durable_latency", "durable_publish", "durable_statements", "durable_throughput"
    ]  # fmt: skip
    latency = {(r["load"], r["percentile"]): r for r in by_kind["durable_latency"]}
    assert sorted(latency) == [("loaded", 50), ("loaded", 99), ("paced", 50), ("paced", 99)]
    for (load, _), result in latency.items():
        events = QUICK.paced if load == "paced" else QUICK.loaded // 2 * 2
        assert result["events"] == dict.fromkeys(SIDES, events)
        assert result["unit"] == "ms" and result["max_ms"] >= result["eventbus"]
    throughput = {r["workers"]: r for r in by_kind["durable_throughput"]}
    assert sorted(throughput) == [1, 2]
    for result in throughput.values():
        assert result["unit"] == "runs/s" and result["met"] in (True, False)
        assert result["started"] == dict.fromkeys(SIDES, QUICK.backlog * QUICK.rounds)
    [statements] = by_kind["durable_statements"]
    assert statements["runs"] == dict.fromkeys(SIDES, QUICK.in_process)
    # The run's own commit (attempt counted, before the handler) is one the anchor has not.
    assert statements["commits_per_run"] > statements["anchor_commits_per_run"]


def test_durable_benchmark_runs():
    check_durable_rows(run_bench("bench.durable", "--db", "sqlite"))


@pytest.mark.postgres
def test_durable_benchmark_runs_on_postgres():
    check_durable_rows(run_bench("bench.durable", "--db", "postgres"))


@pytest.mark.redis
@pytest.mark.parametrize("layer", ["core", "pubsub"])
def test_relay_benchmark_runs(redis_server, layer):
    # redis_server only proves redis-server is installed; the benchmark starts its own.
    [result] = run_bench("bench.relay_redis", "--layer", layer)
    assert result["layer"] == layer and result["unit"] == "events/s"
    assert result["limit"] > 0  # the relay into a sink that does nothing
    # The floor's steps, each timed: in one round (--quick) together no more than the
    # floor's own time per event (each is rounded to 0.1 µs).
    steps = result["bare_sql_us_per_event"]
    assert set(steps) == {"mark delivered", "claim", "lock heads", "positions", "commit"}
    assert min(steps.values()) > 0
    assert sum(steps.values()) <= 1e6 / result["bare_sql"] + 0.5
    if layer == "pubsub":  # subscribers in another process got every message
        assert result["received_by_subscribers"] == result["sent_to_subscribers"]


def test_runner_writes_json_table(tmp_path):
    from bench.__main__ import table

    report = {
        "results": [
            {
                "bench": "x",
                "what": "a thing",
                "eventbus": 1.5,
                "anchor": 3.0,
                "anchor_name": "by hand",
                "unit": "µs",
                "ratio": 0.5,
                "target": "≤ 0.7×",
                "met": True,
            }
        ]
    }
    assert "| a thing | 1.5 µs | 3.0 µs | by hand | 0.5× | ≤ 0.7× | yes |" in table(report)
    report["results"][0].update(limit=0.5, limit_name="nothing at all")
    assert "- a thing: 0.5 µs, nothing at all" in table(report)


@pytest.mark.redis
def test_end_to_end_benchmark_runs(redis_server):
    rows = run_bench("bench.e2e")
    kinds = {result["bench"] for result in rows}
    assert {"e2e_latency", "e2e_fanout", "e2e_memory", "e2e_stalled_client"} <= kinds
    for result in rows:
        if result["bench"] == "e2e_latency":
            assert {"p50_ms", "p99_ms", "max_ms", "missed", "anchor_p50_ms"} <= set(result)
            assert result["limit"] > 0 and result["floor_missed"] == 0


@pytest.mark.redis
@pytest.mark.once
def test_many_sockets_benchmark_runs(redis_server):
    """bench.sockets' two scenarios, small: one server process, and two with two client
    processes; every socket of every side got every event."""
    rows = run_bench("bench.sockets", unsigned=frozenset({"sockets_memory"}))
    by_scenario: dict[str, set[str]] = {}
    for result in rows:
        by_scenario.setdefault(result["scenario"], set()).add(result["bench"])
        assert result["anchor_name"].startswith("one frame written to every socket")
        if result["bench"] in ("sockets_fanout", "sockets_latency"):
            assert result["missed"] == 0 and result["floor_missed"] == 0
        if result["bench"] == "sockets_latency":
            assert result["p99_ms"] >= result["p50_ms"] > 0
        if result["bench"] == "sockets_memory":
            assert result["sockets"] == result["floor_sockets"] > 0
    kinds = {"sockets_fanout", "sockets_latency", "sockets_memory"}
    assert by_scenario == {"1k-1p": kinds, "10k-2p": kinds}
    assert {r["processes"] for r in rows} == {1, 2}
