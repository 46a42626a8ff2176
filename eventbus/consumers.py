"""The WebSocket consumer: subscribe to channels, resume from the log, authorize per channel.

The protocol is documented in docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import functools
import json
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from . import conf
from .access import get_access_watch, is_authenticated, may_subscribe
from .bus import get_event_bus, public_json, validate_channel
from .exceptions import InvalidChannelError
from .fanout import Outbox, get_fanout
from .models import EVENT_COLUMNS, EventRecord, event_from_columns

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
    # Live events that arrived while the subscription was being set up (None: since then).
    held: list[dict[str, Any]] | None = None
    overflowed: bool = False

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
    """Streams catalog events to a browser.

    The consumer has no channel-layer channel of its own: the process joins each
    Channels group once and hands its events to the sockets that subscribed
    (``eventbus.fanout``). Every frame goes out through the socket's :class:`Outbox`,
    in order, so a slow socket never holds up the others.
    """

    channel_layer_alias = None
    subscriptions: dict[str, _ChannelState]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Also when a handler raised: never leave a dead socket in the groups.
            await self._leave_all()

    async def connect(self) -> None:
        self.subscriptions = {}
        self.errors = 0
        self.user = self.scope.get("user")
        self.settings = conf.get_settings()
        self.fanout = get_fanout(get_event_bus().layer)
        self.outbox = Outbox(
            self._send_now,
            limit=self.settings.WS_SEND_QUEUE,
            timeout=self.settings.WS_SEND_TIMEOUT,
            on_failure=self._outbox_failed,
        )
        self._side_tasks: set[asyncio.Task[None]] = set()
        await self.accept()
        if self.settings.AUTHORIZE is None and not is_authenticated(self.user):
            await self.close(code=CLOSE_UNAUTHENTICATED, reason="sign in first")
            return
        get_access_watch().add(self)

    async def disconnect(self, code: int) -> None:
        await self._leave_all()

    async def _leave_all(self, keep_queued: bool = False) -> None:
        """Leave every group and the recheck; drop what is queued unless ``keep_queued``."""
        if not hasattr(self, "fanout"):  # never connected
            return
        get_access_watch().remove(self)
        if not keep_queued:
            self.outbox.close()
        channels = list(self.subscriptions)
        self.subscriptions.clear()
        for channel in channels:
            await self.fanout.leave(channel, self)

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
        if not await may_subscribe(self.user, channel):
            raise _FrameError("forbidden", f"You may not subscribe to {channel}.")
        # Live events are held back until the replay is out: the client sees
        # `subscribed`, the missed events, then live ones, each once.
        state = _ChannelState(tuple(patterns) if patterns is not None else None, held=[])
        if channel in self.subscriptions:
            state.recent = self.subscriptions[channel].recent
        self.subscriptions[channel] = state
        await self.fanout.join(channel, self)
        if self.subscriptions.get(channel) is not state or self.outbox.failed:
            # Left while joining (access revoked, socket given up): do not stay in.
            await self.fanout.leave(channel, self)
            return
        replay: list[tuple[str, str, str]] = []
        reset: str | None = None
        if since is not None:
            replay, reset = await database_sync_to_async(_load_replay)(
                channel, since, state, self.settings.RESUME_MAX_EVENTS
            )
        if state.overflowed:
            replay, reset = [], "too_many_missed"
        await self._send_frame({"type": "subscribed", "channel": channel, "replayed": len(replay)})
        if reset is not None:
            await self._send_frame({"type": "reset", "channel": channel, "reason": reset})
        keep = self.settings.RESUME_MAX_EVENTS * 2
        for event_id, _event_type, raw in replay:
            state.first_time(event_id, keep)
            await self._send_text(_event_frame(channel, raw))
        if state.overflowed and reset is None:  # it overflowed while the replay went out
            await self._send_frame(
                {"type": "reset", "channel": channel, "reason": "too_many_missed"}
            )
        # From here to the end nothing waits, so no live event slips in between.
        held, state.held = state.held or [], None
        if not state.overflowed:  # else the client was told to reset: it reloads
            for message in held:
                self.deliver(message)

    async def _unsubscribe(self, data: dict[str, Any]) -> None:
        channel = _required_channel(data)
        if channel not in self.subscriptions:
            raise _FrameError("not_subscribed", f"This connection is not subscribed to {channel}.")
        await self._leave(channel, "requested")

    # -- events from the fan-out -----------------------------------------------

    def deliver(self, message: dict[str, Any]) -> None:
        channel = message["channel"]
        state = self.subscriptions.get(channel)
        if state is None or not state.wants(message["event_type"]):
            return
        if state.held is not None:
            if len(state.held) < self.settings.RESUME_MAX_EVENTS:
                state.held.append(message)
            else:
                state.overflowed = True
            return
        if state.first_time(message["id"], self.settings.RESUME_MAX_EVENTS * 2):
            self.outbox.offer(_event_frame(channel, message["event"]))

    def _outbox_failed(self, stalled: bool) -> None:
        task = asyncio.get_running_loop().create_task(self._give_up(stalled))
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _give_up(self, stalled: bool) -> None:
        # Leave the groups first: the close handshake cannot finish while it does not read.
        await self._leave_all()
        if stalled:
            # It reconnects with `since`, and the event log fills the gap.
            logger.warning("Closing a WebSocket of %s: the client stopped reading", self.user)
            with contextlib.suppress(Exception):
                await self.close(code=CLOSE_TOO_SLOW)

    # -- access that ends while the socket is open -------------------------------

    def watched_channels(self) -> list[str]:
        return list(self.subscriptions)

    async def access_changed(self, signed_out: bool, forbidden: Sequence[str]) -> None:
        if signed_out:
            # Nothing more for a signed-out user, not even what is queued.
            await self._leave_all()
            with contextlib.suppress(Exception):
                await self.close(code=CLOSE_UNAUTHENTICATED, reason="signed out")
            return
        for channel in forbidden:
            if channel in self.subscriptions:
                await self._leave(channel, "forbidden")

    # -- helpers ---------------------------------------------------------------

    async def _send_now(self, text: str) -> None:
        await self.send(text_data=text)

    async def _send_text(self, text: str) -> None:
        await self.outbox.put(text)

    async def _send_frame(self, frame: dict[str, Any]) -> None:
        await self._send_text(json.dumps(frame, separators=(",", ":")))

    async def _close_after_sending(self, code: int, reason: str) -> None:
        # No more events; what is queued (the last error frame) goes out first, if the
        # client takes it within WS_SEND_TIMEOUT.
        await self._leave_all(keep_queued=True)
        await self.outbox.drained(self.settings.WS_SEND_TIMEOUT)
        self.outbox.close()
        await self.close(code=code, reason=reason)

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
            await self._close_after_sending(CLOSE_POLICY_VIOLATION, "too many bad frames")

    async def _leave(self, channel: str, reason: str) -> None:
        self.subscriptions.pop(channel, None)
        await self.fanout.leave(channel, self)
        await self._send_frame({"type": "unsubscribed", "channel": channel, "reason": reason})


@functools.lru_cache(maxsize=16)
def _event_frame(channel: str, raw_event: str) -> str:
    # The event is JSON already: splice it in rather than parse and dump it again. The
    # fan-out asks once per socket for the same event: build the frame once, and let
    # every socket's queue share it.
    return f'{{"type":"event","channel":{json.dumps(channel)},"event":{raw_event}}}'


def _required_channel(data: dict[str, Any]) -> str:
    if "channel" not in data or data["channel"] is None:
        raise _FrameError("missing_field", "'channel' is required.")
    try:
        return validate_channel(data["channel"])
    except InvalidChannelError as exc:
        raise _FrameError("invalid_channel", str(exc)) from None


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
    for row in rows.values_list(*EVENT_COLUMNS).iterator(chunk_size=500):
        event_type = row[1]
        if not state.wants(event_type):
            continue
        try:
            event = event_from_columns(*row)
        except Exception:  # a corrupted row: the relay marks it; skip it here
            continue
        if channel not in bus.channels_for(event):
            continue
        if len(found) >= cap:
            return [], "too_many_missed"
        found.append((str(event.id), event_type, public_json(event)))
    return found, None


def _uuid_or_none(text: str) -> UUID | None:
    try:
        return UUID(text)
    except ValueError:
        return None
