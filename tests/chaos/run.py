"""One seeded chaos run, start to finish, and the lines it prints.

:func:`run_seed` creates a database, starts the cluster, lets the nemesis loose while
the publishers publish, stops the publishers, waits (bounded) for the relay and the
consumers to drain, counts, writes ``test-results/chaos-<seed>.json`` and stops
everything it started, whatever happened.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from tests.services import REPO_ROOT, log_tail

from .check import check, failures
from .cluster import Cluster, base_env
from .nemesis import Nemesis, plan

RESULTS = REPO_ROOT / "test-results"
DRAIN_SECONDS = {True: 30.0, False: 60.0}  # by quick
MIGRATE_TIMEOUT = 120.0


def conninfo(db_name: str) -> str:
    host = os.environ.get("EVENTBUS_PG_HOST", "127.0.0.1")
    port = os.environ.get("EVENTBUS_PG_PORT", "5432")
    user = os.environ.get("EVENTBUS_PG_USER", "postgres")
    return f"host={host} port={port} user={user} dbname={db_name}"


def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used, or None."""
    try:
        psycopg.connect(conninfo("postgres"), connect_timeout=5).close()
    except Exception as exc:
        return " ".join(str(exc).split()) or type(exc).__name__
    return None


def _admin(sql: str) -> None:
    with psycopg.connect(conninfo("postgres"), autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


@contextmanager
def database(name: str, template: str | None = None) -> Iterator[str]:
    """A fresh database, migrated (or copied from ``template``), dropped at the end."""
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    try:
        if template:
            _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        else:
            _admin(f'CREATE DATABASE "{name}"')
            subprocess.run(
                [sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"],
                env=base_env(name, "redis://127.0.0.1:1/0"),
                cwd=REPO_ROOT,
                check=True,
                timeout=MIGRATE_TIMEOUT,
            )
        yield name
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def drain(count: Callable[[], dict[str, Any]], seconds: float) -> tuple[dict[str, Any], float]:
    """Count every second until nothing is pending or missing, for at most ``seconds``; the
    last count, and the seconds waited."""
    started = time.monotonic()
    while True:
        result = count()
        missing = result["log"]["pending"] + sum(
            consumer["lost"] for consumer in result["consumers"].values()
        )
        waited = time.monotonic() - started
        if not missing or waited >= seconds:
            return result, waited
        time.sleep(1.0)


def run_seed(seed: int, quick: bool, template: str | None = None) -> dict[str, Any]:
    """Run one seed; the result (also written to test-results/chaos-<seed>[-quick].json)."""
    started = time.monotonic()
    name = f"chaos-{seed}{'-quick' if quick else ''}"
    run_dir = RESULTS / name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    schedule = plan(seed, quick)
    report: dict[str, Any] = {"seed": seed, "mode": "quick" if quick else "full"}
    cluster = None
    try:
        with database(f"eventbus_chaos_{os.getpid()}_{seed}", template) as db:
            cluster = Cluster(run_dir, db, seed)
            cluster.start()
            nemesis = Nemesis(cluster)
            try:
                nemesis.run(schedule)
            finally:
                report["nemesis"] = nemesis.report(schedule)
            cluster.stop_publishers()
            result, drained = drain(lambda: check(conninfo(db), cluster.dir), DRAIN_SECONDS[quick])
            report.update(result)
            report["drain_seconds"] = round(drained, 1)
            report["crashed"] = cluster.crashed()
            cluster.close()
    except Exception as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if cluster is not None:
            cluster.close()
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    problems = [] if "log" not in report else failures(report)
    problems += [f"crashed:{name}" for name in report.get("crashed", [])]
    if "error" in report:
        problems.append(f"error: {report['error']}")
    report["failures"] = problems
    report["ok"] = not problems
    report["logs"] = str(run_dir)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def summary(report: dict[str, Any]) -> str:
    """One line: the verdict and the counts that matter."""
    head = (
        f"chaos seed {report['seed']} ({report['mode']}): "
        f"{'PASS' if report['ok'] else 'FAIL'} in {report['wall_seconds']:.0f} s"
    )
    if "log" not in report:
        return f"{head} | {'; '.join(report['failures'])}"
    log = report["log"]
    parts = [
        head,
        f"committed {log['committed']}, rolled back {log['rolled_back']}, "
        f"unknown {log['unknown']} ({log['unknown_in_log']} in log)",
        f"log: lost {log['lost']}, unexpected {log['unexpected']}, "
        f"pending {log['pending']}, failed {log['failed']}",
    ]
    for name, c in report["consumers"].items():
        parts.append(
            f"{name}: lost {c['lost']}, resets {c['resets']} (covering {c['lost_covered_by_reset']}), "
            f"dup {c['duplicates_raw']}/{c['duplicates_after_dedupe']}, order {c['order_violations']}"
        )
    return " | ".join(parts)


TABLE_COLUMNS = (
    ("expected", "expected"), ("received", "received"), ("lost", "lost"),
    ("covered", "lost_covered_by_reset"), ("resets", "resets"), ("dup raw", "duplicates_raw"),
    ("dup dedupe", "duplicates_after_dedupe"), ("order", "order_violations"),
    ("wrong pos", "wrong_position"), ("phantom", "phantom"),
)  # fmt: skip


def table(report: dict[str, Any]) -> str:
    """The consumers' counts, one row each, and the nemesis's log in one line."""
    if "consumers" not in report:
        return ""
    widths = [max(len(label), 6) for label, _ in TABLE_COLUMNS]
    lines = [
        "  consumer   "
        + "  ".join(f"{label:>{w}}" for (label, _), w in zip(TABLE_COLUMNS, widths, strict=True))
    ]
    for name, counts in report["consumers"].items():
        cells = "  ".join(
            f"{counts[key]:>{w}}" for (_, key), w in zip(TABLE_COLUMNS, widths, strict=True)
        )
        lines.append(f"  {name:<9}  {cells}")
    faults = ", ".join(f"{entry['what']} @{entry['at']}s" for entry in report["nemesis"]["log"])
    lines.append(f"  nemesis: {faults}")
    if not report["ok"]:
        lines.append(f"  failures: {'; '.join(report['failures'])}; logs in {report['logs']}")
    return "\n".join(lines)


def print_report(report: dict[str, Any]) -> None:
    print(summary(report), flush=True)
    text = table(report)
    if text:
        print(text, flush=True)
    if "error" in report:
        for log in sorted(Path(report["logs"]).glob("*.log")):
            print(log_tail(log, 15))
