import asyncio
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from eventbus import metrics
from eventbus.relay import Relay


class Command(BaseCommand):
    help = (
        "Deliver pending events from the event log to the sink, retrying with backoff; "
        "runs until SIGINT/SIGTERM."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="Run one batch and exit.")
        parser.add_argument(
            "--max-seconds", type=float, default=None, help="Stop after this many seconds."
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=None,
            help="Serve Prometheus metrics on this port (/metrics, any path), in a thread.",
        )
        parser.add_argument(
            "--metrics-addr", default="0.0.0.0", help="Address of --metrics-port (0.0.0.0)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        port = options["metrics_port"]
        if port is not None:
            if not 0 < port < 65536:
                raise CommandError(f"--metrics-port must be a TCP port (1-65535), not {port}.")
            try:
                metrics.serve(port, options["metrics_addr"])
            except (RuntimeError, OSError) as exc:
                raise CommandError(f"Cannot serve metrics on port {port}: {exc}") from exc
            self.stdout.write(f"metrics on http://{options['metrics_addr']}:{port}/metrics")
        relay = Relay()
        if options["once"]:
            report = relay.run_once()
            self.stdout.write(
                f"delivered {len(report.delivered)}, retrying {len(report.retrying)}, "
                f"failed {len(report.failed)}, corrupted {len(report.corrupted)}"
            )
            return
        delivered = asyncio.run(self._run(relay, options["max_seconds"]))
        self.stdout.write(f"relay stopped; delivered {delivered} event(s)")

    async def _run(self, relay: Relay, max_seconds: float | None) -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        self.stdout.write("relay running; Ctrl-C to stop")
        self.stdout.flush()
        return await relay.arun(stop=stop, max_seconds=max_seconds)
