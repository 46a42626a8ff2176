"""The processes of one chaos run: start them, kill them (SIGKILL), start them again.

Every process listens on or talks to 127.0.0.1 only, writes its output to a log file in
the run's directory, and is stopped by :meth:`Cluster.close` (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from tests.services import REPO_ROOT, AsgiServer, RedisServer, ServiceError, log_tail

CHANNELS = [
    "eventbus.project.1",
    "eventbus.project.2",
    "eventbus.project.3",
    "eventbus.agent.1",
]
PUBLISHERS = 3
RELAY_WORKERS = 2
# The subscribe() consumer fills at most this many missed events per channel from the
# log, so that the long Redis outages end in a StreamReset (too_many_missed): the run
# then checks that the events after the reset's position all follow.
SUBSCRIBE_RESUME_MAX = 20
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 5.0


def base_env(db_name: str, redis_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("EVENTBUS_CHAOS_EVENTBUS", None)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.chaos.settings",
        EVENTBUS_CHAOS_DB=db_name,
        EVENTBUS_CHAOS_REDIS_URL=redis_url,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
    )
    return env


class Process:
    """One child process of the run, restartable, its output appended to ``log``."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log: Path) -> None:
        self.name, self.argv, self.env, self.log = name, argv, dict(env), log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> None:
        if argv is not None:
            self.argv = argv
        if env is not None:
            self.env = dict(env)
        self.starts += 1
        with self.log.open("ab") as log:
            log.write(f"=== start {self.starts}: {' '.join(self.argv)} ===\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=REPO_ROOT,
            )

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


def last_line(path: Path) -> str:
    """The last complete line of ``path`` ('' when there is none)."""
    try:
        with path.open("rb") as file:
            file.seek(0, os.SEEK_END)
            size = file.tell()
            file.seek(max(0, size - 4096))
            lines = file.read().split(b"\n")
    except OSError:
        return ""
    complete = [line for line in lines[:-1] if line]  # the text after the last \n may be partial
    return complete[-1].decode(errors="replace") if complete else ""


