"""Per-client limits: one replay at a time per client, beside everyone else's."""

import asyncio
import threading
from typing import Any

import pytest
from django.test import override_settings

from eventbus import consumers
from eventbus.limits import Bucket, ClientLimits
from tests.test_consumers import (
    CHANNEL,
    PROJECT,
    SETTINGS,
    Client,
    member,
    publish_order,
    subscribed,
)
from tests.testapp.models import Membership

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.db_heavy]


async def test_one_clients_replays_take_turns_while_others_run_beside_them():
    limits = ClientLimits()
    running: list[str] = []
    overlaps: list[tuple[str, ...]] = []

    async def replay(key: tuple[str, str], name: str) -> None:
        async with limits.replay_turn(key):
            running.append(name)
            overlaps.append(tuple(running))
            await asyncio.sleep(0.05)
            running.remove(name)

    await asyncio.gather(
        replay(("user", "1"), "a1"), replay(("user", "1"), "a2"), replay(("user", "2"), "b")
    )
    assert ("a1", "a2") not in overlaps and ("a2", "a1") not in overlaps
    assert any(set(pair) == {"a1", "b"} or set(pair) == {"a2", "b"} for pair in overlaps)
    assert len(limits._replays) == 0  # nothing kept once nobody replays


def test_a_bucket_refills_over_time():
    bucket = Bucket(per_minute=60)
    assert all(bucket.take() for _ in range(60))
    assert not bucket.take()
    bucket.updated -= 2  # two seconds later: two tokens
    assert bucket.take() and bucket.take() and not bucket.take()


@override_settings(EVENTBUS=SETTINGS)
async def test_a_user_replaying_from_many_sockets_does_not_hold_up_another_users_replay(
    member, django_user_model, monkeypatch
):
    """Issue 12, item 4: one user's replays from four sockets (each stuck here until the
    test lets it go) run one at a time, so they hold one of the stream readers' threads;
    another member's replay runs beside them. Without the per-client turn the four take
    every thread and the other member waits behind them."""
    other = await asyncio.to_thread(lambda: django_user_model.objects.create(username="other"))
    await asyncio.to_thread(lambda: Membership.objects.create(user=other, project_id=PROJECT))
    await publish_order(1)
    original = consumers.load_replay
    stuck = threading.Event()
    entered: list[str] = []
    bystander_came = threading.Event()

    def load(*args: Any) -> Any:
        entered.append(threading.current_thread().name)
        if not bystander_came.is_set():  # the abuser's, which got a thread first
            stuck.wait(10)
        return original(*args)

    monkeypatch.setattr(consumers, "load_replay", load)
    abusers = [Client(member) for _ in range(4)]
    for client in abusers:
        await client.__aenter__()
    try:
        for client in abusers:
            await client.send({"action": "subscribe", "channel": CHANNEL, "position": 0})
        await asyncio.sleep(0.3)
        assert len(entered) == 1  # the other three wait for their turn, off the threads
        bystander_came.set()
        async with Client(other) as bystander:
            answer = await bystander.subscribe(position=0)
            assert answer == {**answer, "type": "subscribed", "replayed": 1}
        stuck.set()
        for client in abusers:
            assert (await client.recv(timeout=10))["type"] == "subscribed"
    finally:
        stuck.set()
        for client in abusers:
            await client.__aexit__()


__all__ = ["member"]  # the fixture, shared with test_consumers


@override_settings(EVENTBUS={**SETTINGS, "RESUME_MAX_EVENTS": 5, "WS_REPLAY_EVENTS_PER_MINUTE": 6})
async def test_a_client_that_keeps_replaying_gets_a_reset_instead_of_more_replays(member):
    """Past its replay budget (a burst of two full replays, then the per-minute rate) a
    client's resume is answered with a reset at the head: it reloads, costing no replay."""
    for n in range(5):
        await publish_order(n)
    async with Client(member) as client:
        for _ in range(2):  # the burst: two replays of all five
            assert (await client.subscribe(position=0))["replayed"] == 5
            for _ in range(5):
                assert (await client.recv())["type"] == "event"
        assert await client.subscribe(position=0) == subscribed(position=5)
        answer = await client.recv()
        assert (answer["type"], answer["reason"], answer["position"]) == (
            "reset",
            "replay_limited",
            5,
        )
        assert await client.nothing()
