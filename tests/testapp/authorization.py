"""The test suite's authorization hook: project members only; agent channels for staff."""

from typing import Any
from uuid import UUID

from .models import Membership


def may_subscribe(user: Any, channel: str) -> bool:
    if not user.is_authenticated:
        return False
    kind, _, ident = channel.removeprefix("eventbus.").partition(".")
    if kind == "project":
        try:
            project_id = UUID(ident)
        except ValueError:
            return False
        return Membership.objects.filter(user=user, project_id=project_id).exists()
    if kind == "agent":
        return bool(user.is_staff)
    return False
