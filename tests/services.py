"""Real services for tests that claim them: a private redis-server and an ASGI server process.

Every server here listens on 127.0.0.1 only, on a port picked at random, and never on
Redis's default 6379, so a test cannot touch a service it did not start. Every wait is
bounded and ends in ``ServiceError`` carrying the tail of the server's log.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    import redis

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
# How many ports to try when another process takes ours between free_port() and bind.
PORT_ATTEMPTS = 3


class ServiceError(RuntimeError):
    """A test service did not start, answer or stop in time."""


class PortInUse(ServiceError):
    """Another process holds the port; the only start failure worth a retry on a new port."""


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The port is released before returning, so another process may take it first;
    the servers below retry with a new port when that happens.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_accepts(port: int, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def redis_server_binary() -> str | None:
    """The redis-server to run ($EVENTBUS_REDIS_SERVER, default the one on PATH), or None."""
    return shutil.which(os.environ.get("EVENTBUS_REDIS_SERVER", "redis-server"))


def _wait_until(
    ready: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float, what: str, log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"{what} exited with code {proc.returncode}\n{log_tail(log)}")
        if ready():
            return
        time.sleep(0.05)
    raise ServiceError(f"{what} was not ready within {timeout:.0f}s\n{log_tail(log)}")


def _stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, then SIGKILL if the process is still there after ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def log_tail(log: Path, lines: int = 40) -> str:
    """The last ``lines`` of a service's log, for an error message."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return f"(no log at {log})"
    return f"--- last lines of {log} ---\n" + "\n".join(text.splitlines()[-lines:])


