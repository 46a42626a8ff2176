"""System checks: every misconfiguration eventbus can see at start-up has an id here.

Ids are never reused. ``E001``-``E009`` cover the catalog, handlers and bridge;
``E010``-``E014`` and ``W003`` cover delivery beyond the process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.utils.module_loading import import_string

from . import _redis, bridge, conf
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


@register(Tags.compatibility)
def check_redis_client(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """redis-py 8's 5 s socket timeout cuts RedisChannelLayer's 5 s blocking reads.

    eventbus gives its own layer a longer timeout (``_redis.configure``); this warns about
    the other RedisChannelLayer aliases, which eventbus does not touch.
    """
    try:
        from channels_redis.core import RedisChannelLayer
    except ImportError:
        return []
    if _redis.redis_major() < 8:
        return []
    messages: list[CheckMessage] = []
    own_alias = conf.get_settings().CHANNEL_LAYER
    for alias, config in (getattr(django_settings, "CHANNEL_LAYERS", None) or {}).items():
        if alias == own_alias or not isinstance(config, dict):
            continue
        try:
            backend = import_string(config.get("BACKEND", ""))
        except ImportError:
            continue
        if not (isinstance(backend, type) and issubclass(backend, RedisChannelLayer)):
            continue
        hosts = (config.get("CONFIG") or {}).get("hosts") or ["redis://localhost:6379"]
        if not all(_redis.has_socket_timeout(host) for host in hosts):
            messages.append(
                Warning(
                    f"CHANNEL_LAYERS[{alias!r}] uses RedisChannelLayer with redis-py 8, whose "
                    "5 s default socket timeout is as long as the layer's blocking read: an "
                    "idle receive() raises redis TimeoutError after 5 s without a message "
                    "(channels_redis#422), which ends a Channels consumer reading this layer. "
                    f"eventbus sets a longer timeout only on its own layer ({own_alias!r}).",
                    hint="Give each host an explicit timeout longer than 5 s, e.g. "
                    "{'address': 'redis://…', 'socket_timeout': 10}.",
                    id="eventbus.W004",
                )
            )
    return messages


def _importable(path: str) -> Exception | None:
    try:
        import_string(path)
    except ImportError as exc:
        return exc
    return None


@register(Tags.compatibility)
def check_delivery(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    if not isinstance(conf.raw_setting(), dict):
        return []  # E001 says it; the defaults below would only add noise
    settings = conf.get_settings()
    messages: list[CheckMessage] = []
    if settings.AUTHORIZE is None:
        messages.append(
            Warning(
                "EVENTBUS['AUTHORIZE'] is not set: anonymous WebSocket users are refused, and "
                "every signed-in user may subscribe to every channel.",
                hint="Point it at a callable(user, channel) -> bool that checks membership.",
                id="eventbus.W003",
            )
        )
    elif error := _importable(settings.AUTHORIZE):
        messages.append(
            Error(
                f"EVENTBUS['AUTHORIZE'] = {settings.AUTHORIZE!r} cannot be imported: {error}",
                hint="Use the dotted path of a callable(user, channel) -> bool.",
                id="eventbus.E010",
            )
        )
    if settings.SINK is not None:
        error = _importable(settings.SINK)
        if error is None and not callable(getattr(import_string(settings.SINK), "send", None)):
            error = TypeError("it has no send(events) method")
        if error is not None:
            messages.append(
                Error(
                    f"EVENTBUS['SINK'] = {settings.SINK!r} is not a usable sink: {error}",
                    hint="Use 'eventbus.sinks.ChannelLayerSink', another Sink class, or None.",
                    id="eventbus.E011",
                )
            )
        elif settings.SINK == "eventbus.sinks.ChannelLayerSink" and settings.CHANNEL_LAYER not in (
            getattr(django_settings, "CHANNEL_LAYERS", None) or {}
        ):
            messages.append(
                Error(
                    f"The sink broadcasts on the channel layer {settings.CHANNEL_LAYER!r}, which "
                    "settings.CHANNEL_LAYERS does not define.",
                    hint="Configure CHANNEL_LAYERS (channels_redis in production), set "
                    "EVENTBUS['CHANNEL_LAYER'] to an alias it has, or set EVENTBUS['SINK'] = None.",
                    id="eventbus.E012",
                )
            )
    if error := _importable(settings.CHANNEL_ROUTER):
        messages.append(
            Error(
                f"EVENTBUS['CHANNEL_ROUTER'] = {settings.CHANNEL_ROUTER!r} cannot be imported: "
                f"{error}",
                hint="Use the dotted path of a callable(event) -> list of channel names.",
                id="eventbus.E013",
            )
        )
    numbers = {
        "MAX_PAYLOAD_BYTES": settings.MAX_PAYLOAD_BYTES,
        "RELAY_BATCH_SIZE": settings.RELAY_BATCH_SIZE,
        "RELAY_MAX_ATTEMPTS": settings.RELAY_MAX_ATTEMPTS,
        "WS_MAX_FRAME_BYTES": settings.WS_MAX_FRAME_BYTES,
        "WS_MAX_SUBSCRIPTIONS": settings.WS_MAX_SUBSCRIPTIONS,
        "WS_MAX_ERRORS": settings.WS_MAX_ERRORS,
        "RESUME_MAX_EVENTS": settings.RESUME_MAX_EVENTS,
        "WS_SEND_QUEUE": settings.WS_SEND_QUEUE,
        "RELAY_BACKOFF_BASE": settings.RELAY_BACKOFF_BASE,
        "RELAY_BACKOFF_MAX": settings.RELAY_BACKOFF_MAX,
        "RELAY_SWEEP_AFTER": settings.RELAY_SWEEP_AFTER,
        "RELAY_POLL_INTERVAL": settings.RELAY_POLL_INTERVAL,
        "RELAY_CLAIM_SECONDS": settings.RELAY_CLAIM_SECONDS,
        "WS_REAUTHORIZE_SECONDS": settings.WS_REAUTHORIZE_SECONDS,
        "WS_SEND_TIMEOUT": settings.WS_SEND_TIMEOUT,
    }
    for name, value in numbers.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            messages.append(
                Error(
                    f"EVENTBUS[{name!r}] must be a positive number, not {value!r}.",
                    hint="See the settings table in the README for defaults.",
                    id="eventbus.E014",
                )
            )
    return messages
