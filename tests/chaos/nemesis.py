"""The nemesis: a seeded schedule of faults, carried out one after the other on a cluster.

Five faults per run, in an order and with pauses drawn from the seed:
- ``redis`` twice: ``kill -9`` the redis-server, keep it down (3 s and 10 s; 1 s and 3 s
  in quick mode), start a fresh one on the same port (it remembers nothing);
- ``relay``: SIGKILL a relay worker while it holds claimed rows (its sink marked
  ``sending``), start it again; its rows wait out their lease;
- ``publisher``: SIGKILL a publisher inside a transaction (its last record ``holding``),
  start it again;
- ``server``: SIGKILL uvicorn and start it again on the same port; the WebSocket
  consumer reconnects and resumes. In half the seeds this happens a third of the way
  into the long Redis outage (``redis_and_server``), so the consumer resumes against a
  server that cannot reach its channel layer.
Every wait is bounded; what happened, and when, goes to the run's JSON.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .cluster import PUBLISHERS, RELAY_WORKERS, Cluster, last_line

# How long to wait for a worker holding rows, or a publisher inside a transaction.
CATCH_TIMEOUT = 10.0


@dataclass(frozen=True)
class Plan:
    warmup: float
    faults: list[tuple[float, str, int, float]]  # (pause before, kind, target, seconds down)
    calm: float  # publishing goes on this long after the last fault

    @property
    def nominal_seconds(self) -> float:
        return self.warmup + sum(pause + down for pause, _, _, down in self.faults) + self.calm


def plan(seed: int, quick: bool) -> Plan:
    rng = random.Random(seed)
    short, long = (1.0, 3.0) if quick else (3.0, 10.0)
    # Half the seeds kill uvicorn in the middle of the long Redis outage instead of on its
    # own: the WebSocket consumer then reconnects to a server whose channel layer is away.
    overlap = rng.random() < 0.5
    kinds = ["redis short", "redis long", "relay", "publisher", *([] if overlap else ["server"])]
    rng.shuffle(kinds)
    pauses = (1.0, 2.0) if quick else (2.0, 5.0)
    faults = []
    for kind in kinds:
        target, down = 0, 0.0
        if kind.startswith("redis"):
            down = long if kind == "redis long" else short
            kind = "redis_and_server" if overlap and down == long else "redis"
        elif kind == "relay":
            target = rng.randrange(RELAY_WORKERS)
        elif kind == "publisher":
            target = rng.randrange(PUBLISHERS)
        faults.append((round(rng.uniform(*pauses), 2), kind, target, down))
    return Plan(warmup=3.0, faults=faults, calm=2.0 if quick else 4.0)


@dataclass
class Nemesis:
    cluster: Cluster
    started: float = field(default_factory=time.monotonic)
    log: list[dict[str, Any]] = field(default_factory=list)

    def note(self, what: str, **details: Any) -> None:
        self.log.append({"at": round(time.monotonic() - self.started, 2), "what": what, **details})

    def run(self, plan: Plan) -> None:
        time.sleep(plan.warmup)
        for pause, kind, target, down in plan.faults:
            time.sleep(pause)
            getattr(self, f"_{kind}")(target, down)
        time.sleep(plan.calm)

    def _redis(self, _: int, down: float) -> None:
        self.cluster.redis.kill()
        self.note("redis killed", seconds_down=down)
        time.sleep(down)
        self.cluster.redis.start()
        self.note("redis started")

    def _redis_and_server(self, _: int, down: float) -> None:
        self.cluster.redis.kill()
        self.note("redis killed", seconds_down=down)
        started = time.monotonic()
        time.sleep(down / 3)
        self._server(0, 0.0)
        time.sleep(max(0.0, down - (time.monotonic() - started)))
        self.cluster.redis.start()
        self.note("redis started")

    def _relay(self, n: int, _: float) -> None:
        holding = self._wait_for_last(lambda: self.cluster.marks(n), "sending")
        self.cluster.relays[n].kill()
        held = json.loads(holding)["ids"] if holding else []
        self.note(f"relay-{n} killed", holding_claimed_rows=len(held))
        time.sleep(0.5)
        self.cluster.start_relay(n)
        self.note(f"relay-{n} started")

    def _publisher(self, n: int, _: float) -> None:
        inside = self._wait_for_last(lambda: self.cluster.publisher_records(n), "holding")
        self.cluster.publishers[n].kill()
        self.note(f"publisher-{n} killed", inside_transaction=bool(inside))
        self.cluster.start_publisher(n)
        self.note(f"publisher-{n} started")

    def _server(self, _: int, __: float) -> None:
        self.cluster.server.kill()
        self.note("uvicorn killed")
        self.cluster.server.start()
        self.note("uvicorn started")

    def _wait_for_last(self, path: Any, text: str) -> str:
        """The last line of the file at ``path()`` once it contains ``text`` ('' on timeout)."""
        deadline = time.monotonic() + CATCH_TIMEOUT
        while time.monotonic() < deadline:
            line = last_line(path())
            if text in line:
                return line
            time.sleep(0.002)
        return ""

    def report(self, plan: Plan) -> dict[str, Any]:
        return {"plan": asdict(plan), "log": self.log}
