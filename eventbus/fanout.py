"""In-process fan-out: one channel-layer reader per server process, not one per socket.

With a Channels group per socket, every event wakes every socket's consumer through the
channel layer (channels-redis starts tasks per receiver and message), and that, not the
WebSocket sends, limited how many sockets one process could serve. Here each process
joins every group that at least one of its sockets wants, once, through a single layer
channel; a reader task hands each message to the local members of its group, which
queue it in their :class:`Outbox`. See docs/performance.md for the numbers.

The channel layer still carries every event between processes, so several server
processes (and the relay) keep working as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import weakref
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from channels.layers import BaseChannelLayer

from .bus import RETRY_FIRST, RETRY_MAX, is_connection_error
from .layers import FANOUT_CHANNEL_PREFIX

logger = logging.getLogger("eventbus.fanout")


class Member(Protocol):
    """What the fan-out delivers to: one per socket (the WebSocket consumer)."""

    def deliver(self, message: dict[str, Any]) -> None:
        """Take one message of a joined group; must not block or raise."""


class LocalFanout:
    """This process's (and event loop's) members of channel-layer groups.

    The first member of a group makes the process join it; the last to leave makes it
    leave. A restarted Redis forgets its groups, so while any group is joined they are
    joined again every ``refresh_seconds``.
    """

    refresh_seconds = 5.0

    def __init__(self, layer: BaseChannelLayer) -> None:
        self.layer = layer
        self.channel_name: str | None = None
        self._members: dict[str, dict[Member, None]] = {}
        self._joined: set[str] = set()
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    def members(self, group: str) -> list[Member]:
        return list(self._members.get(group, ()))

    @property
    def groups(self) -> set[str]:
        """The groups this process is in."""
        return set(self._joined)

    async def join(self, group: str, member: Member) -> None:
        """Deliver ``group``'s messages to ``member`` from now on."""
        members = self._members.get(group)
        if members is not None and group in self._joined:
            members[member] = None
            return
        async with self._lock:
            self._members.setdefault(group, {})[member] = None
            try:
                await self._start()
                if group not in self._joined:
                    assert self.channel_name is not None
                    await self.layer.group_add(group, self.channel_name)
                    self._joined.add(group)
            except BaseException:
                self._discard(group, member)
                await self._leave_group_if_unused(group)
                raise

    async def leave(self, group: str, member: Member) -> None:
        """Stop delivering to ``member``; leave the group when it was the last."""
        if self._discard(group, member):
            async with self._lock:
                await self._leave_group_if_unused(group)

    def _discard(self, group: str, member: Member) -> bool:
        """Remove ``member`` at once; True when ``group`` has no local member left."""
        members = self._members.get(group)
        if members is None:
            return False
        members.pop(member, None)
        return not members

    async def _leave_group_if_unused(self, group: str) -> None:
        # Called with the lock held: a join may have come in while we waited for it.
        if self._members.get(group):
            return
        self._members.pop(group, None)
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
            await asyncio.wait(tasks)

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
                delay = min(delay * 2, RETRY_MAX)
                await self._rejoin()
                continue
            delay = RETRY_FIRST
            self.deliver(message)

    def deliver(self, message: dict[str, Any]) -> None:
        """Hand ``message`` to every local member of its group (``message['channel']``)."""
        members = self._members.get(message.get("channel", ""))
        if not members:
            return
        for member in list(members):
            try:
                member.deliver(message)
            except Exception:
                logger.exception("Delivering to %r failed", member)

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            await self._rejoin()

    async def _rejoin(self) -> None:
        channel_name = self.channel_name
        if channel_name is None:
            return
        try:
            for group in list(self._joined):
                await self.layer.group_add(group, channel_name)
        except Exception as exc:
            # Still away (or, after a failover, read-only): the reader and the refresh
            # must live on and try again later, or every socket here goes quiet.
            if is_connection_error(exc):
                logger.warning("The fan-out could not join its groups again: %s", exc)
            else:
                logger.exception("The fan-out could not join its groups again")


_fanouts: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, LocalFanout]] = (
    weakref.WeakKeyDictionary()
)


def get_fanout(layer: BaseChannelLayer) -> LocalFanout:
    """The running event loop's fan-out over ``layer``."""
    per_loop = _fanouts.setdefault(asyncio.get_running_loop(), {})
    fanout = per_loop.get(id(layer))
    if fanout is None or fanout.layer is not layer:
        fanout = per_loop[id(layer)] = LocalFanout(layer)
    return fanout


