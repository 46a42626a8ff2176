"""The relay workers' sink: the default one, which notes when it holds claimed rows.

A relay worker owns the rows it claimed from its claim until it records the outcome.
This sink writes ``sending`` to the worker's marks file before it sends and ``sent``
after, and lingers a moment in between, so the nemesis can SIGKILL a worker while it
holds claimed rows (the lease path) and know that it did.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from eventbus.envelope import Event
from eventbus.sinks import ChannelLayerSink

HOLD_SECONDS = 0.15


class MarkedSink(ChannelLayerSink):
    takes_positions = True

    def __init__(self) -> None:
        path = os.environ["EVENTBUS_CHAOS_MARKS"]
        self._marks = open(path, "a", buffering=1)  # noqa: SIM115  (open for the process's life)

    def _mark(self, what: str, events: Sequence[Event[Any]]) -> None:
        self._marks.write(json.dumps({"mark": what, "ids": [str(e.id) for e in events]}) + "\n")

    async def send(
        self, events: Sequence[Event[Any]], positions: Mapping[UUID, Any] | None = None
    ) -> None:
        self._mark("sending", events)
        await asyncio.sleep(HOLD_SECONDS)
        await super().send(events, positions)
        self._mark("sent", events)
