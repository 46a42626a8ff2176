"""The demo's WebSocket authorization hook, named in ``EVENTBUS['AUTHORIZE']``.

The consumer asks it on every subscribe, and again every ``WS_REAUTHORIZE_SECONDS``
while the socket stays open, so removing a member cuts their stream off.
"""

from typing import Any
from uuid import UUID

from eventbus.bus import EventBus

from .models import Agent, Project


def may_subscribe(user: Any, channel: str) -> bool:
    """Members of a project may watch its channel and its agents' channels; nobody else."""
    if not user.is_authenticated:
        return False
    try:
        pk = UUID(channel.rpartition(".")[2])
    except ValueError:
        return False
    # Compare with the names the bus makes, rather than parse its naming scheme.
    if channel == EventBus.get_project_channel(pk):
        return Project.objects.filter(pk=pk, members=user).exists()
    if channel == EventBus.get_agent_channel(pk):
        return Agent.objects.filter(pk=pk, project__members=user).exists()
    return False
