"""The WebSocket consumer: the protocol of docs/protocol.md, one socket at a time.

The protocol is documented in docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import inspect
import json
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.sessions import InstanceSessionWrapper

from . import conf
from ._asyncio import TaskSet
from ._uvicorn import frame_writer
from .access import get_access_watch, is_authenticated, may_subscribe
from .bus import get_event_bus
from .channel_names import validate_channel
from .cursor import RESET_TYPE
from .exceptions import InvalidChannelError
from .fanout import get_fanout
from .ids import parse_uuid
from .limits import Bucket, client_key, get_client_limits
from .metrics import get_metrics
from .presence import (
    get_presence_tracker,
    info_for,
    new_connection_id,
    read_presence,
    user_key,
)
from .reconnect import is_connection_error
from .replay import Replay, load_replay
from .sendqueue import SendQueue
from .streams import aread
from .wire import event_frame, frame_json, presence_frame

logger = logging.getLogger("eventbus.ws")

# Application codes (4000-4999): daphne's autobahn refuses to send 1008 (and 1xxx but 1000).
CLOSE_TOO_MANY_ERRORS = 4008
CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOTHING_ALLOWED = 4403
CLOSE_TOO_SLOW = 4408
CLOSE_NEVER_SUBSCRIBED = 4410
CLOSE_TOO_MANY = 4429

_MAX_PATTERNS = 50
# The protocol nests two levels; "[[[[…" fits thousands in a few KiB, and json recurses
# per level (RecursionError near 1,000, where exactly depends on the interpreter).
_MAX_DEPTH = 16
_ACTIONS = ("subscribe", "unsubscribe", "ping")


class _NoPresence(Exception):
    """Presence frames were asked for, and cannot be given (the code and message say why)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _ChannelState:
    patterns: tuple[str, ...] | None
    # Where this socket stands on the channel's stream: the last position it sent (or
    # passed over for its type filter). Live events at or before it are repeats.
    position: int = 0
    # Live messages that arrived while the subscription was being set up (None: since then).
    held: list[dict[str, Any]] | None = None
    overflowed: bool = False
    # Presence: this socket's connection id on the channel, when it is present there.
    presence_connection: str | None = None
    # Only for a socket that asked for presence frames: the last version sent per user
    # key, and the snapshot's version (changes at or before it are in the snapshot).
    presence_seen: dict[str, int] | None = None
    presence_floor: int = 0
    # Presence changes that arrived before the snapshot went out (None: since then).
    presence_held: list[dict[str, Any]] | None = None

    def wants(self, event_type: str) -> bool:
        return self.patterns is None or any(
            fnmatch.fnmatchcase(event_type, p) for p in self.patterns
        )


