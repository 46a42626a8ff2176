"""Channel names: which ones are valid, how project and agent channels are named, and
the default router from an event to its channels.

A channel is a Channels group: ``eventbus.project.<key>`` and ``eventbus.agent.<key>``
by default, where a UUID key is written as 32 hex digits and an integer or string key
as its text. ``EVENTBUS['CHANNEL_ROUTER']`` replaces :func:`default_channels`.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterable
from typing import Any

from django.utils.module_loading import import_string

from . import conf
from .catalog import CatalogEntry, catalog
from .envelope import ActorType, Event
from .exceptions import InvalidChannelError
from .ids import ObjectKey, key_slug, parse_key

Positions = dict[str, int]
"""An event's position on each of its channels' streams (``eventbus.streams``)."""

# fullmatch, not match with `$`: `$` also matches before a trailing newline.
_CHANNEL_NAME = re.compile(r"[A-Za-z0-9._-]{1,90}")


def validate_channel(channel: object) -> str:
    """Return ``channel`` if it is a usable group name, else raise InvalidChannelError."""
    if not isinstance(channel, str) or not _is_channel_name(str(channel)):
        raise InvalidChannelError(
            f"{channel!r} is not a valid channel name: use 1 to 90 ASCII letters, digits, "
            "'.', '-' or '_'."
        )
    return channel


@functools.lru_cache(maxsize=1024)
def _is_channel_name(name: str) -> bool:
    # The relay checks the channels of every event it numbers, and they repeat.
    return _CHANNEL_NAME.fullmatch(name) is not None


@functools.lru_cache(maxsize=4096, typed=True)  # typed: True is not the key 1
def project_channel(project_id: ObjectKey) -> str:
    """The channel of a project's events; ValueError for a key that is not valid."""
    return f"{_PROJECT}{key_slug(parse_key(project_id))}"


def agent_channel(agent_id: ObjectKey) -> str:
    """The channel of the events about one agent; ValueError for a key that is not valid."""
    return f"{_AGENT}{key_slug(parse_key(agent_id))}"


def project_of(channel: str) -> ObjectKey | None:
    """The key of the project whose channel ``channel`` is; None for any other channel."""
    return _key_after(_PROJECT, channel)


def agent_of(channel: str) -> ObjectKey | None:
    """The key of the agent whose channel ``channel`` is; None for any other channel."""
    return _key_after(_AGENT, channel)


_PROJECT = "eventbus.project."
_AGENT = "eventbus.agent."


def _key_after(prefix: str, channel: str) -> ObjectKey | None:
    if not channel.startswith(prefix):
        return None
    try:
        return parse_key(channel[len(prefix) :])
    except ValueError:
        return None


@functools.cache
def _may_have_agent_id(payload_type: type) -> bool:
    """Whether a payload of this type can have an ``agent_id``: the router asks it of
    every event the relay numbers, and a Pydantic model's missing attribute is slow
    to find missing (it builds an AttributeError each time)."""
    fields = getattr(payload_type, "model_fields", None)
    if not isinstance(fields, dict):
        return True  # not a Pydantic model: ask each instance
    config = getattr(payload_type, "model_config", {})
    return (
        "agent_id" in fields or hasattr(payload_type, "agent_id") or config.get("extra") == "allow"
    )


def default_channels(event: Event[Any]) -> list[str]:
    """Where an event goes: its project's channel, and the channel of each agent it is about.

    An event is about an agent when its payload has an ``agent_id`` or its actor is
    an agent. Replace with ``EVENTBUS['CHANNEL_ROUTER']``.
    """
    channels = []
    if event.project_id is not None:
        channels.append(project_channel(event.project_id))
    agent_ids: list[ObjectKey] = []
    payload_type: type = type(event.payload)
    payload_agent = (
        getattr(event.payload, "agent_id", None) if _may_have_agent_id(payload_type) else None
    )
    if payload_agent is not None:
        with contextlib.suppress(ValueError):  # not a key: the field means something else
            agent_ids.append(parse_key(payload_agent))
    if event.actor_type == ActorType.AGENT and event.actor_id is not None:
        agent_ids.append(event.actor_id)
    for agent_id in dict.fromkeys(agent_ids):
        channels.append(agent_channel(agent_id))
    return channels


def route(event: Event[Any], entry: CatalogEntry | None = None) -> list[str]:
    """The channels ``event`` goes to: none when its type opts out of broadcast, else
    what ``EVENTBUS['CHANNEL_ROUTER']`` says, each checked; InvalidChannelError otherwise."""
    if not (entry or catalog.resolve(event.type)).spec.broadcast:
        return []
    router = _router(conf.get_settings().CHANNEL_ROUTER)
    return [validate_channel(channel) for channel in router(event)]


@functools.lru_cache(maxsize=8)
def _router(path: str) -> Callable[[Event[Any]], Iterable[str]]:
    # The relay routes every event it numbers: import the router once per path.
    router: Callable[[Event[Any]], Iterable[str]] = import_string(path)
    return router
