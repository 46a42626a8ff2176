"""Run every benchmark, each in its own process, and report: ``python -m bench``.

Writes ``docs/bench/results.json``, draws ``docs/bench/latency.png`` (latency against
subscribers) and, with ``--update-readme``, rewrites the results section of README.md
from that JSON: no number in the README is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench._harness import JSON_PREFIX

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "bench" / "results.json"
CHART = ROOT / "docs" / "bench" / "latency.png"
README = ROOT / "README.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

# (module, extra arguments): each runs in a fresh interpreter.
RUNS: list[tuple[str, list[str]]] = [
    ("bench.dispatch", []),
    ("bench.async_dispatch", []),
    ("bench.logged_publish", ["--db", "sqlite"]),
    ("bench.logged_publish", ["--db", "postgres"]),
    ("bench.observability", ["--db", "sqlite"]),
    ("bench.observability", ["--db", "postgres"]),
    ("bench.relay_redis", ["--layer", "core"]),
    ("bench.relay_redis", ["--layer", "pubsub"]),
    ("bench.presence", []),
    ("bench.relay_redis", ["--layer", "pubsub", "--db", "postgres"]),
    ("bench.replay", ["--db", "sqlite"]),
    ("bench.replay", ["--db", "postgres"]),
    ("bench.e2e", []),
    ("bench.sockets", []),
    ("bench.durable", ["--db", "sqlite"]),
    ("bench.durable", ["--db", "sqlite", "--journal", "wal"]),
    ("bench.durable", ["--db", "postgres"]),
]

# Seconds a run may take (full, quick) where 480 and 60 are not enough: 10,000 sockets open
# at about 30 a second on a busy 2-core machine (eventbus reads each one's session and user),
# and the quick run starts four servers and two client processes.
LONGER = {"bench.sockets": {False: 1800, True: 180}}


def run_one(module: str, arguments: list[str], quick: bool, timeout: float) -> list[dict[str, Any]]:
    command = [sys.executable, "-m", module, *arguments, *(["--quick"] if quick else [])]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    started = time.monotonic()
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(JSON_PREFIX)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}"
        )
    rows: list[dict[str, Any]] = json.loads(lines[-1][len(JSON_PREFIX) :])
    for result in rows:
        result["seconds"] = round(time.monotonic() - started, 1)
    return rows


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def format_number(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"
    return str(value)


def summary(result: dict[str, Any]) -> str:
    return (
        f"{result['what']}: {format_number(result['eventbus'])} vs "
        f"{format_number(result['anchor'])} {result['unit']} "
        f"(ratio {format_number(result['ratio'])}, target {result.get('target') or '—'})"
    )


def table(report: dict[str, Any]) -> str:
    lines = [
        "| benchmark | eventbus | anchor | anchor is | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in report["results"]:
        met = {True: "yes", False: "**no**", None: "—"}[result.get("met")]
        lines.append(
            f"| {result['what']} | {format_number(result['eventbus'])} {result['unit']} | "
            f"{format_number(result['anchor'])} {result['unit']} | {result['anchor_name']} | "
            f"{format_number(result['ratio'])}× | {result.get('target') or '—'} | {met} |"
        )
    extras = [r for r in report["results"] if r.get("notes")]
    for result in extras:
        lines.append(f"\n{result['what']}: {result['notes']}")
    limits = [r for r in report["results"] if r.get("limit") is not None]
    if limits:
        lines.append("\nLimits measured in the same run, what no code of ours can beat here:")
        lines += [
            f"- {r['what']}: {format_number(r['limit'])} {r['unit']}, {r['limit_name']}"
            for r in limits
        ]
    return "\n".join(lines)


def draw_chart(report: dict[str, Any]) -> bool:
    points = [r for r in report["results"] if r["bench"] == "e2e_latency"]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points.sort(key=lambda r: r["clients"])
    clients = [r["clients"] for r in points]
    figure, axes = plt.subplots(figsize=(7, 4))
    lines = [
        ("p50_ms", "o", "-", "eventbus p50"),
        ("p99_ms", "o", "-", "eventbus p99"),
        ("max_ms", "o", "-", "eventbus max"),
        ("anchor_p50_ms", "x", "--", "hand-written consumer p50"),
        ("limit", "s", ":", "floor p50 (bare asyncio server)"),
    ]
    for key, marker, style, label in lines:
        if all(r.get(key) is not None for r in points):
            values = [r[key] for r in points]
            axes.plot(clients, values, marker=marker, linestyle=style, label=label)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("subscribed WebSocket clients")
    axes.set_ylabel("publish → received latency (ms)")
    axes.set_title(f"End-to-end latency ({report['machine']['cores']} cores)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    CHART.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(CHART, dpi=110)
    return True


def update_readme(report: dict[str, Any], chart: bool) -> None:
    text = README.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md has no {BEGIN} … {END} section to update")
    m = report["machine"]
    body = [
        BEGIN,
        f"Measured {report['finished']} on {m['cpu']}, {m['cores']} cores, Python {m['python']}"
        f" (`python -m bench`, {report['seconds']:.0f} s). Each row runs eventbus and its anchor"
        " in the same process, taking turns.",
        "",
        table(report),
    ]
    if chart:
        body += ["", "![latency against subscribers](docs/bench/latency.png)"]
    body.append(END)
    start, end = text.index(BEGIN), text.index(END) + len(END)
    README.write_text(text[:start] + "\n".join(body) + text[end:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few iterations each (smoke test)")
    parser.add_argument("--only", action="append", help="run only these modules (repeatable)")
    parser.add_argument("--update-readme", action="store_true")
    parser.add_argument("--output", default=str(RESULTS))
    options = parser.parse_args()
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    failures: list[str] = []
    for module, arguments in RUNS:
        if (
            options.only
            and module not in options.only
            and module.split(".")[-1] not in options.only
        ):
            continue
        print(f"==> {module} {' '.join(arguments)}", flush=True)
        try:
            timeout = (
                LONGER[module][options.quick] if module in LONGER else 60 if options.quick else 480
            )
            rows = run_one(module, arguments, options.quick, timeout=timeout)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            failures.append(f"{module} {' '.join(arguments)}: {exc}")
            print(f"    FAILED: {exc}", flush=True)
            continue
        results.extend(rows)
        for result in rows:
            print(f"    {summary(result)}", flush=True)
    report = {
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seconds": round(time.monotonic() - started, 1),
        "quick": options.quick,
        "machine": machine(),
        "results": results,
        "failures": failures,
    }
    output = Path(options.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    chart = draw_chart(report) if not options.quick else False
    print()
    print(table(report))
    print(f"\nwrote {output}" + (f" and {CHART}" if chart else ""))
    if options.update_readme:
        if options.quick:
            raise SystemExit("--update-readme needs a full run, not --quick")
        update_readme(report, chart)
        print("updated README.md")
    if failures:
        raise SystemExit(f"{len(failures)} benchmark(s) failed")


if __name__ == "__main__":
    main()
