"""Shared by every benchmark: interleaved timing, result rows, and the command line.

Each benchmark is a module with ``run(quick: bool) -> list[dict]``; run alone it prints
its rows as JSON on its last line (``BENCH_JSON {...}``), which ``python -m bench``
collects. Every loop is bounded by a count and by ``max_seconds``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

JSON_PREFIX = "BENCH_JSON "


def per_call_seconds(func: Callable[[], Any], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        func()
    return (time.perf_counter() - start) / calls


def interleaved(
    cases: dict[str, Callable[[int], float]], rounds: int, max_seconds: float
) -> dict[str, float]:
    """Median seconds per call of each case, the cases taking turns round by round.

    Each case is ``measure(calls) -> seconds per call``; taking turns spreads the
    machine's noise over all of them alike.
    """
    samples: dict[str, list[float]] = {name: [] for name in cases}
    deadline = time.monotonic() + max_seconds
    for _ in range(rounds):
        for name, measure in cases.items():
            samples[name].append(measure(0))
        if time.monotonic() > deadline:
            break
    return {name: statistics.median(values) for name, values in samples.items()}


def row(
    bench: str,
    what: str,
    *,
    eventbus: float,
    anchor: float,
    anchor_name: str,
    unit: str,
    target: str | None = None,
    met: bool | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One line of the results table: eventbus next to its anchor, from the same run."""
    return {
        "bench": bench,
        "what": what,
        "eventbus": round(eventbus, 3),
        "anchor": round(anchor, 3),
        "anchor_name": anchor_name,
        "unit": unit,
        "ratio": round(eventbus / anchor, 3) if anchor else None,
        "target": target,
        "met": met,
        **extra,
    }


def main(run: Callable[..., list[dict[str, Any]]], **arguments: Any) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a few iterations: a smoke test")
    for name, default in arguments.items():
        parser.add_argument(f"--{name.replace('_', '-')}", default=default)
    options = vars(parser.parse_args())
    rows = run(**options)
    for result in rows:
        print(json.dumps(result), file=sys.stderr)
    print(JSON_PREFIX + json.dumps(rows))
