"""How much one client may use: open sockets, connects and replays in flight per user
(or per IP when anonymous), and frames and subscribes per socket.

The counts are per server process (and event loop): with N processes a user may hold
N times ``WS_MAX_CONNECTIONS_PER_USER`` sockets. That bounds what one client costs one
process, which is what these limits protect; a global cap needs shared state (Redis)
and is left to a reverse proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from .access import is_authenticated
from .metrics import get_metrics

# Idle buckets (full again) are dropped once a process tracks this many clients.
_PRUNE_AT = 1024


class Bucket:
    """A token bucket: ``per_minute`` tokens, refilled continuously, holding ``capacity``
    at most (default: a minute's worth); full at the start."""

    __slots__ = ("capacity", "rate", "tokens", "updated")

    def __init__(self, per_minute: float, capacity: float | None = None) -> None:
        self.capacity = float(per_minute if capacity is None else capacity)
        self.rate = float(per_minute) / 60.0
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def take(self) -> bool:
        """Spend one token if there is one."""
        self._refill()
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def spend(self, tokens: float) -> None:
        """Spend ``tokens`` more, into debt if need be: the bucket refills from below zero."""
        self._refill()
        self.tokens -= tokens

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def full(self) -> bool:
        return self.tokens + (time.monotonic() - self.updated) * self.rate >= self.capacity


def client_key(scope: dict[str, Any], user: Any) -> tuple[str, str]:
    """Whom a socket counts against: its user, or its IP address when anonymous."""
    if is_authenticated(user):
        return ("user", str(user.pk))
    client = scope.get("client") or ("unknown", 0)
    return ("ip", str(client[0]))


class ClientLimits:
    """This process's open sockets and connect buckets, per client key."""

    def __init__(self) -> None:
        self.open: Counter[tuple[str, str]] = Counter()
        self.connects: dict[tuple[str, str], Bucket] = {}
        self.replays: dict[tuple[str, str], Bucket] = {}
        # Held only while someone waits or replays: then it goes by itself.
        self._replays: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    @contextlib.asynccontextmanager
    async def replay_turn(self, key: tuple[str, str]) -> AsyncIterator[None]:
        """One replay at a time per client: a client's replays queue behind each other,
        so however many sockets it opens, it holds at most one of the stream readers'
        threads, and everyone else's reads go on beside it."""
        lock = self._replays.get(key)
        if lock is None:
            lock = self._replays[key] = asyncio.Lock()
        async with lock:
            yield

    def admit(self, key: tuple[str, str], max_open: int, connects_per_minute: float) -> str | None:
        """Count one more socket for ``key``, or say why not (and count nothing).

        Every attempt spends a connect token, refused ones too: a client that keeps
        hammering stays throttled until it slows down.
        """
        bucket = self.connects.get(key)
        if bucket is None or bucket.capacity != connects_per_minute:
            if len(self.connects) >= _PRUNE_AT:
                self._prune()
            bucket = self.connects[key] = Bucket(connects_per_minute)
        if not bucket.take():
            get_metrics().rate_limited("connects")
            return "reconnecting too fast"
        if self.open[key] >= max_open:
            get_metrics().rate_limited("connections")
            return "too many connections"
        self.open[key] += 1
        return None

    def replay_budget(self, key: tuple[str, str], per_minute: float, burst: float) -> Bucket:
        """The events ``key`` may still have replayed (one bucket per client and process)."""
        bucket = self.replays.get(key)
        if bucket is None or (bucket.rate, bucket.capacity) != (per_minute / 60.0, burst):
            if len(self.replays) >= _PRUNE_AT:
                for stale in [k for k, b in self.replays.items() if b.full()]:
                    del self.replays[stale]
            bucket = self.replays[key] = Bucket(per_minute, capacity=burst)
        return bucket

    def release(self, key: tuple[str, str]) -> None:
        self.open[key] -= 1
        if self.open[key] <= 0:
            del self.open[key]

    def _prune(self) -> None:
        for key in [k for k, b in self.connects.items() if b.full() and k not in self.open]:
            del self.connects[key]


_limits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ClientLimits] = (
    weakref.WeakKeyDictionary()
)


def get_client_limits() -> ClientLimits:
    """The running event loop's counts."""
    loop = asyncio.get_running_loop()
    limits = _limits.get(loop)
    if limits is None:
        limits = _limits[loop] = ClientLimits()
    return limits