class Outbox:
    """One socket's frames in order, sent by at most one task at a time.

    :meth:`offer` never waits, so that one slow socket cannot hold up the fan-out to
    the others; a socket with ``limit`` frames queued (the one being sent included),
    or whose send has not finished after ``timeout`` seconds, is given up:
    ``on_failure(stalled=True)``. A send that raises (the socket went away) calls
    ``on_failure(stalled=False)``. Either way nothing more is sent.

    Most sends finish at once (the server's buffer has room), so there is no timer per
    frame: one is armed only while a send waits on the client.
    """

    def __init__(
        self,
        send: Callable[[str], Coroutine[Any, Any, None]],
        *,
        limit: int,
        timeout: float,
        on_failure: Callable[[bool], None],
    ) -> None:
        self._send = send
        self.limit = limit
        self.timeout = timeout
        self._on_failure = on_failure
        self._frames: deque[str] = deque()
        self._sender: asyncio.Task[None] | None = None
        self._room: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._sending_since = 0.0
        # Sends run in the context of the code that made the outbox (the socket's
        # consumer), not in that of whoever offers a frame (the fan-out's reader).
        self._context = contextvars.copy_context()
        self.failed = False

    def __len__(self) -> int:
        return len(self._frames)

    def offer(self, frame: str) -> bool:
        """Queue ``frame`` without waiting; False (and the socket given up) when full."""
        if self.failed:
            return False
        if len(self._frames) >= self.limit:
            self._fail(stalled=True)
            return False
        self._frames.append(frame)
        if self._sender is None:
            self._send_now()
        return True

    def _send_now(self) -> None:
        """Send queued frames right here, until one has to wait: a task takes that over.

        Most sends finish at once (the server's buffer has room), so most cost no task:
        with a thousand sockets, a task per send was a tenth of the fan-out's time.
        """
        frames = self._frames
        while frames and not self.failed:
            sending = self._send(frames[0])
            try:
                waiting_on = self._context.run(sending.send, None)
            except StopIteration:
                if frames:  # unless the send closed the outbox
                    frames.popleft()
                continue
            except (Exception, asyncio.CancelledError):
                self._fail(stalled=False)
                return
            loop = asyncio.get_running_loop()
            self._sending_since = loop.time()
            self._sender = loop.create_task(
                self._finish(sending, waiting_on), context=self._context
            )
            self._watch()
            return

    async def put(self, frame: str) -> None:
        """Queue ``frame``, first waiting (up to ``timeout``) while the queue is full."""
        while not self.failed and len(self._frames) >= self.limit:
            if self._room is None:
                self._room = asyncio.Event()
            try:
                async with asyncio.timeout(self.timeout):
                    await self._room.wait()
            except TimeoutError:
                self._fail(stalled=True)
        self.offer(frame)

    async def drained(self, timeout: float | None = None) -> None:
        """Wait until every queued frame went out, the socket was given up, or ``timeout``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while (sender := self._sender) is not None and not sender.done():
                    await asyncio.wait({sender})

    def close(self) -> None:
        """Send nothing more; drop what is queued."""
        self.failed = True
        self._frames.clear()
        self._wake()
        self._stop_watching()
        sender = self._sender
        if sender is not None and sender is not asyncio.current_task():
            # A task cancelled before its first step never runs its `finally`.
            self._sender = None
            sender.cancel()

    async def _finish(self, sending: Coroutine[Any, Any, None], waiting_on: Any) -> None:
        frames = self._frames
        clock = asyncio.get_running_loop().time
        try:
            await _resume(sending, waiting_on)
            while frames:
                frames.popleft()
                if self._room is not None and len(frames) < self.limit:
                    self._wake()
                if not frames or self.failed:
                    break
                self._sending_since = clock()
                await self._send(frames[0])
        except asyncio.CancelledError:
            if not self.failed:  # not close(): what the send waited on was cancelled
                self._fail(stalled=False)
        except Exception:
            self._fail(stalled=False)
        finally:
            if self._sender is asyncio.current_task():
                self._sender = None
            self._stop_watching()

    def _watch(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.timeout, self._check)

    def _stop_watching(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        if self._sender is None or self.failed:
            return
        loop = asyncio.get_running_loop()
        waited = loop.time() - self._sending_since
        if waited >= self.timeout:
            self._fail(stalled=True)
        else:
            self._timer = loop.call_later(self.timeout - waited, self._check)

    def _wake(self) -> None:
        room, self._room = self._room, None
        if room is not None:
            room.set()

    def _fail(self, stalled: bool) -> None:
        if self.failed:
            return
        self.close()
        self._on_failure(stalled)


async def _resume(coroutine: Coroutine[Any, Any, None], waiting_on: Any) -> None:
    """Run ``coroutine``, started outside any task and now waiting on ``waiting_on``
    (what it yielded: an asyncio future, or None), to its end, as a task would."""
    try:
        while True:
            if waiting_on is None:  # a bare yield: give the loop one turn
                await asyncio.sleep(0)
            else:
                waiting_on._asyncio_future_blocking = False
                try:
                    await asyncio.wait({waiting_on})
                except asyncio.CancelledError:
                    # As a task would: cancel what it waits on, and raise in it.
                    waiting_on.cancel()
                    try:
                        coroutine.throw(asyncio.CancelledError())
                    except (StopIteration, asyncio.CancelledError):
                        pass
                    else:  # it went on waiting: end it
                        coroutine.close()
                    raise
            waiting_on = coroutine.send(None)
    except StopIteration:
        return
