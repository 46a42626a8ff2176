"""The test suite's PRESENCE hooks: project channels show a member's username; agent
channels have no presence. The bad ones answer what a hook must not."""

from datetime import datetime
from typing import Any

from eventbus.channel_names import project_of


def presence(user: Any, channel: str) -> dict[str, Any] | None:
    if project_of(channel) is None:
        return None
    return {"name": user.username}


def wrong_type(user: Any, channel: str) -> Any:
    return ["not", "a", "dict"]


def not_json(user: Any, channel: str) -> Any:
    return {"since": datetime(2026, 1, 1)}


MAX_INFO = 100  # not a hook: the checks refuse it