class _Service:
    """Start/stop bookkeeping shared by the servers: a temp dir, a log file, one process."""

    name = "service"

    def __init__(self, port: int | None, start_timeout: float) -> None:
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.host = LOOPBACK
        self.start_timeout = start_timeout
        self.dir = Path(tempfile.mkdtemp(prefix=f"eventbus-{self.name}-"))
        self.log_path = self.dir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        # A crashed or interrupted test run must not leave servers behind.
        atexit.register(self.close)

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _popen_kwargs(self) -> dict[str, Any]:
        return {}

    def _ready(self) -> bool:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the server and wait until it answers; restarts reuse the same port."""
        if self.running:
            return
        attempts = 1 if self._fixed_port else PORT_ATTEMPTS
        for attempt in range(attempts):
            try:
                self._start_once()
            except PortInUse:
                if attempt + 1 == attempts:
                    raise
                self.port = free_port()
            else:
                self._fixed_port = True  # from now on restarts come back on this port
                return

    def _start_once(self) -> None:
        # Something else answering on the port would pass the readiness check for us.
        if port_accepts(self.port, self.host):
            raise PortInUse(f"{self.name}: port {self.port} is already in use")
        with self.log_path.open("ab") as log:
            log.write(f"=== starting {self.name} on port {self.port} ===\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                **self._popen_kwargs(),
            )
        try:
            _wait_until(
                self._ready,
                self._proc,
                self.start_timeout,
                f"{self.name} on port {self.port}",
                self.log_path,
            )
        except ServiceError as exc:
            _stop_process(self._proc)
            # redis-server and daphne both log this when they lose the race for the port.
            if "Address already in use" in str(exc):
                raise PortInUse(str(exc)) from exc
            raise

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after a bound); the port stays reserved."""
        _stop_process(self._proc)

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (no shutdown); ``start()`` brings it back."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(STOP_TIMEOUT)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    def close(self) -> None:
        """Stop the server and delete its temp dir. Safe to call more than once."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RedisServer(_Service):
    """A private redis-server on a free loopback port, keeping nothing on disk.

    ``RedisServer()`` does not start it: call ``start()`` or use it as a context manager.
    """

    name = "redis"

    def __init__(
        self,
        port: int | None = None,
        binary: str | None = None,
        start_timeout: float = START_TIMEOUT,
        replica_of: RedisServer | None = None,
    ) -> None:
        binary = binary or redis_server_binary()
        if binary is None:
            raise ServiceError("redis-server not installed")
        self.binary = binary
        self.replica_of = replica_of
        super().__init__(port, start_timeout)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def _command(self) -> list[str]:
        replica = [] if self.replica_of is None else [
            "--replicaof", self.replica_of.host, str(self.replica_of.port),
        ]  # fmt: skip
        return [
            *self._binary_and_config(),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
            # A replica is in sync at once, not after the 5 s wait for more replicas.
            "--repl-diskless-sync-delay",
            "0",
            *replica,
        ]

    def _binary_and_config(self) -> list[str]:
        return [self.binary]

    def client(self) -> redis.Redis:
        """A new sync ``redis.Redis`` client for this server, with short timeouts."""
        import redis  # imported here so that importing this module needs no redis package

        return redis.Redis(
            host=self.host, port=self.port, socket_connect_timeout=1, socket_timeout=2
        )

    def _ready(self) -> bool:
        import redis

        client = self.client()
        try:
            # Check the answer comes from our process, not a stranger on the same port.
            return bool(self._proc and client.info("server")["process_id"] == self._proc.pid)
        except redis.RedisError:
            return False
        finally:
            client.close()

    def flush(self) -> None:
        """Delete every key in every database."""
        client = self.client()
        try:
            client.flushall()
        finally:
            client.close()


class AsgiServer(_Service):
    """A real ASGI server process: daphne (default) or uvicorn, on loopback.

    uvicorn's WebSocket implementation applies backpressure (a send waits while the
    client does not read), which the slow-client tests rely on; daphne buffers instead.

    ``env`` is added to this process's environment (for example DJANGO_SETTINGS_MODULE or
    EVENTBUS_TEST_REDIS_URL). ``workers`` (uvicorn only) runs ``uvicorn --workers N``: N
    worker processes accepting on the one port; it is ready once every worker has loaded
    the app. The server runs from the repository root with it on
    PYTHONPATH, so ``tests.asgi:application`` imports as it does in the tests.
    Everything it prints goes to ``log_path``.
    """

    name = "asgi"

    def __init__(
        self,
        app: str = "tests.asgi:application",
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        start_timeout: float = 20.0,
        server: str = "daphne",
        workers: int = 1,
    ) -> None:
        # The default bound is longer than Redis's: importing Django on 2 busy cores is slow.
        if server not in ("daphne", "uvicorn"):
            raise ValueError(f"server must be 'daphne' or 'uvicorn', not {server!r}")
        if workers < 1 or (workers > 1 and server != "uvicorn"):
            raise ValueError(f"workers must be 1, or more with uvicorn; not {workers!r}")
        self.server = server
        self.workers = workers
        self.app = app
        self.env = dict(env or {})
        super().__init__(port, start_timeout)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def _command(self) -> list[str]:
        if self.server == "uvicorn":
            return [
                sys.executable, "-m", "uvicorn", self.app, "--host", self.host,
                "--port", str(self.port), "--ws", "websockets-sansio", "--no-access-log",
                "--lifespan", "off",
                *(["--workers", str(self.workers)] if self.workers > 1 else []),
            ]  # fmt: skip
        return [sys.executable, "-m", "daphne", "-b", self.host, "-p", str(self.port), self.app]

    def _popen_kwargs(self) -> dict[str, Any]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"  # so the log is complete when we show it
        env.update(self.env)
        return {"env": env, "cwd": REPO_ROOT}

    def _ready(self) -> bool:
        # daphne imports the application before it listens, so an open port means ready.
        # uvicorn's workers share a socket their parent opened first: each one logs this
        # line once it has imported the application.
        if self.workers > 1:
            started = self.log_text().rpartition("=== starting")[2]
            if started.count("Started server process") < self.workers:
                return False
        return port_accepts(self.port, self.host)


SENTINEL_MASTER = "eventbus"


class SentinelServer(RedisServer):
    """A Redis Sentinel (``redis-server CONFIG --sentinel``) watching ``master``.

    Its timings are short so that a test's failover takes seconds: the master is judged
    down after ``down_after_ms`` without an answer, and ``quorum`` sentinels must agree.
    ``SENTINEL_MASTER`` is the name the sentinels give the master (``master_name`` in
    channels_redis's hosts).
    """

    name = "sentinel"

    def __init__(
        self,
        master: RedisServer,
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        port: int | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self.master = master
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        super().__init__(port=port, start_timeout=start_timeout)

    def _binary_and_config(self) -> list[str]:
        # A sentinel rewrites its config file as it learns the replicas and other
        # sentinels: each start writes a fresh one in the service's own directory.
        config = self.dir / "sentinel.conf"
        name = SENTINEL_MASTER
        config.write_text(
            f"sentinel monitor {name} {self.master.host} {self.master.port} {self.quorum}\n"
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {name} 1\n"
        )
        return [self.binary, str(config), "--sentinel"]

    def _ready(self) -> bool:
        import redis

        client = self.client()
        try:
            return (
                client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER)
                is not None
            )
        except redis.RedisError:
            return False
        finally:
            client.close()

    def master_port(self) -> int | None:
        """The port of the server this sentinel now calls the master (None: no answer)."""
        import redis

        client = self.client()
        try:
            answer = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER)
        except redis.RedisError:
            return None
        finally:
            client.close()
        return int(answer[1]) if answer else None

    def flush(self) -> None:
        raise ServiceError("a sentinel holds no data to flush")


class SentinelGroup:
    """A master, its replicas and the sentinels watching them, started and closed together."""

    def __init__(self, replicas: int = 1, sentinels: int = 3) -> None:
        self.master = RedisServer()
        self.replicas = [RedisServer(replica_of=self.master) for _ in range(replicas)]
        self.sentinels = [SentinelServer(self.master) for _ in range(sentinels)]

    @property
    def servers(self) -> list[RedisServer]:
        return [self.master, *self.replicas]

    def host(self, **extra: Any) -> dict[str, Any]:
        """The channels_redis ``hosts`` entry that finds the master through the sentinels."""
        sentinels = [[s.host, s.port] for s in self.sentinels]
        return {"sentinels": sentinels, "master_name": SENTINEL_MASTER, **extra}

    def start(self) -> None:
        for server in (*self.servers, *self.sentinels):
            server.start()
        self.wait_for_replicas()

    def wait_for_replicas(self, timeout: float = START_TIMEOUT) -> None:
        """Until the master has every replica in sync (what a failover needs)."""
        deadline = time.monotonic() + timeout
        client = self.master.client()
        try:
            while time.monotonic() < deadline:
                info = client.info("replication")
                online = [
                    value for key, value in info.items()
                    if key.startswith("slave") and isinstance(value, dict)
                    and value.get("state") == "online"
                ]  # fmt: skip
                if len(online) == len(self.replicas):
                    return
                time.sleep(0.05)
        finally:
            client.close()
        raise ServiceError(
            f"the replicas were not in sync within {timeout:.0f}s\n"
            + log_tail(self.replicas[0].log_path)
        )

    def wait_for_failover(self, timeout: float = 30.0) -> RedisServer:
        """Until every sentinel names a replica as the master; that replica."""
        ports = {server.port: server for server in self.replicas}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            named = {sentinel.master_port() for sentinel in self.sentinels}
            if len(named) == 1 and (port := named.pop()) in ports:
                promoted = ports[port]
                client = promoted.client()
                try:
                    if client.info("replication")["role"] == "master":
                        return promoted
                except Exception:
                    pass
                finally:
                    client.close()
            time.sleep(0.1)
        raise ServiceError(
            f"no failover within {timeout:.0f}s\n" + log_tail(self.sentinels[0].log_path)
        )

    def close(self) -> None:
        for server in (*self.sentinels, *self.servers):
            server.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