class _FrameError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class EventStreamConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    """Streams catalog events to a browser.

    The consumer has no channel-layer channel of its own: the process joins each
    Channels group once and hands its events to the sockets that subscribed
    (``eventbus.fanout``). Every frame goes out through the socket's
    :class:`~eventbus.sendqueue.SendQueue`, in order, so a slow socket never holds up
    the others.
    """

    channel_layer_alias = None
    subscriptions: dict[str, _ChannelState]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Channels' ``AsyncConsumer.__call__`` for a consumer without a layer channel of
        its own: each message is received, then dispatched, in this task. Channels runs
        every ``receive()`` in a task of its own under ``asyncio.wait``, which an idle
        socket holds all its life (about 1.4 KB; docs/performance.md)."""
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass
        finally:
            # Also when a handler raised: never leave a dead socket in the groups.
            await self._leave_all()

    async def connect(self) -> None:
        self.subscriptions = {}
        self.errors = 0
        self.forbidden = 0
        self.ever_subscribed = False
        self.closing = False
        self.user = self.scope.get("user")
        self.settings = conf.get_settings()
        self.frame_bucket = Bucket(self.settings.WS_FRAMES_PER_MINUTE)
        self.subscribe_bucket = Bucket(self.settings.WS_SUBSCRIBES_PER_MINUTE)
        self.fanout = get_fanout(get_event_bus().layer)
        send, write = self._frame_senders()
        self.send_queue = SendQueue(
            send,
            limit=self.settings.WS_SEND_QUEUE,
            timeout=self.settings.WS_SEND_TIMEOUT,
            on_failure=self._send_queue_failed,
            write=write,
        )
        self._side_tasks = TaskSet()
        await self.accept()
        _warn_once_if_daphne()
        if self.settings.AUTHORIZE is None and not is_authenticated(self.user):
            await self.close(code=CLOSE_UNAUTHENTICATED, reason="sign in first")
            return
        # Accepted first, so that the client learns why (4429) and backs off.
        key = client_key(self.scope, self.user)
        refused = get_client_limits().admit(
            key,
            self.settings.WS_MAX_CONNECTIONS_PER_USER
            if key[0] == "user"
            else self.settings.WS_MAX_CONNECTIONS_PER_IP,
            self.settings.WS_CONNECTS_PER_MINUTE,
        )
        if refused is not None:
            logger.warning("Refusing a WebSocket of %s: %s", key, refused)
            await self.close(code=CLOSE_TOO_MANY, reason=refused)
            return
        self.limit_key: tuple[str, str] | None = key
        get_access_watch().add(self)
        get_metrics().socket_opened()
        # A timer, not a task: it costs an idle socket less.
        self._idle_timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            self.settings.WS_SUBSCRIBE_TIMEOUT, self._never_subscribed
        )

    async def disconnect(self, code: int) -> None:
        await self._leave_all()

    async def _leave_all(self, keep_queued: bool = False) -> None:
        """Leave every group and the recheck; drop what is queued unless ``keep_queued``."""
        if not hasattr(self, "fanout"):  # never connected
            return
        if (key := getattr(self, "limit_key", None)) is not None:
            self.limit_key = None
            get_client_limits().release(key)
            get_metrics().socket_closed()  # counted open with its limit_key
        if (timer := getattr(self, "_idle_timer", None)) is not None:
            timer.cancel()
        get_access_watch().remove(self)
        if not keep_queued:
            self.send_queue.close()
        states = list(self.subscriptions.items())
        self.subscriptions.clear()
        for channel, state in states:
            await self.fanout.leave(channel, self)
            await self._leave_presence(channel, state)

    # -- client frames -------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        action: str | None = None
        channel: str | None = None
        if self.closing:  # frames that were on their way when it was closed
            return
        try:
            if not self.frame_bucket.take():
                get_metrics().rate_limited("frames")
                raise _FrameError(
                    "rate_limited",
                    f"At most {self.settings.WS_FRAMES_PER_MINUTE} frames a minute.",
                )
            if text_data is None:
                raise _FrameError("binary_not_supported", "Send JSON text frames, not binary.")
            if len(text_data.encode()) > self.settings.WS_MAX_FRAME_BYTES:
                raise _FrameError(
                    "frame_too_large",
                    f"Frames are limited to {self.settings.WS_MAX_FRAME_BYTES} bytes.",
                )
            if _nested_deeper_than(text_data, _MAX_DEPTH):
                raise _FrameError("invalid_json", "The frame is nested too deeply.")
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
                if not self.subscribe_bucket.take():
                    get_metrics().rate_limited("subscribes")
                    raise _FrameError(
                        "rate_limited",
                        f"At most {self.settings.WS_SUBSCRIBES_PER_MINUTE} subscribes a minute.",
                    )
                await self._subscribe(data)
            elif action == "unsubscribe":
                await self._unsubscribe(data)
            else:
                raise _FrameError(
                    "unknown_action", f"'action' must be one of {', '.join(_ACTIONS)}."
                )
        except _FrameError as exc:
            await self._error(exc.code, str(exc), action, channel)
            if exc.code == "forbidden":
                await self._forbidden_once_more()

    async def _subscribe(self, data: dict[str, Any]) -> None:
        channel = _required_channel(data)
        after, since, epoch = _resume_point(data)
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
        wants_presence = data.get("presence", False)
        if not isinstance(wants_presence, bool):
            raise _FrameError("invalid_field", "'presence' must be true or false.")
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
        # `subscribed`, the missed events, then live ones, each once, in position order.
        state = _ChannelState(tuple(patterns) if patterns is not None else None, held=[])
        previous = self.subscriptions.get(channel)
        if previous is not None:  # subscribed again: still the same presence connection
            state.presence_connection = previous.presence_connection
            previous.presence_connection = None
        if wants_presence:
            state.presence_seen, state.presence_held = {}, []
        self.subscriptions[channel] = state
        self.ever_subscribed = True
        try:
            head = await self.fanout.join(channel, self)
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            # The channel layer's server is away (a Redis restart): say so, stay up.
            if self.subscriptions.get(channel) is state:
                del self.subscriptions[channel]
            await self._leave_presence(channel, state)  # kept from an earlier subscribe
            raise _FrameError(
                "unavailable", "The event stream is unavailable right now; subscribe again."
            ) from None
        if self.subscriptions.get(channel) is not state or self.send_queue.failed:
            # Left while joining (access revoked, socket given up): do not stay in.
            await self.fanout.leave(channel, self)
            await self._leave_presence(channel, state)
            return
        presence = await self._join_presence(channel, state)
        if self.subscriptions.get(channel) is not state or self.send_queue.failed:
            await self.fanout.leave(channel, self)
            await self._leave_presence(channel, state)
            return
        key = self.limit_key or ("-", "-")
        budget = get_client_limits().replay_budget(
            key,
            self.settings.WS_REPLAY_EVENTS_PER_MINUTE,
            burst=2 * self.settings.RESUME_MAX_EVENTS,
        )
        if after is None and since is None:
            replay = Replay(head.epoch, head.position, head.position)
        elif not budget.take():  # this client replayed its share lately: it reloads instead
            get_metrics().rate_limited("replays")
            replay = Replay(head.epoch, head.position, head.position, reset="replay_limited")
        else:
            async with get_client_limits().replay_turn(key):
                replay = await aread(
                    load_replay,
                    channel,
                    after,
                    since,
                    epoch,
                    state.wants,
                    self.settings.RESUME_MAX_EVENTS,
                )
            budget.spend(max(0, replay.position - replay.start - 1))
            if replay.reset is None:
                get_metrics().replayed(len(replay.frames))
        state.position = replay.position
        await self._send_frame(
            {
                "type": "subscribed",
                "channel": channel,
                "replayed": len(replay.frames),
                "epoch": replay.epoch,
                "position": replay.start,
            }
        )
        if replay.reset is not None:
            get_metrics().reset(replay.reset)
            await self._send_frame(
                _reset_frame(channel, replay.reset, replay.epoch, replay.position)
            )
        for frame in replay.frames:
            await self._send_text(frame)
        if isinstance(presence, _NoPresence):
            await self._error(presence.code, str(presence), "subscribe", channel)
        elif presence is not None:
            await self._send_frame(presence)
        # From here to the end nothing waits, so no live event slips in between.
        self._release_presence(state)
        held, state.held = state.held or [], None
        if state.overflowed:  # too much arrived during the replay: the client reloads
            current = self.fanout.cursor.at(channel) or head
            state.position = current.position
            get_metrics().reset("too_many_missed")
            self.send_queue.offer(
                frame_json(
                    _reset_frame(channel, "too_many_missed", current.epoch, current.position)
                )
            )
            return
        for message in held:
            if message.get("type") == RESET_TYPE:
                self.on_reset(message)
            else:
                self.on_message(message)

    async def _join_presence(
        self, channel: str, state: _ChannelState
    ) -> dict[str, Any] | _NoPresence | None:
        """Make the socket present on ``channel`` when the PRESENCE hook says so; the
        snapshot frame when it asked for presence (or why it gets none), else None."""
        failed = None
        info = None
        if self.settings.PRESENCE is not None and user_key(self.user) is not None:
            try:
                info = await database_sync_to_async(info_for)(self.user, channel)
            except Exception:
                logger.exception("The PRESENCE hook failed for channel %s", channel)
                failed = "The presence of this channel is unavailable (see the server's log)."
        if info is not None and state.presence_connection is None:
            connection = new_connection_id()
            try:
                await get_presence_tracker(self.fanout.layer).join(
                    channel, connection, str(user_key(self.user)), info
                )
                state.presence_connection = connection
            except Exception as exc:
                if not is_connection_error(exc):
                    logger.exception("Joining the presence of %s failed", channel)
                failed = "The presence of this channel is unavailable right now."
        if state.presence_seen is None:
            return None
        if failed is not None:
            state.presence_seen = state.presence_held = None
            return _NoPresence("presence_unavailable", failed)
        if state.presence_connection is None:
            state.presence_seen = state.presence_held = None
            return _NoPresence("no_presence", f"{channel} has no presence for this connection.")
        try:
            snapshot = await read_presence(self.fanout.layer, channel)
        except Exception as exc:
            if not is_connection_error(exc):
                logger.exception("Reading the presence of %s failed", channel)
            state.presence_seen = state.presence_held = None
            return _NoPresence(
                "presence_unavailable", "The presence of this channel is unavailable right now."
            )
        state.presence_floor = snapshot.version
        return {
            "type": "presence",
            "channel": channel,
            "kind": "snapshot",
            "users": [
                {"key": user.key, "info": user.info, "connections": user.connections}
                for user in snapshot.users
            ],
        }

    async def _leave_presence(self, channel: str, state: _ChannelState) -> None:
        connection, state.presence_connection = state.presence_connection, None
        if connection is not None:
            await get_presence_tracker(self.fanout.layer).leave(channel, connection)

    def _release_presence(self, state: _ChannelState) -> None:
        held, state.presence_held = state.presence_held or [], None
        for message in held:
            self._offer_presence(state, message)

    async def _unsubscribe(self, data: dict[str, Any]) -> None:
        channel = _required_channel(data)
        if channel not in self.subscriptions:
            raise _FrameError("not_subscribed", f"This connection is not subscribed to {channel}.")
        await self._leave(channel, "requested")

    # -- events from the fan-out -----------------------------------------------

    def on_message(self, message: dict[str, Any]) -> None:
        """A live event of a joined channel (from the fan-out): queue its frame."""
        channel = message["channel"]
        state = self.subscriptions.get(channel)
        if state is None or (state.held is not None and self._ready_for(message) is None):
            return
        position = message.get("position")
        if position is not None:
            if position <= state.position:
                return  # sent already, from the replay
            state.position = position
        if state.patterns is None or state.wants(message["event_type"]):
            self.send_queue.offer(event_frame(channel, message["event"], position))

    def on_reset(self, message: dict[str, Any]) -> None:
        """The fan-out could not vouch for the channel's stream: tell the client."""
        state = self._ready_for(message)
        if state is None:
            return
        channel = message["channel"]
        state.position = message["position"]
        get_metrics().reset(message["reason"])
        self.send_queue.offer(
            frame_json(
                _reset_frame(channel, message["reason"], message["epoch"], message["position"])
            )
        )

    def on_presence(self, message: dict[str, Any]) -> None:
        """A user joined or left a joined channel (from the fan-out): queue its frame, when
        this socket asked for presence and the snapshot did not have it already."""
        state = self.subscriptions.get(message["channel"])
        if state is None or state.presence_seen is None:
            return
        if state.presence_held is not None:
            state.presence_held.append(message)
            return
        self._offer_presence(state, message)

    def _offer_presence(self, state: _ChannelState, message: dict[str, Any]) -> None:
        seen = state.presence_seen
        if seen is None:
            return
        key, version = message["key"], message["version"]
        # Announcers in different processes may be overtaken by one another: a change
        # older than what this socket has for the user is already outdated.
        if version <= max(state.presence_floor, seen.get(key, 0)):
            return
        seen[key] = version
        self.send_queue.offer(
            presence_frame(message["channel"], message["kind"], key, message["info"])
        )

    def _ready_for(self, message: dict[str, Any]) -> _ChannelState | None:
        """The channel's state when a live message can go out now; None when the socket is
        not on the channel, or holds the message while the subscription is set up."""
        state = self.subscriptions.get(message["channel"])
        if state is None or state.held is None:
            return state
        if len(state.held) < self.settings.RESUME_MAX_EVENTS:
            state.held.append(message)
        else:
            state.overflowed = True
        return None

    def _send_queue_failed(self, stalled: bool) -> None:
        self._side_tasks.start(self._give_up(stalled), eager=False)

    async def _give_up(self, stalled: bool) -> None:
        # Leave the groups first: the close handshake cannot finish while it does not read.
        await self._leave_all()
        if stalled:
            get_metrics().socket_too_slow()
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
        if forbidden and not self.subscriptions and not is_authenticated(self.user):
            await self._close_after_sending(CLOSE_NOTHING_ALLOWED, "no channel allowed")

    # -- sockets that hold on without a purpose ------------------------------------

    async def _forbidden_once_more(self) -> None:
        """An anonymous socket with nothing allowed is closed after a few refusals."""
        if is_authenticated(self.user) or self.subscriptions or self.closing:
            return
        self.forbidden += 1
        if self.forbidden >= self.settings.WS_ANONYMOUS_MAX_FORBIDDEN:
            await self._close_after_sending(CLOSE_NOTHING_ALLOWED, "no channel allowed")

    def _never_subscribed(self) -> None:
        self._idle_timer = None
        if not self.ever_subscribed and not self.closing:
            self._side_tasks.start(
                self._close_after_sending(CLOSE_NEVER_SUBSCRIBED, "no subscription")
            )

    # -- helpers ---------------------------------------------------------------

    async def _send_now(self, text: str) -> None:
        await self.send(text_data=text)

    def _frame_senders(
        self,
    ) -> tuple[Callable[[str], Coroutine[Any, Any, None]], Callable[[str], bool] | None]:
        """How the send queue sends a text frame, and writes one without waiting if it can.

        Straight to the server's ``send``, past Channels' session wrappers (which act on
        ``http.response.start`` only) and Channels' two ``send`` layers; under uvicorn's
        sans-I/O WebSockets, the frame's bytes are written to the transport, encoded once
        per event (``eventbus._uvicorn``). A subclass that overrides ``send`` gets every
        frame through it. Where the fan-out's time went: docs/performance.md.
        """
        if type(self).send is not AsyncWebsocketConsumer.send:
            return self._send_now, None
        send = _past_session_wrappers(self.base_send)
        if not inspect.iscoroutinefunction(send):  # the send queue steps coroutines itself
            return self._send_now, None

        def send_frame(text: str) -> Coroutine[Any, Any, None]:
            return send({"type": "websocket.send", "text": text})  # type: ignore[no-any-return]

        return send_frame, frame_writer(send)

    async def _send_text(self, text: str) -> None:
        await self.send_queue.put(text)

    async def _send_frame(self, frame: dict[str, Any]) -> None:
        await self._send_text(frame_json(frame))

    async def _close_after_sending(self, code: int, reason: str) -> None:
        # No more events; what is queued (the last error frame) goes out first, if the
        # client takes it within WS_SEND_TIMEOUT.
        if self.closing:
            return
        self.closing = True
        await self._leave_all(keep_queued=True)
        await self.send_queue.drained(self.settings.WS_SEND_TIMEOUT)
        self.send_queue.close()
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
            if code == "rate_limited":
                await self._close_after_sending(CLOSE_TOO_MANY, "too many frames")
            else:
                await self._close_after_sending(CLOSE_TOO_MANY_ERRORS, "too many bad frames")

    async def _leave(self, channel: str, reason: str) -> None:
        state = self.subscriptions.pop(channel, None)
        await self.fanout.leave(channel, self)
        if state is not None:
            await self._leave_presence(channel, state)
        await self._send_frame({"type": "unsubscribed", "channel": channel, "reason": reason})


