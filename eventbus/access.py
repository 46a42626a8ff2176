"""Who may watch which channel: the ``AUTHORIZE`` hook, and rechecking open sockets.

A socket is authorized per channel when it subscribes. While it stays open, a logout
or lost access must still end its stream, so every ``WS_REAUTHORIZE_SECONDS`` the
process rechecks all of its sockets at once: one trip to a worker thread, each
session read once, and the hook called once per distinct user and channel, however
many sockets share them.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from channels.db import database_sync_to_async
from django.utils.module_loading import import_string

from . import conf
from ._tasks import TaskSet

logger = logging.getLogger("eventbus.ws")


class Watched(Protocol):
    """An open socket, as the recheck sees it (the WebSocket consumer)."""

    user: Any
    scope: dict[str, Any]

    def watched_channels(self) -> Sequence[str]: ...

    async def access_changed(self, signed_out: bool, forbidden: Sequence[str]) -> None: ...


def is_authenticated(user: Any) -> bool:
    return bool(user is not None and getattr(user, "is_authenticated", False))


def authorize_hook() -> Callable[[Any, str], bool] | None:
    path = conf.get_settings().AUTHORIZE
    return import_string(path) if path else None


async def may_subscribe(user: Any, channel: str) -> bool:
    """Whether ``user`` may watch ``channel`` now (without a hook: any signed-in user)."""
    hook = authorize_hook()
    if hook is None:
        return is_authenticated(user)
    return bool(await database_sync_to_async(hook)(user, channel))


@dataclass(frozen=True)
class Verdict:
    signed_out: bool = False
    forbidden: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return self.signed_out or bool(self.forbidden)


class AccessWatch:
    """Rechecks this process's (and event loop's) open sockets, all together."""

    def __init__(self) -> None:
        self._sockets: dict[Watched, None] = {}
        self._task: asyncio.Task[None] | None = None
        self._telling = TaskSet()

    def add(self, socket: Watched) -> None:
        self._sockets[socket] = None
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    def remove(self, socket: Watched) -> None:
        self._sockets.pop(socket, None)

    async def _run(self) -> None:
        while self._sockets:
            await asyncio.sleep(conf.get_settings().WS_REAUTHORIZE_SECONDS)
            try:
                await self.check_now()
            except Exception:
                logger.exception("Rechecking WebSocket access failed; trying again later")

    async def check_now(self) -> None:
        """Recheck every socket; tell those whose access changed."""
        sockets = list(self._sockets)
        requests = [
            (socket.scope.get("session"), socket.user, tuple(socket.watched_channels()))
            for socket in sockets
        ]
        verdicts = await database_sync_to_async(_verdicts)(requests, authorize_hook())
        for socket, verdict in zip(sockets, verdicts, strict=True):
            if verdict.changed and socket in self._sockets:
                # A task each: telling one socket may wait on its sends.
                self._telling.start(socket.access_changed(verdict.signed_out, verdict.forbidden))


_watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AccessWatch] = (
    weakref.WeakKeyDictionary()
)


def get_access_watch() -> AccessWatch:
    """The running event loop's watch."""
    loop = asyncio.get_running_loop()
    watch = _watches.get(loop)
    if watch is None:
        watch = _watches[loop] = AccessWatch()
    return watch


def _verdicts(
    requests: list[tuple[Any, Any, tuple[str, ...]]],
    hook: Callable[[Any, str], bool] | None,
) -> list[Verdict]:
    sessions: dict[tuple[bool, str | None, Any], bool] = {}
    allowed: dict[tuple[Any, str], bool | None] = {}
    verdicts = []
    for session, user, channels in requests:
        signed_in = is_authenticated(user)
        if signed_in:
            key = (session is None, getattr(session, "session_key", None), user.pk)
            if key not in sessions:
                sessions[key] = session_still_valid(session, user)
            if not sessions[key]:
                verdicts.append(Verdict(signed_out=True))
                continue
        if hook is None:
            verdicts.append(Verdict())
            continue
        forbidden = []
        for channel in channels:
            access = (user.pk if signed_in else None, channel)
            if access not in allowed:
                allowed[access] = _ask(hook, user, channel)
            if allowed[access] is False:
                forbidden.append(channel)
        verdicts.append(Verdict(forbidden=tuple(forbidden)))
    return verdicts


def _ask(hook: Callable[[Any, str], bool], user: Any, channel: str) -> bool | None:
    # An error is not a verdict: log it, change nothing, and ask again next time.
    try:
        return bool(hook(user, channel))
    except Exception:
        logger.exception("The AUTHORIZE hook failed for channel %s", channel)
        return None


def session_still_valid(session: Any, user: Any) -> bool:
    """Re-read the session from its store: a logout flushes it.

    A user authenticated some other way (no session in the scope) stays valid.
    """
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.utils.crypto import constant_time_compare

    if session is None:
        return True
    key = session.session_key
    if key is None:
        return False
    engine = import_string(f"{settings.SESSION_ENGINE}.SessionStore")
    fresh = engine(session_key=key)
    if str(fresh.get(SESSION_KEY)) != str(user.pk) or BACKEND_SESSION_KEY not in fresh:
        return False
    session_hash = fresh.get(HASH_SESSION_KEY)
    return bool(session_hash) and constant_time_compare(session_hash, user.get_session_auth_hash())
