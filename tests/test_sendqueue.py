"""Each socket's send queue: frames in order, and a socket that falls behind given up."""

import asyncio
import contextvars

from eventbus.sendqueue import SendQueue

TIMEOUT = 5.0


class Socket:
    """A send() that can be held, like a client that stopped reading."""

    def __init__(self, fail_with: Exception | None = None) -> None:
        self.sent: list[str] = []
        self.open = asyncio.Event()
        self.open.set()
        self.fail_with = fail_with

    async def send(self, frame: str) -> None:
        await self.open.wait()
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append(frame)


def queue_for(socket: Socket, limit: int = 3, timeout: float = 5.0) -> tuple[SendQueue, list[bool]]:
    failures: list[bool] = []
    return SendQueue(
        socket.send, limit=limit, timeout=timeout, on_failure=failures.append
    ), failures


async def test_frames_go_out_in_order_even_when_sends_wait():
    socket = Socket()
    queue, failures = queue_for(socket, limit=10)
    socket.open.clear()
    for n in range(5):
        assert queue.offer(f"f{n}")
    assert socket.sent == []
    await queue.put("f5")
    socket.open.set()
    await asyncio.wait_for(queue.drained(), TIMEOUT)
    assert socket.sent == [f"f{n}" for n in range(6)]
    assert failures == []


async def test_a_full_queue_gives_the_socket_up_at_once():
    socket = Socket()
    queue, failures = queue_for(socket, limit=3)
    socket.open.clear()
    # Three frames are queued, the first of them being sent: the limit.
    assert all(queue.offer(f"f{n}") for n in range(3))
    assert not queue.offer("f3")
    assert failures == [True]
    assert not queue.offer("f4")  # given up: nothing more is queued or reported
    assert failures == [True]
    socket.open.set()
    await asyncio.sleep(0.05)
    assert socket.sent == []
    assert len(queue) == 0


async def test_a_send_that_waits_past_the_timeout_gives_the_socket_up():
    socket = Socket()
    queue, failures = queue_for(socket, timeout=0.1)
    socket.open.clear()
    queue.offer("f0")
    await asyncio.sleep(0.3)
    assert failures == [True]
    assert queue.failed


async def test_slow_sends_each_within_the_timeout_are_not_a_stall():
    """The timeout is per frame: a burst may take longer in all than one send may."""

    class SlowSocket(Socket):
        async def send(self, frame: str) -> None:
            await asyncio.sleep(0.08)
            self.sent.append(frame)

    socket = SlowSocket()
    queue, failures = queue_for(socket, limit=10, timeout=0.2)
    for n in range(6):  # about 0.5 s in all
        queue.offer(f"f{n}")
    await asyncio.wait_for(queue.drained(), TIMEOUT)
    assert failures == []
    assert socket.sent == [f"f{n}" for n in range(6)]


async def test_a_send_that_raises_reports_a_gone_socket():
    socket = Socket(fail_with=OSError("connection reset"))
    queue, failures = queue_for(socket)
    queue.offer("f0")
    await asyncio.wait_for(queue.drained(), TIMEOUT)
    assert failures == [False]
    assert not queue.offer("f1")


async def test_put_waits_for_room_and_gives_up_after_the_timeout():
    socket = Socket()
    queue, failures = queue_for(socket, limit=2, timeout=0.2)
    socket.open.clear()
    for n in range(2):  # one in flight, one waiting: full
        assert queue.offer(f"f{n}")
    waiter = asyncio.create_task(queue.put("f2"))
    await asyncio.sleep(0.05)
    assert not waiter.done()  # waits for room rather than failing
    await asyncio.wait_for(waiter, TIMEOUT)
    assert failures == [True]  # the send never finished: given up, and put returned


