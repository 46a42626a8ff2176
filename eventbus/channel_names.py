"""Channel names: which ones are valid, how project and agent channels are named, and
the default router from an event to its channels.

A channel is a Channels group: ``eventbus.project.<hex>`` and ``eventbus.agent.<hex>``
by default. ``EVENTBUS['CHANNEL_ROUTER']`` replaces :func:`default_channels`.
"""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID

from .envelope import ActorType, Event
from .exceptions import InvalidChannelError
from .ids import parse_uuid

# fullmatch, not match with `$`: `$` also matches before a trailing newline.
_CHANNEL_NAME = re.compile(r"[A-Za-z0-9._-]{1,90}")


def validate_channel(channel: object) -> str:
    """Return ``channel`` if it is a usable group name, else raise InvalidChannelError."""
    if not isinstance(channel, str) or not _CHANNEL_NAME.fullmatch(channel):
        raise InvalidChannelError(
            f"{channel!r} is not a valid channel name: use 1 to 90 ASCII letters, digits, "
            "'.', '-' or '_'."
        )
    return channel


def project_channel(project_id: UUID | str) -> str:
    """The channel of a project's events."""
    return f"eventbus.project.{parse_uuid(project_id).hex}"


def agent_channel(agent_id: UUID | str) -> str:
    """The channel of the events about one agent."""
    return f"eventbus.agent.{parse_uuid(agent_id).hex}"


def project_of(channel: str) -> UUID | None:
    """The project whose channel ``channel`` is, or None for any other channel."""
    prefix, _, ident = channel.rpartition(".")
    if prefix != "eventbus.project":
        return None
    try:
        return parse_uuid(ident)
    except ValueError:
        return None


def default_channels(event: Event[Any]) -> list[str]:
    """Where an event goes: its project's channel, and the channel of each agent it is about.

    An event is about an agent when its payload has an ``agent_id`` or its actor is
    an agent. Replace with ``EVENTBUS['CHANNEL_ROUTER']``.
    """
    channels = []
    if event.project_id is not None:
        channels.append(project_channel(event.project_id))
    agent_ids = []
    payload_agent = getattr(event.payload, "agent_id", None)
    if isinstance(payload_agent, UUID):
        agent_ids.append(payload_agent)
    if event.actor_type == ActorType.AGENT and event.actor_id is not None:
        agent_ids.append(event.actor_id)
    for agent_id in dict.fromkeys(agent_ids):
        channels.append(agent_channel(agent_id))
    return channels
