"""Sinks for the relay tests: one that fails on demand, one that writes to a file."""

import json
import os
from collections.abc import Sequence
from typing import Any

from eventbus import Event
from eventbus.sinks import InMemorySink


class FlakySink(InMemorySink):
    """Raises ConnectionError while ``failing`` is set, like Redis going away."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False
        self.calls = 0

    async def send(self, events: Sequence[Event[Any]]) -> None:
        self.calls += 1
        if self.failing:
            raise ConnectionError("sink is down")
        await super().send(events)


class FileSink:
    """Appends event ids to the file named by $EVENTBUS_TEST_SINK_FILE (cross-process)."""

    async def send(self, events: Sequence[Event[Any]]) -> None:
        with open(os.environ["EVENTBUS_TEST_SINK_FILE"], "a") as sink_file:
            for event in events:
                sink_file.write(json.dumps({"id": str(event.id)}) + "\n")