def wait_for_line(path: Path, text: str, proc: Process, timeout: float) -> None:
    """Wait until a line of ``path`` contains ``text``; ServiceError if ``proc`` dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if not proc.running:
            raise ServiceError(f"{proc.name} exited before it was ready\n{log_tail(proc.log, 30)}")
        time.sleep(0.1)
    raise ServiceError(f"{proc.name} was not ready within {timeout:.0f}s\n{log_tail(proc.log, 30)}")


class Cluster:
    """Redis, uvicorn, the relay workers, the consumers and the publishers of one run."""

    def __init__(self, run_dir: Path, db_name: str, seed: int) -> None:
        self.dir = run_dir
        self.db_name = db_name
        self.seed = seed
        self.redis = RedisServer()
        self.env = base_env(db_name, self.redis.url)  # the URL is fixed at construction
        self.server = AsgiServer(env=self._server_env(), server="uvicorn", start_timeout=60)
        python = sys.executable
        self.relays = [
            Process(f"relay-{n}", [], {}, run_dir / f"relay-{n}.log") for n in range(RELAY_WORKERS)
        ]
        self.publishers = [
            Process(f"publisher-{n}", [], {}, run_dir / f"publisher-{n}.log")
            for n in range(PUBLISHERS)
        ]
        self.ws_consumer = Process(
            "websocket-consumer",
            [python, "-m", "tests.chaos.subscribers", "ws", f"{self.server.ws_url}/ws/events/",
             str(self.records("websocket")), *CHANNELS],
            self.env,
            run_dir / "websocket-consumer.log",
        )  # fmt: skip
        self.py_consumer = Process(
            "subscribe-consumer",
            [python, "-m", "tests.chaos.subscribers", "python", "-",
             str(self.records("subscribe")), *CHANNELS],
            {**self.env, "EVENTBUS_CHAOS_EVENTBUS": json.dumps(
                {"RESUME_MAX_EVENTS": SUBSCRIBE_RESUME_MAX})},
            run_dir / "subscribe-consumer.log",
        )  # fmt: skip

    def _server_env(self) -> dict[str, str]:
        keys = ("DJANGO_SETTINGS_MODULE", "EVENTBUS_CHAOS_DB", "EVENTBUS_CHAOS_REDIS_URL")
        return {key: self.env[key] for key in keys}

    def records(self, name: str) -> Path:
        return self.dir / f"{name}.jsonl"

    def marks(self, relay: int) -> Path:
        """The marks file of the relay worker's current (or last) process."""
        return self.dir / f"relay-{relay}-{self.relays[relay].starts}.marks"

    def publisher_records(self, n: int) -> Path:
        """The records file of the publisher's current (or last) process."""
        return self.dir / f"publisher-{n}-{self.publishers[n].starts}.jsonl"

    # -- starting ------------------------------------------------------------------

    def start(self) -> None:
        """Everything but the publishers, each ready; then the publishers."""
        self.redis.start()
        self.server.start()
        for n in range(RELAY_WORKERS):
            self.start_relay(n)
        self.ws_consumer.start()
        self.py_consumer.start()
        wait_for_line(self.records("websocket"), '"ready"', self.ws_consumer, READY_TIMEOUT)
        wait_for_line(self.records("subscribe"), '"ready"', self.py_consumer, READY_TIMEOUT)
        for n in range(PUBLISHERS):
            self.start_publisher(n)
        for n in range(PUBLISHERS):
            wait_for_line(self.publisher_records(n), '"ready"', self.publishers[n], READY_TIMEOUT)

    def start_relay(self, n: int) -> None:
        relay = self.relays[n]
        env = dict(self.env)
        env["EVENTBUS_CHAOS_EVENTBUS"] = json.dumps({"SINK": "tests.chaos.relay_sink.MarkedSink"})
        argv = [sys.executable, "-m", "django", "eventbus_relay", "--max-seconds", "900"]
        env["EVENTBUS_CHAOS_MARKS"] = str(self.dir / f"relay-{n}-{relay.starts + 1}.marks")
        relay.start(argv, env)

    def start_publisher(self, n: int) -> None:
        publisher = self.publishers[n]
        env = dict(self.env)
        if n == PUBLISHERS - 1:
            # This one leaves its events to the relay workers (their sweep), so that they
            # always have rows to claim, and a killed worker always holds some.
            env["EVENTBUS_CHAOS_EVENTBUS"] = json.dumps({"HAND_OFF_ON_COMMIT": False})
        records = self.dir / f"publisher-{n}-{publisher.starts + 1}.jsonl"
        seed = self.seed * 1000 + n * 100 + publisher.starts
        argv = [sys.executable, "-m", "tests.chaos.publisher", str(records), str(seed)]
        publisher.start(argv, env)

    # -- stopping ------------------------------------------------------------------

    def stop_publishers(self) -> None:
        for publisher in self.publishers:
            if publisher.proc is not None and publisher.proc.poll() is None:
                publisher.proc.send_signal(signal.SIGTERM)
        for publisher in self.publishers:
            publisher.stop(timeout=10)

    def crashed(self) -> list[str]:
        """The long-lived processes that exited on their own."""
        found = [
            p.name for p in (self.ws_consumer, self.py_consumer, *self.relays) if not p.running
        ]
        if not self.server.running:
            found.append("uvicorn")
        return found

    def close(self) -> None:
        """Stop every process the run started; safe to call more than once."""
        for process in (*self.publishers, self.ws_consumer, self.py_consumer, *self.relays):
            try:
                process.stop()
            except Exception:  # keep stopping the others
                process.kill()
        for service, name in ((self.server, "uvicorn.log"), (self.redis, "redis.log")):
            service.stop()
            with contextlib.suppress(OSError):  # keep its log with the run's, then clean up
                shutil.copyfile(service.log_path, self.dir / name)
            service.close()