def _past_session_wrappers(send: Any) -> Any:
    """``send`` without the Channels session wrappers around it that would pass a
    ``websocket.send`` message through untouched."""
    while True:
        wrapper = getattr(send, "__self__", None)
        if not (
            isinstance(wrapper, InstanceSessionWrapper)
            and getattr(send, "__func__", None) is InstanceSessionWrapper.send
            and "websocket.send" not in wrapper.save_message_types
        ):
            return send
        send = wrapper.real_send


def _nested_deeper_than(text: str, limit: int) -> bool:
    """Whether the JSON in ``text`` nests arrays and objects more than ``limit`` deep.

    Brackets inside strings do not count. Counting first keeps the scan off the usual
    frame, which has a handful of brackets at most.
    """
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _required_channel(data: dict[str, Any]) -> str:
    if "channel" not in data or data["channel"] is None:
        raise _FrameError("missing_field", "'channel' is required.")
    try:
        return validate_channel(data["channel"])
    except InvalidChannelError as exc:
        raise _FrameError("invalid_channel", str(exc)) from None


def _resume_point(data: dict[str, Any]) -> tuple[int | None, UUID | None, str | None]:
    """``position`` (with its ``epoch``), or the older ``since`` (an event id), checked."""
    position, epoch, since = data.get("position"), data.get("epoch"), data.get("since")
    if position is not None and since is not None:
        raise _FrameError("invalid_field", "Give 'position' or 'since', not both.")
    if position is not None and (
        isinstance(position, bool) or not isinstance(position, int) or not 0 <= position < 2**63
    ):
        raise _FrameError("invalid_field", "'position' must be a whole number from 0, or null.")
    if epoch is not None and not (isinstance(epoch, str) and len(epoch) <= 16):
        raise _FrameError("invalid_field", "'epoch' must be the epoch the server gave, or null.")
    if since is None:
        return position, None, epoch
    try:
        return None, parse_uuid(since), None
    except ValueError:
        raise _FrameError("invalid_field", "'since' must be an event id or null.") from None


def _reset_frame(channel: str, reason: str, epoch: str, position: int) -> dict[str, Any]:
    return {
        "type": "reset",
        "channel": channel,
        "reason": reason,
        "epoch": epoch,
        "position": position,
    }


_daphne_warned = False


def _warn_once_if_daphne() -> None:
    """Daphne neither bounds what it buffers for a client that does not read nor applies
    backpressure, so WS_SEND_QUEUE cannot hold under it. ASGI servers run no system
    checks, so this is said here, once per process, where the server is known."""
    global _daphne_warned
    if _daphne_warned or "daphne.server" not in sys.modules:
        return
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None or not getattr(reactor, "running", False):
        return
    _daphne_warned = True
    logger.warning(
        "eventbus WebSockets are served by daphne, which buffers frames without bound for "
        "clients that do not read: serve them with uvicorn (--ws websockets-sansio) in "
        "production (see README, Slow clients)"
    )
