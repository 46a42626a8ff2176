"""In-process fan-out: one channel-layer reader per server process, not one per socket.

With a Channels group per socket, every event wakes every socket's consumer through the
channel layer (channels-redis starts tasks per receiver and message), and that, not the
WebSocket sends, limited how many sockets one process could serve. Here each process
joins every group that at least one of its sockets wants, once, through a single layer
channel; a reader task hands each message to the local members of its group, which
queue it in their send queue (``eventbus.sendqueue``). See docs/performance.md for the numbers.

The channel layer still carries every event between processes, so several server
processes (and the relay) keep working as before. Each group's messages pass through
the process's :class:`~eventbus.cursor.StreamCursor`: members get a channel's events in
position order, with gaps filled from the log (or a reset), including what was sent
while a restarted Redis had forgotten this process's groups.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from channels.layers import BaseChannelLayer

from . import _redis
from ._asyncio import PerLoopAndLayer
from .cursor import RESET_TYPE, StreamCursor
from .layers import FANOUT_CHANNEL_PREFIX
from .metrics import get_metrics
from .presence import PRESENCE_TYPE
from .reconnect import RETRY_FIRST, is_connection_error, log_layer_error, next_delay
from .streams import Head
from .tracing import get_tracing

logger = logging.getLogger("eventbus.fanout")


class Member(Protocol):
    """What the fan-out hands messages to: one per socket (the WebSocket consumer)."""

    def on_message(self, message: dict[str, Any]) -> None:
        """Take one event of a joined group, in position order; must not block or raise."""

    def on_reset(self, message: dict[str, Any]) -> None:
        """The group's stream skipped what the log could not fill (a reset message)."""

    def on_presence(self, message: dict[str, Any]) -> None:
        """A user joined or left the group's channel (``eventbus.presence``)."""


STOP_SECONDS = 5.0
_ABSENT = object()


class LocalFanout:
    """This process's (and event loop's) members of channel-layer groups.

    The first member of a group makes the process join it; the last to leave makes it
    leave. A restarted Redis forgets its groups, so while any group is joined they are
    joined again every ``refresh_seconds``.
    """

    refresh_seconds = 5.0

    def __init__(self, layer: BaseChannelLayer) -> None:
        # Its reads block for a long time: under redis-py 8 the layer needs the socket
        # timeout eventbus gives (eventbus._redis), however the layer was obtained.
        self.layer = _redis.configure(layer)
        self.channel_name: str | None = None
        self._members: dict[str, dict[Member, None]] = {}
        self._joined: set[str] = set()
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self.cursor = StreamCursor()

    def members(self, group: str) -> list[Member]:
        return list(self._members.get(group, ()))

    @property
    def groups(self) -> set[str]:
        """The groups this process is in."""
        return set(self._joined)

    async def join(self, group: str, member: Member) -> Head:
        """Hand ``group``'s messages to ``member`` from now on; where its stream stands.

        Every event after the returned position reaches ``member``, in order, or a reset.
        """
        members = self._members.get(group)
        head = self.cursor.at(group)
        if members is not None and group in self._joined and head is not None:
            self._add(members, member)
            return head
        async with self._lock:
            self._add(self._members.setdefault(group, {}), member)
            try:
                await self._start()
                if group not in self._joined:
                    assert self.channel_name is not None
                    await self.layer.group_add(group, self.channel_name)
                    self._joined.add(group)
                # In the group first, then read the head: whatever comes after it arrives.
                return await self.cursor.follow(group)
            except BaseException:
                self._discard(group, member)
                await self._leave_group_if_unused(group)
                raise

    async def leave(self, group: str, member: Member) -> None:
        """Stop handing messages to ``member``; leave the group when it was the last."""
        if self._discard(group, member):
            async with self._lock:
                await self._leave_group_if_unused(group)

    def _add(self, members: dict[Member, None], member: Member) -> None:
        if member not in members:
            members[member] = None
            get_metrics().subscribed()

    def _discard(self, group: str, member: Member) -> bool:
        """Remove ``member`` at once; True when ``group`` has no local member left."""
        members = self._members.get(group)
        if members is None:
            return False
        if members.pop(member, _ABSENT) is not _ABSENT:
            get_metrics().unsubscribed()
        return not members

    async def _leave_group_if_unused(self, group: str) -> None:
        # Called with the lock held: a join may have come in while we waited for it.
        if self._members.get(group):
            return
        self._members.pop(group, None)
        self.cursor.drop(group)
        if group in self._joined:
            self._joined.discard(group)
            assert self.channel_name is not None
            try:
                await self.layer.group_discard(group, self.channel_name)
            except Exception as exc:
                # The layer's server is away: its groups expire on their own.
                if not is_connection_error(exc):
                    raise
        if not self._members:
            await self._stop()

    async def _start(self) -> None:
        if self.channel_name is not None:
            return
        self.channel_name = await self.layer.new_channel(FANOUT_CHANNEL_PREFIX)
        self._tasks = [
            asyncio.create_task(self._read(self.channel_name)),
            asyncio.create_task(self._refresh()),
        ]

    async def _stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        self.channel_name = None
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: a layer whose receive ignores cancellation (channels_redis under
            # redis-py 8 on Python 3.11) must not hold up the socket that left last.
            await asyncio.wait(tasks, timeout=STOP_SECONDS)

    async def _read(self, channel_name: str) -> None:
        delay = RETRY_FIRST
        while True:
            try:
                message = await self.layer.receive(channel_name)
            except Exception as exc:
                if is_connection_error(exc):
                    logger.warning(
                        "The fan-out lost the channel layer; joining again in %.1f s: %s",
                        delay,
                        exc,
                    )
                else:
                    logger.exception("The fan-out could not read from the channel layer")
                await asyncio.sleep(delay)
                delay = next_delay(delay)
                await self._rejoin()
                continue
            delay = RETRY_FIRST
            for admitted in await self.cursor.admit(message):
                self.distribute(admitted)

    def distribute(self, message: dict[str, Any]) -> None:
        """Hand ``message`` to every local member of its group (``message['channel']``)."""
        members = self._members.get(message.get("channel", ""))
        if not members:
            return
        tracing = get_tracing()
        if tracing is not None and "traceparent" in message:
            with tracing.delivering(message, len(members)):
                self._hand(message, list(members))
        else:
            self._hand(message, list(members))

    def _hand(self, message: dict[str, Any], members: list[Member]) -> None:
        kind = message.get("type")
        for member in members:
            try:
                if kind == PRESENCE_TYPE:
                    member.on_presence(message)
                elif kind == RESET_TYPE:
                    member.on_reset(message)
                else:
                    member.on_message(message)
            except Exception:
                logger.exception("Handing a message to %r failed", member)

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            await self._rejoin()

    async def _rejoin(self) -> None:
        """Join every group again (a restarted Redis forgot them), then take from the log
        what was sent while this process was not in them."""
        channel_name = self.channel_name
        if channel_name is None:
            return
        try:
            for group in list(self._joined):
                await self.layer.group_add(group, channel_name)
        except Exception as exc:
            # Still away (or, after a failover, read-only): the reader and the refresh
            # must live on and try again later, or every socket here goes quiet.
            log_layer_error(logger, exc, "The fan-out could not join its groups again")
            return
        for missed in await self.cursor.catch_up():
            self.distribute(missed)


_fanouts: PerLoopAndLayer[LocalFanout] = PerLoopAndLayer(LocalFanout)


def get_fanout(layer: BaseChannelLayer) -> LocalFanout:
    """The running event loop's fan-out over ``layer``."""
    return _fanouts.get(layer)
