"""Replaying a channel's missed events from the log, for a socket that resumes.

A resume names a position on the channel's stream (or, the old way, an event id, which
maps to that event's position there). The replay is one index range read after it,
so it costs in proportion to what it returns, not to the size of the log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from uuid import UUID

from .streams import heads, position_of, read_after
from .wire import event_frame, public_json


@dataclass
class Replay:
    """What a resuming socket sends first, and where it then stands on the stream."""

    epoch: str
    start: int  # the position the stream continues after
    position: int  # where the socket stands once the frames are out
    frames: list[str] = field(default_factory=list)
    reset: str | None = None  # why the client must reload its state instead


def load_replay(
    channel: str,
    after: int | None,
    since: UUID | None,
    epoch: str | None,
    wants: Callable[[str], bool],
    cap: int,
) -> Replay:
    """The events of ``channel`` after position ``after`` (or after event ``since``).

    A reset, standing at the stream's head, when the resume point cannot be vouched for:
    ``since_unknown`` (no such event on this channel), ``epoch_changed`` (the stream
    started over), ``position_unknown`` (past the head), ``pruned`` (missed events were
    deleted) or ``too_many_missed`` (more than ``cap``).
    """
    head = heads([channel])[channel]

    def reset(reason: str) -> Replay:
        return Replay(head.epoch, head.position, head.position, reset=reason)

    if since is not None:
        after = position_of(since, channel)
        if after is None:
            return reset("since_unknown")
    elif epoch and head.epoch and epoch != head.epoch:
        return reset("epoch_changed")
    assert after is not None
    if after > head.position:
        return reset("position_unknown")
    entries = read_after(channel, after, cap + 1)
    if len(entries) > cap:
        return reset("too_many_missed")
    replay = Replay(head.epoch, after, after)
    for entry in entries:
        if entry.position != replay.position + 1:
            return reset("pruned")
        replay.position = entry.position
        if entry.event is not None and wants(entry.event_type):
            replay.frames.append(event_frame(channel, public_json(entry.event), entry.position))
    return replay