async def test_put_proceeds_once_the_client_reads():
    socket = Socket()
    queue, failures = queue_for(socket, limit=2, timeout=5)
    socket.open.clear()
    for n in range(2):
        assert queue.offer(f"f{n}")
    waiter = asyncio.create_task(queue.put("f2"))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    socket.open.set()
    await asyncio.wait_for(waiter, TIMEOUT)
    await asyncio.wait_for(queue.drained(), TIMEOUT)
    assert socket.sent == ["f0", "f1", "f2"]
    assert failures == []


async def test_a_send_that_waits_then_raises_reports_a_gone_socket():
    socket = Socket(fail_with=OSError("connection reset"))
    queue, failures = queue_for(socket)
    socket.open.clear()
    queue.offer("f0")
    await asyncio.sleep(0.05)
    assert failures == []
    socket.open.set()
    await asyncio.wait_for(queue.drained(), TIMEOUT)
    assert failures == [False]


async def test_closing_while_a_send_waits_ends_that_send():
    ended: list[str] = []
    waited_on: list[asyncio.Future[None]] = []

    async def send(frame: str) -> None:
        waited_on.append(asyncio.get_running_loop().create_future())
        try:
            await waited_on[-1]  # never resolved
        finally:
            ended.append(frame)

    queue = SendQueue(send, limit=3, timeout=5, on_failure=lambda stalled: None)
    queue.offer("f0")
    queue.offer("f1")
    await asyncio.sleep(0.01)
    queue.close()
    await asyncio.wait_for(queue.drained(), TIMEOUT)
    await asyncio.sleep(0)
    assert ended == ["f0"]
    assert waited_on[0].cancelled()  # as when a task waiting on it is cancelled
    assert not queue.offer("f2")


async def test_closing_before_the_waiting_send_got_a_turn_does_not_hang_drained():
    socket = Socket()
    queue, _ = queue_for(socket)
    socket.open.clear()
    queue.offer("f0")  # waits: a task takes over, not started yet
    queue.close()
    await asyncio.wait_for(queue.drained(), 1.0)


async def test_drained_gives_up_after_its_timeout():
    socket = Socket()
    queue, failures = queue_for(socket)
    socket.open.clear()
    queue.offer("f0")
    await asyncio.wait_for(queue.drained(timeout=0.05), 1.0)
    assert len(queue) == 1 and failures == []


who = contextvars.ContextVar("who", default="nobody")


async def test_sends_run_in_the_context_the_queue_was_made_in():
    seen: list[str] = []
    socket = Socket()

    async def send(frame: str) -> None:
        seen.append(who.get())
        await socket.send(frame)

    who.set("socket")
    queue = SendQueue(send, limit=3, timeout=5, on_failure=lambda stalled: None)

    async def reader() -> None:  # the fan-out's reader, with a context of its own
        who.set("reader")
        queue.offer("at once")
        socket.open.clear()
        queue.offer("after a wait")
        queue.offer("queued")

    await asyncio.create_task(reader())
    socket.open.set()
    await asyncio.wait_for(queue.drained(), TIMEOUT)
    assert socket.sent == ["at once", "after a wait", "queued"]
    assert seen == ["socket"] * 3


async def test_frames_written_at_once_skip_the_send_and_keep_their_order():
    socket = Socket()
    written: list[str] = []
    room = [True]

    def write(frame: str) -> bool:
        if room[0]:
            written.append(frame)
        return room[0]

    queue = SendQueue(socket.send, limit=10, timeout=TIMEOUT, on_failure=print, write=write)
    assert queue.offer("f0") and queue.offer("f1")
    assert (written, socket.sent) == (["f0", "f1"], [])
    # No room: the frame goes through the send, which waits; later frames queue behind it
    # even once the writer has room again.
    room[0] = False
    socket.open.clear()
    assert queue.offer("f2")
    room[0] = True
    assert queue.offer("f3")
    assert written == ["f0", "f1"]
    socket.open.set()
    await queue.drained(TIMEOUT)
    assert socket.sent == ["f2", "f3"]
    assert queue.offer("f4")
    assert written == ["f0", "f1", "f4"]
