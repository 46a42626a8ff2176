import asyncio
import contextlib
import json
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from eventbus.bus import get_event_bus
from eventbus.channel_names import agent_channel, project_channel, validate_channel
from eventbus.exceptions import InvalidChannelError
from eventbus.wire import public_json


class Command(BaseCommand):
    help = (
        "Print the live events of channels as they arrive, one line each (JSON by default), "
        "until Ctrl-C, --max-events or --max-seconds."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "channels",
            nargs="*",
            metavar="CHANNEL",
            help="Channel names, e.g. eventbus.project.<hex>.",
        )
        parser.add_argument(
            "--project",
            action="append",
            default=[],
            metavar="KEY",
            help="Follow this project's channel (repeatable).",
        )
        parser.add_argument(
            "--agent",
            action="append",
            default=[],
            metavar="KEY",
            help="Follow this agent's channel (repeatable).",
        )
        parser.add_argument(
            "--format",
            choices=["json", "text"],
            default="json",
            help="json: each event's public JSON; text: one readable line.",
        )
        parser.add_argument(
            "--max-events", type=int, default=None, metavar="N", help="Stop after N events."
        )
        parser.add_argument(
            "--max-seconds", type=float, default=None, metavar="S", help="Stop after S seconds."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        channels = _channels(options["channels"], options["project"], options["agent"])
        max_events, max_seconds = options["max_events"], options["max_seconds"]
        if max_events is not None and max_events < 1:
            raise CommandError("--max-events must be at least 1.")
        if max_seconds is not None and max_seconds <= 0:
            raise CommandError("--max-seconds must be more than 0.")
        self.printed = 0
        # On Ctrl-C asyncio.run cancels the tail, which leaves its groups on the way out.
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(self._tail(channels, options["format"], max_events, max_seconds))
        self.stderr.write(f"stopped after {self.printed} event(s)")

    async def _tail(
        self, channels: list[str], fmt: str, max_events: int | None, max_seconds: float | None
    ) -> None:
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        async with get_event_bus().subscribe(channels) as events:
            # Scripts and tests wait for this line before they publish.
            self.stderr.write(f"listening on {', '.join(channels)}; Ctrl-C to stop")
            self.stderr.flush()
            while max_events is None or self.printed < max_events:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return
                try:
                    event = await asyncio.wait_for(anext(events), remaining)
                except TimeoutError:
                    return
                raw = public_json(event)
                self.stdout.write(raw if fmt == "json" else _text_line(json.loads(raw)))
                self.stdout.flush()
                self.printed += 1


def _channels(names: list[str], projects: list[str], agents: list[str]) -> list[str]:
    """The channels to follow, in the order given, each once; CommandError names a bad one."""
    if not (names or projects or agents):
        raise CommandError("Name at least one channel, or use --project KEY or --agent KEY.")
    channels = []
    for name in names:
        try:
            channels.append(validate_channel(name))
        except InvalidChannelError as exc:
            raise CommandError(str(exc)) from exc
    for option, ids, channel_of in (
        ("--project", projects, project_channel),
        ("--agent", agents, agent_channel),
    ):
        for text in ids:
            try:
                channels.append(channel_of(text))
            except ValueError as exc:
                raise CommandError(f"{option}: {exc}.") from None
    return list(dict.fromkeys(channels))


def _text_line(data: dict[str, Any]) -> str:
    """``<timestamp> <type> <id> project=<id> actor=<type>[:<id>] <payload JSON>``."""
    actor = data["actor_type"] + (f":{data['actor_id']}" if data["actor_id"] else "")
    payload = json.dumps(data["payload"], separators=(",", ":"), ensure_ascii=False)
    return (
        f"{data['timestamp']} {data['type']} {data['id']} "
        f"project={data['project_id'] or '-'} actor={actor} {payload}"
    )
