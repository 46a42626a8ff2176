"""In-process fan-out (one layer channel per process) and each socket's Outbox."""

import asyncio
import contextvars
import logging
from typing import Any

import pytest
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.test import override_settings

from eventbus.fanout import LocalFanout, Outbox, get_fanout
from tests.services import RedisServer

TIMEOUT = 5.0


class Recorder:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    def deliver(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        self.arrived.set()

    async def next(self) -> dict[str, Any]:
        await asyncio.wait_for(self.arrived.wait(), TIMEOUT)
        self.arrived.clear()
        return self.messages[-1]


class Broken:
    def deliver(self, message: dict[str, Any]) -> None:
        raise RuntimeError("broken member")


def message(group: str, n: int = 0) -> dict[str, Any]:
    return {"type": "eventbus.event", "channel": group, "n": n}


# -- LocalFanout ---------------------------------------------------------------------


async def test_many_members_one_layer_membership_and_the_last_leaves_the_group():
    layer = InMemoryChannelLayer()
    fanout = LocalFanout(layer)
    members = [Recorder() for _ in range(3)]
    for member in members:
        await fanout.join("g", member)
    assert list(layer.groups["g"]) == [fanout.channel_name]

    await layer.group_send("g", message("g", 1))
    for member in members:
        assert (await member.next())["n"] == 1

    await fanout.leave("g", members[0])
    await fanout.leave("g", members[1])
    assert list(layer.groups["g"]) == [fanout.channel_name]
    await layer.group_send("g", message("g", 2))
    assert (await members[2].next())["n"] == 2
    assert [m["n"] for m in members[0].messages] == [1]

    await fanout.leave("g", members[2])
    assert "g" not in layer.groups or not layer.groups["g"]
    assert fanout.channel_name is None  # nothing joined: the reader stopped
    assert fanout.groups == set()


async def test_a_member_that_raises_does_not_stop_the_others(caplog):
    fanout = LocalFanout(InMemoryChannelLayer())
    good = Recorder()
    await fanout.join("g", Broken())
    await fanout.join("g", good)
    with caplog.at_level(logging.ERROR, logger="eventbus.fanout"):
        await fanout.layer.group_send("g", message("g", 7))
        assert (await good.next())["n"] == 7
    assert "broken member" in caplog.text
    await fanout.leave("g", good)


async def test_a_failed_join_leaves_nothing_behind():
    class Refusing(InMemoryChannelLayer):
        async def group_add(self, group: str, channel: str) -> None:
            raise ConnectionError("redis is away")

    fanout = LocalFanout(Refusing())
    with pytest.raises(ConnectionError):
        await fanout.join("g", Recorder())
    assert fanout.members("g") == []
    assert fanout.channel_name is None


async def test_get_fanout_is_one_per_layer_and_event_loop():
    with override_settings(
        CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    ):
        layer = get_channel_layer()
        assert get_fanout(layer) is get_fanout(layer)
        assert get_fanout(InMemoryChannelLayer()) is not get_fanout(layer)


@pytest.mark.redis
@pytest.mark.parametrize(
    "backend",
    ["channels_redis.core.RedisChannelLayer", "channels_redis.pubsub.RedisPubSubChannelLayer"],
    ids=["core", "pubsub"],
)
async def test_the_fanout_joins_again_after_redis_restarts(
    backend: str, redis_url: str, redis_server: RedisServer
):
    from django.utils.module_loading import import_string

    layer = import_string(backend)(hosts=[redis_url])
    fanout = LocalFanout(layer)
    fanout.refresh_seconds = 0.2
    member = Recorder()
    await fanout.join("g", member)
    try:
        await asyncio.sleep(0.1)  # pub/sub subscriptions settle
        await layer.group_send("g", message("g", 1))
        assert (await member.next())["n"] == 1

        await asyncio.to_thread(redis_server.restart)  # forgets every group
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        probe = 1
        while not member.messages or member.messages[-1]["n"] == 1:
            assert loop.time() < deadline, "the fan-out did not come back"
            probe += 1
            try:
                await layer.group_send("g", message("g", probe))
                await asyncio.wait_for(member.arrived.wait(), 0.3)
            except (TimeoutError, ConnectionError, OSError):
                continue
            except Exception as exc:  # redis-py's ConnectionError is not an OSError
                if "Connection" not in type(exc).__name__:
                    raise
        assert member.messages[-1]["n"] > 1
    finally:
        await fanout.leave("g", member)
        if hasattr(layer, "flush"):
            await layer.flush()


async def test_the_reader_lives_on_when_joining_again_fails(caplog):
    """After losing the layer, the reader joins again; a refusal must not end it."""

    class Flaky(InMemoryChannelLayer):
        adds = 0
        receives = 0

        async def group_add(self, group: str, channel: str) -> None:
            self.adds += 1
            if self.adds > 1:
                raise RuntimeError("READONLY You can't write against a read only replica")
            await super().group_add(group, channel)

        async def receive(self, channel: str) -> dict[str, Any]:
            self.receives += 1
            if self.receives == 1:
                raise ConnectionError("the server went away")
            return await super().receive(channel)

    fanout = LocalFanout(Flaky())
    member = Recorder()
    await fanout.join("g", member)
    with caplog.at_level(logging.ERROR, logger="eventbus.fanout"):
        await asyncio.sleep(0.3)  # the reader failed, waited, and failed to join again
    assert "READONLY" in caplog.text
    await fanout.layer.group_send("g", message("g", 3))
    assert (await member.next())["n"] == 3
    await fanout.leave("g", member)


@pytest.mark.redis
async def test_a_burst_to_a_busy_process_is_not_cut_at_the_layers_capacity(redis_url: str):
    """One fan-out channel carries all of a process's groups: a relay batch fits."""
    from channels_redis.core import RedisChannelLayer

    from eventbus.layers import group_send_many

    layer = RedisChannelLayer(hosts=[redis_url], capacity=100)
    fanout = LocalFanout(layer)
    member = Recorder()
    await fanout.join("g", member)
    try:
        await group_send_many(layer, [("g", message("g", n)) for n in range(500)])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while len(member.messages) < 500 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert [m["n"] for m in member.messages] == list(range(500))
    finally:
        await fanout.leave("g", member)
        await layer.flush()


# -- Outbox --------------------------------------------------------------------------


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


def outbox_for(socket: Socket, limit: int = 3, timeout: float = 5.0) -> tuple[Outbox, list[bool]]:
    failures: list[bool] = []
    return Outbox(socket.send, limit=limit, timeout=timeout, on_failure=failures.append), failures


async def test_frames_go_out_in_order_even_when_sends_wait():
    socket = Socket()
    outbox, failures = outbox_for(socket, limit=10)
    socket.open.clear()
    for n in range(5):
        assert outbox.offer(f"f{n}")
    assert socket.sent == []
    await outbox.put("f5")
    socket.open.set()
    await asyncio.wait_for(outbox.drained(), TIMEOUT)
    assert socket.sent == [f"f{n}" for n in range(6)]
    assert failures == []


async def test_a_full_queue_gives_the_socket_up_at_once():
    socket = Socket()
    outbox, failures = outbox_for(socket, limit=3)
    socket.open.clear()
    # Three frames are queued, the first of them being sent: the limit.
    assert all(outbox.offer(f"f{n}") for n in range(3))
    assert not outbox.offer("f3")
    assert failures == [True]
    assert not outbox.offer("f4")  # given up: nothing more is queued or reported
    assert failures == [True]
    socket.open.set()
    await asyncio.sleep(0.05)
    assert socket.sent == []
    assert len(outbox) == 0


async def test_a_send_that_waits_past_the_timeout_gives_the_socket_up():
    socket = Socket()
    outbox, failures = outbox_for(socket, timeout=0.1)
    socket.open.clear()
    outbox.offer("f0")
    await asyncio.sleep(0.3)
    assert failures == [True]
    assert outbox.failed


async def test_slow_sends_each_within_the_timeout_are_not_a_stall():
    """The timeout is per frame: a burst may take longer in all than one send may."""

    class SlowSocket(Socket):
        async def send(self, frame: str) -> None:
            await asyncio.sleep(0.08)
            self.sent.append(frame)

    socket = SlowSocket()
    outbox, failures = outbox_for(socket, limit=10, timeout=0.2)
    for n in range(6):  # about 0.5 s in all
        outbox.offer(f"f{n}")
    await asyncio.wait_for(outbox.drained(), TIMEOUT)
    assert failures == []
    assert socket.sent == [f"f{n}" for n in range(6)]


async def test_a_send_that_raises_reports_a_gone_socket():
    socket = Socket(fail_with=OSError("connection reset"))
    outbox, failures = outbox_for(socket)
    outbox.offer("f0")
    await asyncio.wait_for(outbox.drained(), TIMEOUT)
    assert failures == [False]
    assert not outbox.offer("f1")


async def test_put_waits_for_room_and_gives_up_after_the_timeout():
    socket = Socket()
    outbox, failures = outbox_for(socket, limit=2, timeout=0.2)
    socket.open.clear()
    for n in range(2):  # one in flight, one waiting: full
        assert outbox.offer(f"f{n}")
    waiter = asyncio.create_task(outbox.put("f2"))
    await asyncio.sleep(0.05)
    assert not waiter.done()  # waits for room rather than failing
    await asyncio.wait_for(waiter, TIMEOUT)
    assert failures == [True]  # the send never finished: given up, and put returned


async def test_put_proceeds_once_the_client_reads():
    socket = Socket()
    outbox, failures = outbox_for(socket, limit=2, timeout=5)
    socket.open.clear()
    for n in range(2):
        assert outbox.offer(f"f{n}")
    waiter = asyncio.create_task(outbox.put("f2"))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    socket.open.set()
    await asyncio.wait_for(waiter, TIMEOUT)
    await asyncio.wait_for(outbox.drained(), TIMEOUT)
    assert socket.sent == ["f0", "f1", "f2"]
    assert failures == []


async def test_a_send_that_waits_then_raises_reports_a_gone_socket():
    socket = Socket(fail_with=OSError("connection reset"))
    outbox, failures = outbox_for(socket)
    socket.open.clear()
    outbox.offer("f0")
    await asyncio.sleep(0.05)
    assert failures == []
    socket.open.set()
    await asyncio.wait_for(outbox.drained(), TIMEOUT)
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

    outbox = Outbox(send, limit=3, timeout=5, on_failure=lambda stalled: None)
    outbox.offer("f0")
    outbox.offer("f1")
    await asyncio.sleep(0.01)
    outbox.close()
    await asyncio.wait_for(outbox.drained(), TIMEOUT)
    await asyncio.sleep(0)
    assert ended == ["f0"]
    assert waited_on[0].cancelled()  # as when a task waiting on it is cancelled
    assert not outbox.offer("f2")


async def test_closing_before_the_waiting_send_got_a_turn_does_not_hang_drained():
    socket = Socket()
    outbox, _ = outbox_for(socket)
    socket.open.clear()
    outbox.offer("f0")  # waits: a task takes over, not started yet
    outbox.close()
    await asyncio.wait_for(outbox.drained(), 1.0)


async def test_drained_gives_up_after_its_timeout():
    socket = Socket()
    outbox, failures = outbox_for(socket)
    socket.open.clear()
    outbox.offer("f0")
    await asyncio.wait_for(outbox.drained(timeout=0.05), 1.0)
    assert len(outbox) == 1 and failures == []


who = contextvars.ContextVar("who", default="nobody")


async def test_sends_run_in_the_context_the_outbox_was_made_in():
    seen: list[str] = []
    socket = Socket()

    async def send(frame: str) -> None:
        seen.append(who.get())
        await socket.send(frame)

    who.set("socket")
    outbox = Outbox(send, limit=3, timeout=5, on_failure=lambda stalled: None)

    async def reader() -> None:  # the fan-out's reader, with a context of its own
        who.set("reader")
        outbox.offer("at once")
        socket.open.clear()
        outbox.offer("after a wait")
        outbox.offer("queued")

    await asyncio.create_task(reader())
    socket.open.set()
    await asyncio.wait_for(outbox.drained(), TIMEOUT)
    assert socket.sent == ["at once", "after a wait", "queued"]
    assert seen == ["socket"] * 3
