import asyncio
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

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

    def handle(self, *args: Any, **options: Any) -> None:
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
