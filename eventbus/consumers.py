"""The WebSocket consumer: subscribe to channels, resume from the log, authorize per channel.

The protocol is documented in docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import logging
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.utils.module_loading import import_string

from . import conf
from .bus import MESSAGE_TYPE, get_event_bus, public_json, validate_channel
from .exceptions import InvalidChannelError
from .models import EventRecord

logger = logging.getLogger("eventbus.ws")

CLOSE_POLICY_VIOLATION = 1008
CLOSE_UNAUTHENTICATED = 4401
CLOSE_TOO_SLOW = 4408

_MAX_PATTERNS = 50
_ACTIONS = ("subscribe", "unsubscribe", "ping")


@dataclass
class _ChannelState:
    patterns: tuple[str, ...] | None
    # Ids already sent on this channel, so a replayed event is not sent again live.
    recent: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def wants(self, event_type: str) -> bool:
        return self.patterns is None or any(
            fnmatch.fnmatchcase(event_type, p) for p in self.patterns
        )

    def first_time(self, event_id: str, keep: int) -> bool:
        if event_id in self.recent:
            return False
        self.recent[event_id] = None
        if len(self.recent) > keep:
            self.recent.popitem(last=False)
        return True


class _FrameError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class EventStreamConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    """Streams catalog events to a browser, one Channels group per subscribed channel."""

    subscriptions: dict[str, _ChannelState]

    async def connect(self) -> None:
        self.subscriptions = {}
        self.errors = 0
        self.user = self.scope.get("user")
        self._reauthorize_task: asyncio.Task[None] | None = None
        self.settings = conf.get_settings()
        await self.accept()
        if self.settings.AUTHORIZE is None and not _is_authenticated(self.user):
            await self.close(code=CLOSE_UNAUTHENTICATED, reason="sign in first")
            return
        self._reauthorize_task = asyncio.create_task(self._reauthorize_loop())

    async def disconnect(self, code: int) -> None:
        task = self._reauthorize_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        layer = self.channel_layer
        for channel in list(getattr(self, "subscriptions", {})):
            await layer.group_discard(channel, self.channel_name)
        self.subscriptions = {}

    # -- client frames -------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        action: str | None = None
        channel: str | None = None
        try:
            if text_data is None:
                raise _FrameError("binary_not_supported", "Send JSON text frames, not binary.")
            if len(text_data.encode()) > self.settings.WS_MAX_FRAME_BYTES:
                raise _FrameError(
                    "frame_too_large",
                    f"Frames are limited to {self.settings.WS_MAX_FRAME_BYTES} bytes.",
                )
            try:
                data = json.loads(text_data)
            except ValueError:
                raise _FrameError("invalid_json", "The frame is not valid JSON.") from None
            if not isinstance(data, dict):
                raise _FrameError("invalid_json", "The frame must be a JSON object.")
            action = data.get("action") if isinstance(data.get("action"), str) else None
            raw_channel = data.get("channel")
            channel = raw_channel if isinstance(raw_channel, str) else None
            if action == "ping":
                await self._send_frame({"type": "pong"})
            elif action == "subscribe":
                await self._subscribe(data)
            elif action == "unsubscribe":
                await self._unsubscribe(data)
            else:
                raise _FrameError(
                    "unknown_action", f"'action' must be one of {', '.join(_ACTIONS)}."
                )
        except _FrameError as exc:
            await self._error(exc.code, str(exc), action, channel)

    async def _subscribe(self, data: dict[str, Any]) -> None:
        channel = _required_channel(data)
        since = data.get("since")
        if since is not None:
            try:
                since = str(UUID(str(since)))
            except ValueError:
                raise _FrameError("invalid_field", "'since' must be an event id or null.") from None
        patterns = data.get("types")
        if patterns is not None and not (
            isinstance(patterns, list)
            and len(patterns) <= _MAX_PATTERNS
            and all(isinstance(p, str) and 0 < len(p) <= 200 for p in patterns)
        ):
            raise _FrameError(
                "invalid_field",
                f"'types' must be a list of at most {_MAX_PATTERNS} type patterns, or null.",
            )
        if (
            channel not in self.subscriptions
            and len(self.subscriptions) >= self.settings.WS_MAX_SUBSCRIPTIONS
        ):
            raise _FrameError(
                "too_many_subscriptions",
                f"A connection may subscribe to {self.settings.WS_MAX_SUBSCRIPTIONS} channels.",
            )
        if not await self._authorized(channel):
            raise _FrameError("forbidden", f"You may not subscribe to {channel}.")
        state = _ChannelState(tuple(patterns) if patterns is not None else None)
        if channel in self.subscriptions:
            state.recent = self.subscriptions[channel].recent
        self.subscriptions[channel] = state
        await self.channel_layer.group_add(channel, self.channel_name)
        replay: list[tuple[str, str, str]] = []
        reset: str | None = None
        if since is not None:
            replay, reset = await database_sync_to_async(_load_replay)(
                channel, since, state, self.settings.RESUME_MAX_EVENTS
            )
        await self._send_frame({"type": "subscribed", "channel": channel, "replayed": len(replay)})
        if reset is not None:
            await self._send_frame({"type": "reset", "channel": channel, "reason": reset})
        keep = self.settings.RESUME_MAX_EVENTS * 2
        for event_id, _event_type, raw in replay:
            state.first_time(event_id, keep)
            await self._send_event(channel, raw)

    async def _unsubscribe(self, data: dict[str, Any]) -> None:
        channel = _required_channel(data)
        if channel not in self.subscriptions:
            raise _FrameError("not_subscribed", f"This connection is not subscribed to {channel}.")
        await self._leave(channel, "requested")

    # -- events from the channel layer ----------------------------------------

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels closes stale database connections before every handler, through a
        # thread hop. Live events never touch the database, and on a fan-out to many
        # sockets that hop was the largest cost, so they skip it.
        if message.get("type") == MESSAGE_TYPE:
            await self.eventbus_event(message)
        else:
            await super().dispatch(message)

    async def eventbus_event(self, message: dict[str, Any]) -> None:
        channel = message["channel"]
        state = self.subscriptions.get(channel)
        if state is None or not state.wants(message["event_type"]):
            return
        if not state.first_time(message["id"], self.settings.RESUME_MAX_EVENTS * 2):
            return
        await self._send_event(channel, message["event"])

    # -- helpers ---------------------------------------------------------------

    async def _send_event(self, channel: str, raw_event: str) -> None:
        # The event is JSON already: splice it in rather than parse and dump it again.
        await self._send_text(
            f'{{"type":"event","channel":{json.dumps(channel)},"event":{raw_event}}}'
        )

    async def _send_frame(self, frame: dict[str, Any]) -> None:
        await self._send_text(json.dumps(frame, separators=(",", ":")))

    async def _send_text(self, text: str) -> None:
        try:
            # A timeout scope, not wait_for(): no extra task per frame on the fan-out path.
            async with asyncio.timeout(self.settings.WS_SEND_TIMEOUT):
                await self.send(text_data=text)
        except TimeoutError:
            # The client stopped reading: drop it rather than buffer without bound.
            # It reconnects with `since`, and the event log fills the gap. Leave the
            # groups first: the close handshake cannot finish while it does not read.
            logger.warning("Closing WebSocket %s: the client stopped reading", self.channel_name)
            await self.disconnect(CLOSE_TOO_SLOW)
            await self.close(code=CLOSE_TOO_SLOW)
            raise StopConsumer from None
        except Exception:
            # The socket went away under the send (the server raises ClientDisconnected,
            # an OSError): ending here would skip disconnect() and leave us in the groups.
            await self.disconnect(CLOSE_TOO_SLOW)
            raise StopConsumer from None

    async def _error(
        self, code: str, message: str, action: str | None, channel: str | None
    ) -> None:
        self.errors += 1
        await self._send_frame(
            {
                "type": "error",
                "code": code,
                "message": message,
                "action": action,
                "channel": channel,
            }
        )
        if self.errors >= self.settings.WS_MAX_ERRORS:
            await self.close(code=CLOSE_POLICY_VIOLATION, reason="too many bad frames")

    async def _leave(self, channel: str, reason: str) -> None:
        self.subscriptions.pop(channel, None)
        await self.channel_layer.group_discard(channel, self.channel_name)
        await self._send_frame({"type": "unsubscribed", "channel": channel, "reason": reason})

    async def _authorized(self, channel: str) -> bool:
        hook = _hook(self.settings.AUTHORIZE)
        if hook is None:
            return _is_authenticated(self.user)
        return bool(await database_sync_to_async(hook)(self.user, channel))

    async def _reauthorize_loop(self) -> None:
        """Notice logouts and lost access while the socket stays open."""
        interval = self.settings.WS_REAUTHORIZE_SECONDS
        # A random first wait spreads the checks of sockets opened together; after it,
        # every check is at most `interval` after the previous one.
        wait = random.uniform(0, interval)
        with contextlib.suppress(asyncio.CancelledError, StopConsumer):
            while True:
                await asyncio.sleep(wait)
                wait = interval
                if _is_authenticated(self.user) and not await database_sync_to_async(
                    _session_still_valid
                )(self.scope, self.user):
                    await self.close(code=CLOSE_UNAUTHENTICATED, reason="signed out")
                    return
                for channel in list(self.subscriptions):
                    if not await self._authorized(channel):
                        await self._leave(channel, "forbidden")


def _required_channel(data: dict[str, Any]) -> str:
    if "channel" not in data or data["channel"] is None:
        raise _FrameError("missing_field", "'channel' is required.")
    try:
        return validate_channel(data["channel"])
    except InvalidChannelError as exc:
        raise _FrameError("invalid_channel", str(exc)) from None


def _is_authenticated(user: Any) -> bool:
    return bool(user is not None and getattr(user, "is_authenticated", False))


def _hook(path: str | None) -> Callable[[Any, str], bool] | None:
    return import_string(path) if path else None


def _session_still_valid(scope: dict[str, Any], user: Any) -> bool:
    """Re-read the session from its store: a logout flushes it.

    A user authenticated some other way (no session in the scope) stays valid.
    """
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.utils.crypto import constant_time_compare

    session = scope.get("session")
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


def _load_replay(
    channel: str, since: str, state: _ChannelState, cap: int
) -> tuple[list[tuple[str, str, str]], str | None]:
    """Events of ``channel`` committed after ``since``, in commit order; or a reset reason."""
    anchor = EventRecord.objects.filter(id=since).values_list("sequence", flat=True).first()
    if anchor is None:
        return [], "since_unknown"
    bus = get_event_bus()
    rows = EventRecord.objects.filter(sequence__gt=anchor).order_by("sequence")
    kind, _, ident = channel.partition(".")[2].partition(".")
    if kind == "project":
        rows = rows.filter(project_id=_uuid_or_none(ident))
    found: list[tuple[str, str, str]] = []
    for row in rows.iterator(chunk_size=500):
        try:
            event = row.to_event()
        except Exception:  # a corrupted row: the relay marks it; skip it here
            continue
        if channel not in bus.channels_for(event) or not state.wants(row.type):
            continue
        if len(found) >= cap:
            return [], "too_many_missed"
        found.append((str(event.id), row.type, public_json(event)))
    return found, None


def _uuid_or_none(text: str) -> UUID | None:
    try:
        return UUID(text)
    except ValueError:
        return None
