"""The socket timeout channels_redis's blocking reads need under redis-py 8.

``RedisChannelLayer.receive()`` waits in Redis (``BZPOPMIN``) up to ``brpop_timeout``
(5 s) for a message. redis-py 8 made 5 s the default ``socket_timeout``, so on an idle
channel the client gives up as the server answers: ``receive()`` raises TimeoutError, a
Channels consumer dies, and eventbus's readers log a lost layer and join again
(channels_redis#422). Each host without a timeout of its own gets one a little past the
blocking read, before channels_redis builds a pool from it: idle reads end normally and
a dead server is still noticed. The pub/sub layer polls every 0.1 s and needs nothing.
"""

from __future__ import annotations

import weakref
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

MARGIN_SECONDS = 5.0
"""How much longer than the blocking read the client waits for Redis's answer."""

_Layer = TypeVar("_Layer")
_configured: weakref.WeakSet[Any] = weakref.WeakSet()


def configure(layer: _Layer) -> _Layer:
    """Give ``layer``'s hosts without a ``socket_timeout`` one past its blocking read.

    Acts on ``RedisChannelLayer`` (and subclasses) under redis-py 8 or later, once per
    layer; anything else is returned as it is. The settings' own dicts are not changed.
    """
    if layer in _configured:
        return layer
    _configured.add(layer)
    try:
        from channels_redis.core import RedisChannelLayer
    except ImportError:
        return layer
    if not isinstance(layer, RedisChannelLayer) or redis_major() < 8:
        return layer
    timeout = layer.brpop_timeout + MARGIN_SECONDS
    layer.hosts = [
        host if has_socket_timeout(host) else {**host, "socket_timeout": timeout}
        for host in layer.hosts
    ]
    return layer


def redis_major() -> int:
    import redis

    return int(str(redis.__version__).split(".")[0])


def has_socket_timeout(host: Any) -> bool:
    """Whether a ``hosts`` entry of channels_redis sets ``socket_timeout`` itself."""
    if isinstance(host, str):
        return "socket_timeout" in parse_qs(urlsplit(host).query)
    if isinstance(host, dict):
        return "socket_timeout" in host or has_socket_timeout(host.get("address", ""))
    return False  # a (host, port) pair takes the client's defaults
