"""Event ids: making new ones (UUIDv7) and reading the ones that come from outside.

Every id that arrives as text (a WebSocket frame, a command-line option, an admin
search) is read by :func:`parse_uuid`, so they all accept and refuse the same forms.
"""

from __future__ import annotations

import random
import threading
import time
from uuid import UUID, SafeUUID

_uuid7_lock = threading.Lock()
_uuid7_last_ms = 0
_uuid7_counter = 0


def uuid7() -> UUID:
    """A UUIDv7 (RFC 9562) that is strictly increasing within this process.

    42 bits after the millisecond timestamp are a counter seeded at random each
    millisecond (method 1 of RFC 9562, section 6.2); the last 32 bits are random.
    Ids need uniqueness, not secrecy, so the fast ``random`` generator (reseeded
    from the OS at start and after ``fork()``) is enough.
    """
    global _uuid7_last_ms, _uuid7_counter
    random_bits = _random_bits(64)
    with _uuid7_lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > _uuid7_last_ms:
            _uuid7_last_ms = now_ms
            _uuid7_counter = random_bits >> 23  # 41 bits: room to count up
        else:
            _uuid7_counter += 1
            if _uuid7_counter >> 42:  # counter exhausted: borrow the next millisecond
                _uuid7_last_ms += 1
                _uuid7_counter = random_bits >> 23
        ms, counter = _uuid7_last_ms, _uuid7_counter
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version
    value |= (counter >> 30) << 64  # rand_a: the counter's top 12 bits
    value |= 0b10 << 62  # variant
    value |= (counter & 0x3FFF_FFFF) << 32
    value |= random_bits & 0xFFFF_FFFF
    # UUID(int=...) re-checks a value built right above; set the slots directly.
    uuid = object.__new__(UUID)
    object.__setattr__(uuid, "int", value)
    object.__setattr__(uuid, "is_safe", SafeUUID.unknown)
    return uuid


_random_bits = random.getrandbits


def parse_uuid(value: object) -> UUID:
    """``value`` as a UUID (a UUID, or text in any form ``uuid.UUID`` reads).

    Raises ``ValueError`` naming the value otherwise; callers turn it into their own error.
    """
    if isinstance(value, UUID):
        return value
    if isinstance(value, str):
        try:
            return UUID(str(value).strip())
        except ValueError:
            pass
    raise ValueError(f"{value!r} is not a valid UUID")
