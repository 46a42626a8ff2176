"""Replaying a channel's missed events from the event log, for a resuming socket."""

from __future__ import annotations

from collections.abc import Callable

from .bus import get_event_bus
from .channel_names import project_of
from .ids import key_text
from .models import EVENT_COLUMNS, EventRecord, event_from_columns
from .wire import public_json


def load_replay(
    channel: str, since: str, wants: Callable[[str], bool], cap: int
) -> tuple[list[tuple[str, str, str]], str | None]:
    """Events of ``channel`` committed after ``since``, in commit order; or a reset reason.

    Each is ``(id, type, public JSON)``, for the types ``wants``; past ``cap`` of them,
    none and ``"too_many_missed"``.
    """
    anchor = EventRecord.objects.filter(id=since).values_list("sequence", flat=True).first()
    if anchor is None:
        return [], "since_unknown"
    bus = get_event_bus()
    rows = EventRecord.objects.filter(sequence__gt=anchor).order_by("sequence")
    project = project_of(channel)
    if project is not None:
        rows = rows.filter(project_id=key_text(project))
    found: list[tuple[str, str, str]] = []
    for row in rows.values_list(*EVENT_COLUMNS).iterator(chunk_size=500):
        event_type = row[1]
        if not wants(event_type):
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
