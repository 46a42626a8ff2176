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
from ._asyncio import TaskSet

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
    users: dict[tuple[str, str], Any] = {}
    allowed: dict[tuple[Any, str], bool | None] = {}
    verdicts = []
    for session, user, channels in requests:
        signed_in = is_authenticated(user)
        if signed_in:
            key = (session is None, getattr(session, "session_key", None), user.pk)
            if key not in sessions:
                sessions[key] = session_still_valid(session, user, users)
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


def session_still_valid(
    session: Any, user: Any, users: dict[tuple[str, str], Any] | None = None
) -> bool:
    """Whether ``user`` is still signed in, as ``django.contrib.auth.get_user`` would decide.

    The session is read again from its store (a logout flushes it), the user is loaded
    again through the session's backend (deleted or deactivated: gone), and the
    session's auth hash is compared with the fresh user's, fallback keys included (a
    password change ends other sessions). ``users`` caches loaded users for one recheck.
    A user authenticated some other way (no session in the scope) stays valid while it
    exists and is active.
    """
    from django.conf import settings
    from django.contrib.auth import (
        BACKEND_SESSION_KEY,
        HASH_SESSION_KEY,
        SESSION_KEY,
        get_user_model,
        load_backend,
    )
    from django.utils.crypto import constant_time_compare

    users = {} if users is None else users
    if session is None:
        fresh_user = _load_user(users, "", str(user.pk), get_user_model()._default_manager)
        return fresh_user is not None and getattr(fresh_user, "is_active", True) is not False
    key = session.session_key
    if key is None:
        return False
    engine = import_string(f"{settings.SESSION_ENGINE}.SessionStore")
    fresh = engine(session_key=key)
    backend_path = fresh.get(BACKEND_SESSION_KEY)
    user_id = fresh.get(SESSION_KEY)
    if (
        user_id is None
        or str(user_id) != str(user.pk)
        or backend_path not in settings.AUTHENTICATION_BACKENDS
    ):
        return False
    fresh_user = _load_user(users, backend_path, str(user_id), load_backend(backend_path))
    if fresh_user is None:  # deleted, or refused by the backend (is_active=False)
        return False
    if not hasattr(fresh_user, "get_session_auth_hash"):
        return True
    session_hash = fresh.get(HASH_SESSION_KEY)
    if not session_hash:
        return False
    return constant_time_compare(session_hash, fresh_user.get_session_auth_hash()) or any(
        constant_time_compare(session_hash, fallback)
        for fallback in fresh_user.get_session_auth_fallback_hash()
    )


def _load_user(users: dict[tuple[str, str], Any], backend_path: str, pk: str, source: Any) -> Any:
    """One load per backend and user id in a recheck, however many sessions share them."""
    key = (backend_path, pk)
    if key not in users:
        if backend_path:
            users[key] = source.get_user(pk)
        else:
            users[key] = source.filter(pk=pk).first()
    return users[key]
