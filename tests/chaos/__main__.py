"""``python -m tests.chaos [--seeds N | --seed S] [--quick]``: seeded chaos runs, counted.

Needs PostgreSQL (127.0.0.1:5432 unless EVENTBUS_PG_HOST/PORT/USER say otherwise) and a
redis-server on PATH. Exits 1 when any count that should be zero is not.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import ExitStack

from tests.services import redis_server_binary

from .run import database, postgres_problem, print_report, run_seed


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--seeds", type=int, default=1, help="run seeds 1..N (default 1)")
    parser.add_argument("--seed", type=int, action="append", help="run this seed (repeatable)")
    parser.add_argument("--quick", action="store_true", help="short outages, about a minute")
    args = parser.parse_args()
    problem = postgres_problem()
    if problem:
        print(f"chaos: PostgreSQL is unreachable: {problem}", file=sys.stderr)
        return 2
    if redis_server_binary() is None:
        print("chaos: redis-server is not installed", file=sys.stderr)
        return 2
    seeds = args.seed or list(range(1, args.seeds + 1))
    started = time.monotonic()
    reports = []
    with ExitStack() as stack:
        template = None
        if len(seeds) > 1:  # migrate once, copy per seed
            template = stack.enter_context(database(f"eventbus_chaos_{os.getpid()}_template"))
        for seed in seeds:
            report = run_seed(seed, args.quick, template)
            print_report(report)
            reports.append(report)
    passed = sum(report["ok"] for report in reports)
    print(
        f"chaos: {passed}/{len(reports)} seeds passed in {time.monotonic() - started:.0f} s; "
        f"results in test-results/chaos-*.json"
    )
    return 0 if passed == len(reports) else 1


if __name__ == "__main__":
    sys.exit(main())
