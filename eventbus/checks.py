"""System checks: every misconfiguration eventbus can see at start-up has an id here.

Ids are never reused. ``E001``-``E009`` cover the catalog, handlers and bridge.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from . import bridge, conf
from .catalog import ConfigProblem, catalog
from .dispatcher import get_event_dispatcher


def _as_message(problem: ConfigProblem) -> CheckMessage:
    level = Warning if ".W" in problem.check_id else Error
    return level(problem.message, hint=problem.hint, id=problem.check_id)


@register(Tags.compatibility)
def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    raw = conf.raw_setting()
    if not isinstance(raw, dict):
        return [
            Error(
                f"EVENTBUS must be a dict, not {type(raw).__name__}.",
                hint="Set EVENTBUS = {'CATALOGS': ['myapp.events.EVENT_PAYLOAD_MAP']}.",
                id="eventbus.E001",
            )
        ]
    messages: list[CheckMessage] = []
    settings = conf.get_settings()
    if settings.unknown_keys:
        messages.append(
            Error(
                f"EVENTBUS has unknown keys: {', '.join(settings.unknown_keys)}.",
                hint="Check the spelling against the settings listed in the README.",
                id="eventbus.E001",
            )
        )
    if not settings.CATALOGS:
        messages.append(
            Warning(
                "EVENTBUS['CATALOGS'] is empty, so no event type can be published.",
                hint="List the dotted paths of your EVENT_PAYLOAD_MAP mappings.",
                id="eventbus.W001",
            )
        )
    return messages


@register(Tags.compatibility)
def check_catalog(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    messages = [_as_message(problem) for problem in catalog.problems]
    for entry in catalog:
        if not entry.payload_model.model_config.get("frozen"):
            messages.append(
                Warning(
                    f"Payload model {entry.payload_model.__qualname__} of {entry.name!r} is not "
                    "frozen, so a handler could change what the other handlers see.",
                    hint="Set model_config = ConfigDict(frozen=True).",
                    id="eventbus.W002",
                )
            )
        unknown = entry.spec.private_fields - set(entry.payload_model.model_fields)
        if unknown:
            messages.append(
                Error(
                    f"{entry.name!r} marks {', '.join(sorted(unknown))} private, but "
                    f"{entry.payload_model.__qualname__} has no such field.",
                    hint="private_fields must name fields of the payload model.",
                    id="eventbus.E009",
                )
            )
    return messages


@register(Tags.compatibility)
def check_handlers(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    messages = [_as_message(problem) for problem in get_event_dispatcher().problems]
    for declaration in bridge.registry:
        messages.extend(_as_message(problem) for problem in declaration.check_rules())
    return messages
