"""The test suite's authorization hook: project members only; agent channels for staff.

Projects are keyed by UUID (``Membership``) or by integer (``Team``), as a project's own
tenants would be: the hook reads the key from the channel with ``project_of``.
"""

from typing import Any
from uuid import UUID

from eventbus.channel_names import agent_of, project_of

from .models import Membership, Team


def may_subscribe(user: Any, channel: str) -> bool:
    if not user.is_authenticated:
        return False
    project = project_of(channel)
    if isinstance(project, UUID):
        return Membership.objects.filter(user=user, project_id=project).exists()
    if isinstance(project, int):
        return Team.objects.filter(pk=project, members=user).exists()
    if agent_of(channel) is not None:
        return bool(user.is_staff)
    return False
