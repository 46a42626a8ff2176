"""Reconnecting to the channel layer's server: the backoff, what counts as a lost link,
and how a failure that is only a lost link is logged.

Shared by what reads from the layer for a long time (a subscription, a process's
fan-out reader) and by presence, so all wait the same and treat the same errors alike.
"""

from __future__ import annotations

import logging

# After a lost connection, wait 0.1 s, then 0.2 s, ... up to 2 s between attempts.
RETRY_FIRST = 0.1
RETRY_MAX = 2.0


def next_delay(delay: float) -> float:
    return min(delay * 2, RETRY_MAX)


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` means the layer's server is away (try again) rather than a bug."""
    # redis-py's ConnectionError and TimeoutError are not OSErrors; match them by name
    # rather than import an optional dependency.
    return isinstance(exc, OSError) or any(
        cls.__name__ in ("ConnectionError", "TimeoutError") for cls in type(exc).__mro__
    )


def log_layer_error(logger: logging.Logger, exc: BaseException, what: str, *args: object) -> None:
    """Log that ``what`` failed on the layer: a warning with the error when its server is
    away (the caller tries again later, or the entry expires), else the traceback of a
    bug."""
    if is_connection_error(exc):
        logger.warning(f"{what}: %s", *args, exc)
    else:
        logger.error(what, *args, exc_info=exc)
