"""Event ids: making new ones (UUIDv7) and reading the ones that come from outside.

Every id that arrives as text (a WebSocket frame, a command-line option, an admin
search) is read by :func:`parse_uuid`, so they all accept and refuse the same forms.
"""

from __future__ import annotations

import functools
import random
import re
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


ObjectKey = UUID | int | str
"""The key of a project or an actor: a UUID, an integer or a short string (a primary key)."""

_KEY_TEXT = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_CANONICAL_INT = re.compile(r"(0|-?[1-9][0-9]{0,18})\Z")


def parse_key(value: object) -> ObjectKey:
    """``value`` as a project or actor key, in its one canonical form.

    A UUID stays a UUID and an ``int`` an ``int``; text that reads as a UUID becomes
    that UUID, text of an integer in canonical form (``"42"``, not ``"042"``) becomes
    that ``int``, and any other text of 1 to 64 letters, digits, ``-`` or ``_`` stays
    text. So a key and its text (in the log, in a channel name) turn into each other
    exactly. Raises ``ValueError`` naming the value otherwise (``bool``, ``float``,
    other characters, too long).
    """
    if isinstance(value, UUID):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if -(2**63) <= value < 2**63:
            return value
        raise ValueError(f"{value!r} is not a valid key: integers must fit in 64 bits")
    if isinstance(value, str):
        if _CANONICAL_INT.match(value) and -(2**63) <= int(value) < 2**63:
            return int(value)
        if len(value) in (32, 36):
            try:
                return UUID(value)
            except ValueError:
                pass
        if _KEY_TEXT.match(value):
            return value
    raise ValueError(
        f"{value!r} is not a valid key: use a UUID, an integer, or 1 to 64 letters, digits, "
        "'-' or '_'"
    )


@functools.lru_cache(maxsize=4096)
def parse_key_text(text: str) -> ObjectKey:
    """:func:`parse_key` of a key's text as the log stores it, remembered: a log's keys
    repeat (every event of a project has its key), and readers such as the relay
    parse them row after row."""
    return parse_key(text)


def key_text(key: ObjectKey) -> str:
    """The canonical text of a key (what the log stores): ``parse_key`` reads it back."""
    return str(key)


def key_slug(key: ObjectKey) -> str:
    """The key as it appears in a channel name (a UUID as 32 hex digits)."""
    return key.hex if isinstance(key, UUID) else str(key)
