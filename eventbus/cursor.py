"""Where one reader stands on each channel's stream, and how it catches up from the log.

A reader (a server process's fan-out, a Python subscription) passes each live message
through :meth:`StreamCursor.admit`, which says what to hand on, in position order: the
message itself when it is the next one; nothing when it is a repeat; and when it skips
positions (a Redis restart, a lost message, a relay that retried), the missing events
read from the log first. What the log cannot fill becomes a reset message, so a gap is
never silent. After a reconnect, :meth:`StreamCursor.catch_up` brings every followed
channel up to the log's head the same way.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from . import conf
from .streams import Head, aread, heads, read_after
from .wire import layer_message, public_json

logger = logging.getLogger("eventbus.streams")

RESET_TYPE = "eventbus.reset"
"""The ``type`` of the reset messages a cursor hands on, beside the events."""


def reset_message(channel: str, reason: str, head: Head) -> dict[str, Any]:
    """A reset: what came before ``head.position`` on ``channel`` cannot be vouched for."""
    return {
        "type": RESET_TYPE,
        "channel": channel,
        "reason": reason,
        "epoch": head.epoch,
        "position": head.position,
    }


class StreamCursor:
    """The last position handed on, per followed channel; fills gaps from the log."""

    def __init__(self) -> None:
        self._at: dict[str, Head] = {}
        self._lock = asyncio.Lock()

    def at(self, channel: str) -> Head | None:
        return self._at.get(channel)

    @property
    def channels(self) -> list[str]:
        return list(self._at)

    async def follow(self, channel: str) -> Head:
        """Start following ``channel`` from its head in the log now (if not already)."""
        if channel not in self._at:
            head = (await aread(heads, [channel]))[channel]
            self._at.setdefault(channel, head)
        return self._at[channel]

    def drop(self, channel: str) -> None:
        self._at.pop(channel, None)

    async def admit(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        """The messages to hand on for one live ``message``, in order."""
        position = message.get("position")
        channel = message.get("channel", "")
        if position is None:
            return [message]  # not in the log (live only): as it comes
        # While a catch-up runs, what it found is not handed on yet: a live event must
        # wait for it, or it would go out first and what the log had would then be
        # dropped as a repeat.
        if not self._lock.locked():
            now = self._admit_now(channel, position, message)
            if now is not None:
                return now
        async with self._lock:
            now = self._admit_now(channel, position, message)
            if now is not None:
                return now
            return await self._fill(channel, position, message)

    def _admit_now(
        self, channel: str, position: int, message: dict[str, Any]
    ) -> list[dict[str, Any]] | None:
        """What to hand on for a live message without the log; None when it skips ahead."""
        head = self._at.get(channel)
        if head is None:
            return [message]  # not followed: as it comes
        if position == head.position + 1:
            self._at[channel] = Head(head.epoch, position)
            return [message]
        if position <= head.position:
            return []  # a repeat: a relay that sent it twice, or the log filled it already
        return None

    async def catch_up(self) -> list[dict[str, Any]]:
        """After a reconnect: every followed channel's events that the log has beyond us."""
        async with self._lock:
            try:
                now = await aread(heads, list(self._at))
            except Exception:
                logger.exception("Could not read the channels' heads; trying again later")
                return []
            found: list[dict[str, Any]] = []
            for channel, head in now.items():
                ours = self._at.get(channel)
                if ours is None:
                    continue
                if not ours.epoch:  # followed before its first event: now it has an epoch
                    ours = self._at[channel] = Head(head.epoch, ours.position)
                if head.epoch and head.epoch != ours.epoch:
                    self._at[channel] = head
                    found.append(reset_message(channel, "epoch_changed", head))
                elif head.position > ours.position:
                    found.extend(await self._fill(channel, head.position, None))
            return found

    async def _fill(
        self, channel: str, upto: int, live: dict[str, Any] | None
    ) -> list[dict[str, Any]]:
        """The log's events of ``channel`` after our position, through ``upto`` at least.

        Called with the lock held. Live messages admitted meanwhile (the in-order path
        takes no lock) are not handed on twice.
        """
        head = self._at.get(channel)
        if head is None or upto <= head.position:  # dropped, or filled while we waited
            return []
        cap = conf.get_settings().RESUME_MAX_EVENTS
        try:
            entries = await aread(read_after, channel, head.position, cap + 1)
        except Exception:
            logger.exception("Could not read %s from the log to fill a gap", channel)
            reset = self._reset(channel, "log_unavailable", Head(head.epoch, upto - 1))
            if live is None:
                return reset
            self._at[channel] = Head(head.epoch, upto)
            return [*reset, live]
        if len(entries) > cap:
            newest = (await aread(heads, [channel]))[channel]
            return self._reset(channel, "too_many_missed", newest)
        current = self._at.get(channel)
        if current is None:
            return []
        found: list[dict[str, Any]] = []
        position = head.position
        for entry in entries:
            if entry.position != position + 1:  # a hole: pruned from the log
                return self._reset(channel, "pruned", Head(head.epoch, entry.position - 1))
            position = entry.position
            if position <= current.position:
                continue  # handed on meanwhile, live
            if entry.event is None:
                logger.error("Event %s on %s cannot be read back; skipped", entry.event_id, channel)
                continue
            raw = public_json(entry.event)
            found.append(layer_message(entry.event, channel, raw, position))
        self._at[channel] = Head(head.epoch, max(position, current.position))
        return found

    def _reset(self, channel: str, reason: str, head: Head) -> list[dict[str, Any]]:
        logger.warning("Stream %s reset (%s) at position %d", channel, reason, head.position)
        self._at[channel] = head
        return [reset_message(channel, reason, head)]
