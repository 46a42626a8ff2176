"""One socket's send queue: frames in order, sent by at most one task at a time.

It never makes the fan-out wait: a socket that falls behind is given up instead
(closed with 4408 by the consumer), so one slow client cannot hold up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any


class SendQueue:
    """One socket's frames in order, sent by at most one task at a time.

    :meth:`offer` never waits, so that one slow socket cannot hold up the fan-out to
    the others; a socket with ``limit`` frames queued (the one being sent included),
    or whose send has not finished after ``timeout`` seconds, is given up:
    ``on_failure(stalled=True)``. A send that raises (the socket went away) calls
    ``on_failure(stalled=False)``. Either way nothing more is sent.

    Most sends finish at once (the server's buffer has room), so there is no timer per
    frame: one is armed only while a send waits on the client. ``write``, when given,
    is tried first: it writes a frame at once and returns True, or returns False and
    the frame goes through ``send`` (``eventbus._uvicorn``).
    """

    def __init__(
        self,
        send: Callable[[str], Coroutine[Any, Any, None]],
        *,
        limit: int,
        timeout: float,
        on_failure: Callable[[bool], None],
        write: Callable[[str], bool] | None = None,
    ) -> None:
        self._send = send
        self._write = write
        self.limit = limit
        self.timeout = timeout
        self._on_failure = on_failure
        # A list, not a deque: an empty deque takes 760 bytes on every idle socket, an
        # empty list 56; what waits here is short (``limit``), so popping its head is cheap.
        self._frames: list[str] = []
        self._sender: asyncio.Task[None] | None = None
        self._room: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._sending_since = 0.0
        # Sends run in the context of the code that made the queue (the socket's
        # consumer), not in that of whoever offers a frame (the fan-out's reader).
        self._context = contextvars.copy_context()
        self.failed = False

    def __len__(self) -> int:
        return len(self._frames)

    def offer(self, frame: str) -> bool:
        """Queue ``frame`` without waiting; False (and the socket given up) when full."""
        if self.failed:
            return False
        frames = self._frames
        if not frames and self._sender is None and self._write is not None and self._write(frame):
            return True  # the usual case in a fan-out: nothing queued, written at once
        if len(frames) >= self.limit:
            self._fail(stalled=True)
            return False
        frames.append(frame)
        if self._sender is None:
            self._send_now()
        return True

    def _send_now(self) -> None:
        """Send queued frames right here, until one has to wait: a task takes that over.

        Most sends finish at once (the server's buffer has room), so most cost no task:
        with a thousand sockets, a task per send was a tenth of the fan-out's time.
        """
        frames, write = self._frames, self._write
        while frames and not self.failed:
            if write is not None and write(frames[0]):
                del frames[0]
                continue
            sending = self._send(frames[0])
            try:
                waiting_on = self._context.run(sending.send, None)
            except StopIteration:
                if frames:  # unless the send closed the queue
                    del frames[0]
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
                del frames[0]
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
