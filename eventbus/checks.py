"""System checks: every misconfiguration eventbus can see at start-up, each with its id.

Every id is defined here, once, and never reused. The checks are registered by
``AppConfig.ready()`` (:func:`register_checks`), so importing this module does nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.utils.module_loading import import_string

from . import _redis, bridge, conf
from .catalog import catalog
from .dispatcher import get_event_dispatcher
from .exceptions import CatalogConflictError, UnknownEventTypeError
from .inspection import dotted_name

E001 = "eventbus.E001"  # EVENTBUS is not a dict, or has unknown keys
E002 = "eventbus.E002"  # a catalog path cannot be imported
E003 = "eventbus.E003"  # a catalog is not a mapping of str-Enum members to models
E004 = "eventbus.E004"  # one event type registered with two payload models
E005 = "eventbus.E005"  # a handler is declared for an unknown event type
E006 = "eventbus.E006"  # a handler cannot take the event, or annotates another model
E007 = "eventbus.E007"  # a ModelEvents rule names an unknown event type
E008 = "eventbus.E008"  # a ModelEvents rule cannot build its payload from the model
E009 = "eventbus.E009"  # private_fields names a field the payload model lacks
E010 = "eventbus.E010"  # AUTHORIZE cannot be imported
E011 = "eventbus.E011"  # SINK cannot be imported or has no send
E012 = "eventbus.E012"  # the sink broadcasts on a layer CHANNEL_LAYERS lacks
E013 = "eventbus.E013"  # CHANNEL_ROUTER cannot be imported
E014 = "eventbus.E014"  # a numeric setting is not a positive number
E015 = "eventbus.E015"  # WS_ALLOWED_ORIGINS is not a list of origins
E016 = "eventbus.E016"  # a durable handler's event type is not logged
E017 = "eventbus.E017"  # durable handlers, but no task framework or backend to run them
E018 = "eventbus.E018"  # a payload version without an upcaster path to the current one
E019 = "eventbus.E019"  # a HEALTH_MAX_* count is not a whole number of 0 or more
E020 = "eventbus.E020"  # metrics on, PROMETHEUS_MULTIPROC_DIR not a writable directory
E021 = "eventbus.E021"  # PRESENCE cannot be imported, or is not callable
E022 = "eventbus.E022"  # PRESENCE_TTL_SECONDS not above PRESENCE_HEARTBEAT_SECONDS
E023 = "eventbus.E023"  # a channels_redis hosts entry has sentinels without master_name, or back
E024 = "eventbus.E024"  # channels_redis hosts not a list of URLs, (host, port) pairs or dicts
E027 = "eventbus.E027"  # the event log is on SQLite older than 3.35 (no RETURNING)
W001 = "eventbus.W001"  # CATALOGS is empty
W002 = "eventbus.W002"  # a payload model is not frozen
W003 = "eventbus.W003"  # no AUTHORIZE hook
W004 = "eventbus.W004"  # another RedisChannelLayer alias with redis-py 8 and no socket_timeout
W005 = "eventbus.W005"  # daphne's runserver reads WebSocket messages far over WS_MAX_FRAME_BYTES
W006 = "eventbus.W006"  # (deploy) daphne serves WebSockets: no backpressure, no bound
W007 = "eventbus.W007"  # durable runs go to a backend that runs nothing, or runs in-process
W008 = "eventbus.W008"  # PRESENCE on a channel layer with no shared presence store
W009 = "eventbus.W009"  # (deploy) a Sentinel hosts entry watched by fewer than 3 sentinels
W010 = "eventbus.W010"  # (deploy) the sink's channel layer is in memory: one process only
W011 = "eventbus.W011"  # (database) durable runs on SQLite with a rollback journal

_NUMBERS = (
    "MAX_PAYLOAD_BYTES",
    "RELAY_BATCH_SIZE",
    "RELAY_MAX_ATTEMPTS",
    "RELAY_BACKOFF_BASE",
    "RELAY_BACKOFF_MAX",
    "RELAY_SWEEP_AFTER",
    "RELAY_POLL_INTERVAL",
    "RELAY_CLAIM_SECONDS",
    "DURABLE_MAX_ATTEMPTS",
    "DURABLE_BACKOFF_BASE",
    "DURABLE_BACKOFF_MAX",
    "DURABLE_RUN_TIMEOUT",
    "WS_MAX_FRAME_BYTES",
    "WS_MAX_SUBSCRIPTIONS",
    "WS_MAX_ERRORS",
    "WS_REAUTHORIZE_SECONDS",
    "WS_SEND_TIMEOUT",
    "WS_SEND_QUEUE",
    "RESUME_MAX_EVENTS",
    "WS_MAX_CONNECTIONS_PER_USER",
    "WS_MAX_CONNECTIONS_PER_IP",
    "WS_CONNECTS_PER_MINUTE",
    "WS_FRAMES_PER_MINUTE",
    "WS_SUBSCRIBES_PER_MINUTE",
    "WS_REPLAY_EVENTS_PER_MINUTE",
    "WS_SUBSCRIBE_TIMEOUT",
    "WS_ANONYMOUS_MAX_FORBIDDEN",
    "HEALTH_MAX_LAG",
    "PRESENCE_HEARTBEAT_SECONDS",
    "PRESENCE_TTL_SECONDS",
)
# Counts that may be 0 (nothing of it is healthy).
_COUNTS = ("HEALTH_MAX_DEAD_RUNS", "HEALTH_MAX_FAILED_EVENTS", "HEALTH_MAX_RETRYING")


def register_checks() -> None:
    """Register the checks with Django (from ``AppConfig.ready()``)."""
    register(check_eventbus, Tags.compatibility)
    register(check_daphne_deploy, Tags.security, deploy=True)
    register(check_layer_deploy, Tags.compatibility, deploy=True)
    register(check_sentinel_quorum, Tags.compatibility, deploy=True)
    register(check_durable_journal, Tags.database)


def check_eventbus(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """Every check below, in this order (Django's registry is a set: one entry keeps it)."""
    return [
        message
        for check in (
            check_settings,
            check_catalog,
            check_handlers,
            check_durable,
            check_model_events,
            check_redis_client,
            check_layer_hosts,
            check_authorization,
            check_presence,
            check_sink,
            check_router,
            check_numbers,
            check_counts,
            check_metrics_dir,
            check_log_database,
            check_origins,
            check_server_message_size,
        )
        for message in check(app_configs, **kwargs)
    ]


def _settings_usable() -> bool:
    # When EVENTBUS is not a dict, E001 says so; checks of the defaults would only add noise.
    return isinstance(conf.raw_setting(), dict)


def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    raw = conf.raw_setting()
    if not isinstance(raw, dict):
        return [
            Error(
                f"EVENTBUS must be a dict, not {type(raw).__name__}.",
                hint="Set EVENTBUS = {'CATALOGS': ['myapp.events.EVENT_PAYLOAD_MAP']}.",
                id=E001,
            )
        ]
    messages: list[CheckMessage] = []
    settings = conf.get_settings()
    if settings.unknown_keys:
        messages.append(
            Error(
                f"EVENTBUS has unknown keys: {', '.join(settings.unknown_keys)}.",
                hint="Check the spelling against the settings listed in the README.",
                id=E001,
            )
        )
    if not settings.CATALOGS:
        messages.append(
            Warning(
                "EVENTBUS['CATALOGS'] is empty, so no event type can be published.",
                hint="List the dotted paths of your EVENT_PAYLOAD_MAP mappings.",
                id=W001,
            )
        )
    return messages


def check_catalog(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    for path, exc in catalog.load_errors:
        if isinstance(exc, ImportError):
            messages.append(
                Error(
                    f"EVENTBUS['CATALOGS'] names {path!r}, which cannot be imported: {exc}",
                    hint="Use the dotted path of a mapping, e.g. 'myapp.events.EVENT_PAYLOAD_MAP'.",
                    obj=path,
                    id=E002,
                )
            )
        elif isinstance(exc, CatalogConflictError):
            messages.append(
                Error(str(exc), hint="Give each event type exactly one payload model.", id=E004)
            )
        else:
            messages.append(
                Error(
                    str(exc),
                    hint="Map members of a str Enum to Pydantic model classes.",
                    obj=path,
                    id=E003,
                )
            )
    for entry in catalog:
        model = entry.payload_model
        if not model.model_config.get("frozen"):
            messages.append(
                Warning(
                    f"Payload model {model.__qualname__} of {entry.name!r} is not frozen, so a "
                    "handler could change what the other handlers see.",
                    hint="Set model_config = ConfigDict(frozen=True).",
                    obj=model,
                    id=W002,
                )
            )
        unknown = entry.spec.private_fields - set(model.model_fields)
        if unknown:
            messages.append(
                Error(
                    f"{entry.name!r} marks {', '.join(sorted(unknown))} private, but "
                    f"{model.__qualname__} has no such field.",
                    hint="private_fields must name fields of the payload model.",
                    obj=model,
                    id=E009,
                )
            )
        messages.extend(version_messages(entry))
    return messages


def version_messages(entry: Any) -> list[CheckMessage]:
    """A type's version must be reachable from every older one, one upcaster per step."""
    spec = entry.spec
    version = spec.version
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        problem = f"has payload version {version!r}; versions are integers from 1"
    else:
        steps = spec.upcasters
        bad_keys = sorted(
            str(key)
            for key in steps
            if isinstance(key, bool) or not isinstance(key, int) or not 1 <= key < version
        )
        missing = [step for step in range(1, version) if step not in steps]
        not_callable = sorted(str(key) for key, func in steps.items() if not callable(func))
        if bad_keys:
            problem = (
                f"is at version {version} but has upcasters from version(s) "
                f"{', '.join(bad_keys)}: versions go backwards, or past the current one"
            )
        elif missing:
            problem = (
                f"is at version {version} but has no upcaster from version(s) "
                f"{', '.join(map(str, missing))}: rows stored then cannot be read"
            )
        elif not_callable:
            problem = (
                f"has upcasters that are not callable (from version(s) {', '.join(not_callable)})"
            )
        else:
            return []
    return [
        Error(
            f"{entry.name!r} {problem}.",
            hint="Give EventSpec(version=N, upcasters={1: v1_to_v2, ..., N-1: ...}): one "
            "function per step, each turning a payload dict into the next version's shape.",
            obj=entry.spec.payload,
            id=E018,
        )
    ]


def check_handlers(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    for problem in get_event_dispatcher().declaration_errors:
        if isinstance(problem.error, UnknownEventTypeError):
            messages.append(
                Error(
                    f"Handler {dotted_name(problem.handler)} is declared for "
                    f"{problem.event_type!r}: {problem.error}",
                    hint="Fix the event type, or add it to a catalog in EVENTBUS['CATALOGS'].",
                    obj=problem.handler,
                    id=E005,
                )
            )
        else:
            durable = str(problem.error).startswith("Durable handler")
            messages.append(
                Error(
                    str(problem.error),
                    hint="Make it a sync, module-level function with a unique name and a "
                    "positive max_attempts, or declare it without durable=True."
                    if durable
                    else "Annotate the handler's argument as Event[PayloadModel] with the "
                    "catalog's payload model, or leave it unannotated.",
                    obj=problem.handler,
                    id=E006,
                )
            )
    return messages


def check_durable(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """Durable handlers need their events logged, and a task backend that runs them."""
    from .durable import framework_available, task_backend
    from .log import is_logged

    dispatcher = get_event_dispatcher()
    durable = [
        (entry, handler)
        for entry in dispatcher.catalog
        for handler in dispatcher.handlers(entry.member)
        if handler.durable
    ]
    if not durable:
        return []
    messages: list[CheckMessage] = []
    for entry, handler in durable:
        if not is_logged(entry):
            messages.append(
                Error(
                    f"Durable handler {handler.name} handles {entry.name!r}, which is not "
                    "logged: its runs need the event's row.",
                    hint="Log the type (EventSpec(log=True), EVENTBUS['LOG'] = True), or make "
                    "the handler an in-process one.",
                    obj=handler.func,
                    id=E016,
                )
            )
    if not framework_available():
        return [
            *messages,
            Error(
                "Durable handlers are declared, but Django's task framework is missing: "
                "django.tasks (Django 6) or the django-tasks backport (Django 5.2).",
                hint="pip install 'django-eventbus[tasks]' on Django 5.2, and set TASKS.",
                id=E017,
            ),
        ]
    alias = conf.get_settings().DURABLE_TASK_BACKEND
    try:
        backend = task_backend()
        from .tasks import run_handler

        run_handler.using(backend=alias, queue_name=conf.get_settings().DURABLE_QUEUE)
    except Exception as exc:
        return [
            *messages,
            Error(
                f"Durable runs cannot be enqueued on TASKS[{alias!r}]: {type(exc).__name__}: {exc}",
                hint="Define that backend in TASKS (EVENTBUS['DURABLE_TASK_BACKEND']), with "
                "EVENTBUS['DURABLE_QUEUE'] among its queues.",
                id=E017,
            ),
        ]
    kind = type(backend).__name__
    if kind in ("ImmediateBackend", "DummyBackend"):
        what = (
            "never runs them"
            if kind == "DummyBackend"
            else "runs them inside the publishing process, where a crash loses them"
        )
        messages.append(
            Warning(
                f"Durable runs go to TASKS[{alias!r}], a {kind}, which {what}.",
                hint="Use a backend with workers, such as django-tasks-db's DatabaseBackend "
                "and its db_worker command (fine in tests).",
                id=W007,
            )
        )
    return messages


def check_model_events(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    for declaration in bridge.registry:
        messages.extend(model_events_messages(declaration))
    return messages


def model_events_messages(declaration: type[bridge.ModelEvents]) -> list[CheckMessage]:
    """What would make one ``ModelEvents`` declaration fail at its first save."""
    messages: list[CheckMessage] = []
    event_catalog = get_event_dispatcher().catalog
    for rule in declaration.rules():
        if rule.event_type not in event_catalog:
            messages.append(
                Error(
                    f"{declaration.__qualname__} publishes {rule.event_type!r}, which is not in "
                    "any catalog.",
                    hint="Add the event type to a catalog in EVENTBUS['CATALOGS'].",
                    obj=declaration,
                    id=E007,
                )
            )
            continue
        if rule.payload is not None:
            continue
        entry = event_catalog.resolve(rule.event_type)
        available = declaration.default_payload_fields(rule)
        missing = [
            name
            for name, info in entry.payload_model.model_fields.items()
            if info.is_required() and name not in available
        ]
        if missing:
            messages.append(
                Error(
                    f"{declaration.__qualname__} cannot build the payload of {entry.name!r}: "
                    f"{declaration.model.__name__} has no field for {', '.join(sorted(missing))}.",
                    hint="Rename the payload fields, or give the rule a payload= callable.",
                    obj=declaration,
                    id=E008,
                )
            )
    return messages


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
                    id=W004,
                )
            )
    return messages


_REDIS_LAYERS = (
    "channels_redis.core.RedisChannelLayer",
    "channels_redis.pubsub.RedisPubSubChannelLayer",
)


def _redis_layer_hosts() -> Iterator[tuple[str, Any]]:
    """(alias, hosts) of every CHANNEL_LAYERS alias that is a channels_redis layer."""
    for alias, config in (getattr(django_settings, "CHANNEL_LAYERS", None) or {}).items():
        if not isinstance(config, dict):
            continue
        try:
            backend = import_string(config.get("BACKEND", ""))
        except ImportError:
            continue
        names = {f"{cls.__module__}.{cls.__qualname__}" for cls in getattr(backend, "__mro__", ())}
        if names.isdisjoint(_REDIS_LAYERS):
            continue
        yield alias, (config.get("CONFIG") or {}).get("hosts")


def _is_address(value: Any) -> bool:
    """A (host, port) pair, as a tuple or a list (JSON settings)."""
    return (
        isinstance(value, list | tuple)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
    )


def check_layer_hosts(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """channels_redis reads a bad ``hosts`` entry only at the first connection: a Sentinel
    entry without ``master_name`` becomes a plain pool (to localhost:6379) whose first
    connection fails on the ``sentinels`` argument."""
    messages: list[CheckMessage] = []
    for alias, hosts in _redis_layer_hosts():
        where = f"CHANNEL_LAYERS[{alias!r}]['CONFIG']['hosts']"
        if hosts is None:
            continue  # channels_redis's default, redis://localhost:6379
        if not isinstance(hosts, list | tuple):
            messages.append(
                Error(
                    f"{where} is a {type(hosts).__name__}, not a list: channels_redis "
                    "refuses it when the layer is first used.",
                    hint="Give a list, even of one host: ['redis://127.0.0.1:6379'].",
                    id=E024,
                )
            )
            continue
        for index, host in enumerate(hosts):
            messages += _check_host(f"{where}[{index}]", host)
    return messages


def _check_host(where: str, host: Any) -> list[CheckMessage]:
    if isinstance(host, str) or _is_address(host):
        return []
    if not isinstance(host, dict):
        return [
            Error(
                f"{where} is {host!r}: channels_redis takes a URL, a (host, port) pair or a "
                "dict of connection arguments.",
                hint="For example 'redis://127.0.0.1:6379/0' or ('127.0.0.1', 6379).",
                id=E024,
            )
        ]
    if ("sentinels" in host) != ("master_name" in host):
        given, missing = ("sentinels", "master_name")
        if "master_name" in host:
            given, missing = missing, given
        return [
            Error(
                f"{where} has {given!r} but no {missing!r}: channels_redis finds the master "
                "through the sentinels only when both are given; with one alone the layer "
                "fails at its first connection (a TypeError or a KeyError).",
                hint="A Sentinel entry: {'sentinels': [('10.0.0.1', 26379), ...], "
                "'master_name': 'mymaster'} (the name of the sentinels' 'sentinel monitor').",
                id=E023,
            )
        ]
    sentinels = host.get("sentinels")
    if sentinels is not None and not (
        isinstance(sentinels, list | tuple) and sentinels and all(map(_is_address, sentinels))
    ):
        return [
            Error(
                f"{where}['sentinels'] is {sentinels!r}, not a non-empty list of "
                "(host, port) pairs.",
                hint="For example [('10.0.0.1', 26379), ('10.0.0.2', 26379), ('10.0.0.3', 26379)].",
                id=E024,
            )
        ]
    return []


def check_sentinel_quorum(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """(deploy) Fewer than three sentinels cannot both agree on a failover and lose one."""
    messages: list[CheckMessage] = []
    for alias, hosts in _redis_layer_hosts():
        if not isinstance(hosts, list | tuple):
            continue
        for index, host in enumerate(hosts):
            sentinels = host.get("sentinels") if isinstance(host, dict) else None
            if isinstance(sentinels, list | tuple) and 0 < len(sentinels) < 3:
                messages.append(
                    Warning(
                        f"CHANNEL_LAYERS[{alias!r}]['CONFIG']['hosts'][{index}] lists "
                        f"{len(sentinels)} sentinel(s): with fewer than three, losing one "
                        "leaves no majority to agree on a failover, or no sentinel to ask "
                        "where the master is.",
                        hint="Run three sentinels (on separate machines) and list them all.",
                        id=W009,
                    )
                )
    return messages


def _import_error(path: str) -> Exception | None:
    try:
        import_string(path)
    except ImportError as exc:
        return exc
    return None


def check_authorization(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    if not _settings_usable():
        return []
    hook = conf.get_settings().AUTHORIZE
    if hook is None:
        return [
            Warning(
                "EVENTBUS['AUTHORIZE'] is not set: anonymous WebSocket users are refused, and "
                "every signed-in user may subscribe to every channel.",
                hint="Point it at a callable(user, channel) -> bool that checks membership.",
                id=W003,
            )
        ]
    if error := _import_error(hook):
        return [
            Error(
                f"EVENTBUS['AUTHORIZE'] = {hook!r} cannot be imported: {error}",
                hint="Use the dotted path of a callable(user, channel) -> bool.",
                id=E010,
            )
        ]
    return []


# The layers whose Redis holds presence; the in-memory one keeps it in its process.
_PRESENCE_LAYERS = (
    "channels_redis.core.RedisChannelLayer",
    "channels_redis.pubsub.RedisPubSubChannelLayer",
)


def check_presence(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    if not _settings_usable():
        return []
    settings = conf.get_settings()
    messages: list[CheckMessage] = []
    beat, ttl = settings.PRESENCE_HEARTBEAT_SECONDS, settings.PRESENCE_TTL_SECONDS
    if _positive(beat) and _positive(ttl) and ttl <= beat:
        messages.append(
            Error(
                f"EVENTBUS['PRESENCE_TTL_SECONDS'] ({ttl}) must be greater than "
                f"EVENTBUS['PRESENCE_HEARTBEAT_SECONDS'] ({beat}): every present user "
                "would expire before its server renews it, and leave and join again.",
                hint="Give the TTL at least two or three heartbeats (defaults: 10 and 30).",
                id=E022,
            )
        )
    hook = settings.PRESENCE
    if hook is None:
        return messages
    error = _import_error(hook)
    if error is None and not callable(import_string(hook)):
        error = TypeError("it is not callable")
    if error is not None:
        messages.append(
            Error(
                f"EVENTBUS['PRESENCE'] = {hook!r} is not a usable presence hook: {error}",
                hint="Use the dotted path of a callable(user, channel) -> dict | None, or "
                "None to turn presence off.",
                id=E021,
            )
        )
    layers = getattr(django_settings, "CHANNEL_LAYERS", None) or {}
    backend = (layers.get(settings.CHANNEL_LAYER) or {}).get("BACKEND")
    if backend is not None and backend not in _PRESENCE_LAYERS:
        in_memory = backend == "channels.layers.InMemoryChannelLayer"
        messages.append(
            Warning(
                f"Presence is on, and the channel layer {settings.CHANNEL_LAYER!r} is "
                + (
                    "the InMemoryChannelLayer: presence is kept in this process's memory, "
                    "and other server processes do not see its users."
                    if in_memory
                    else f"{backend}, which has no presence store: presence is unavailable."
                ),
                hint="Use channels_redis (RedisChannelLayer or RedisPubSubChannelLayer), whose "
                "Redis keeps presence for every server process.",
                id=W008,
            )
        )
    return messages


def check_sink(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    if not _settings_usable():
        return []
    settings = conf.get_settings()
    if settings.SINK is None:
        return []
    error = _import_error(settings.SINK)
    if error is None and not callable(getattr(import_string(settings.SINK), "send", None)):
        error = TypeError("it has no send(events) method")
    if error is not None:
        return [
            Error(
                f"EVENTBUS['SINK'] = {settings.SINK!r} is not a usable sink: {error}",
                hint="Use 'eventbus.sinks.ChannelLayerSink', another Sink class, or None.",
                id=E011,
            )
        ]
    layers = getattr(django_settings, "CHANNEL_LAYERS", None) or {}
    if settings.SINK == "eventbus.sinks.ChannelLayerSink" and settings.CHANNEL_LAYER not in layers:
        return [
            Error(
                f"The sink broadcasts on the channel layer {settings.CHANNEL_LAYER!r}, which "
                "settings.CHANNEL_LAYERS does not define.",
                hint="Configure CHANNEL_LAYERS (channels_redis in production), set "
                "EVENTBUS['CHANNEL_LAYER'] to an alias it has, or set EVENTBUS['SINK'] = None.",
                id=E012,
            )
        ]
    return []


def check_router(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    if not _settings_usable():
        return []
    router = conf.get_settings().CHANNEL_ROUTER
    if error := _import_error(router):
        return [
            Error(
                f"EVENTBUS['CHANNEL_ROUTER'] = {router!r} cannot be imported: {error}",
                hint="Use the dotted path of a callable(event) -> list of channel names.",
                id=E013,
            )
        ]
    return []


def _positive(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and value > 0


def check_numbers(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    if not _settings_usable():
        return []
    settings = conf.get_settings()
    messages: list[CheckMessage] = []
    for name in _NUMBERS:
        value = getattr(settings, name)
        if not _positive(value):
            messages.append(
                Error(
                    f"EVENTBUS[{name!r}] must be a positive number, not {value!r}.",
                    hint="See the settings table in the README for defaults.",
                    id=E014,
                )
            )
    return messages


def check_counts(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    if not _settings_usable():
        return []
    settings = conf.get_settings()
    messages: list[CheckMessage] = []
    for name in _COUNTS:
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            messages.append(
                Error(
                    f"EVENTBUS[{name!r}] must be a whole number of 0 or more, not {value!r}.",
                    hint="It is how many are still healthy; 0 means none (the default).",
                    id=E019,
                )
            )
    return messages


def check_metrics_dir(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """prometheus-client writes every count of multiprocess mode to that directory."""
    from .metrics import get_metrics, multiprocess_dir

    path = multiprocess_dir()
    if path is None or not get_metrics().enabled:
        return []
    if os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK):
        return []
    return [
        Error(
            f"PROMETHEUS_MULTIPROC_DIR is {path!r}, which is not a writable directory: "
            "prometheus-client's multiprocess mode writes every process's counts there.",
            hint="Create it (empty) before the processes start, writable by all of them; or "
            "unset it for one process, or set EVENTBUS['METRICS'] = False.",
            id=E020,
        )
    ]


# The relay leases, numbers and reads a batch in one UPDATE ... RETURNING.
SQLITE_MIN_VERSION = (3, 35, 0)


def _sqlite_version() -> tuple[int, int, int]:
    import sqlite3

    return sqlite3.sqlite_version_info


def check_log_database(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """The relay's claim needs SQLite 3.35 (``RETURNING``) when the log is on SQLite."""
    from django.db import connections, router

    from .models import EventRecord

    alias = router.db_for_write(EventRecord)
    if connections[alias].vendor != "sqlite" or _sqlite_version() >= SQLITE_MIN_VERSION:
        return []
    found = ".".join(map(str, _sqlite_version()))
    return [
        Error(
            f"The event log is on SQLite {found} (database {alias!r}): the relay claims "
            "a batch with UPDATE ... RETURNING, which needs SQLite 3.35 or newer.",
            hint="Use a Python built with a newer SQLite (or pysqlite3), or PostgreSQL.",
            id=E027,
        )
    ]


def check_durable_journal(
    app_configs: Sequence[AppConfig] | None = None,
    databases: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[CheckMessage]:
    """Durable runs on SQLite want WAL: a rollback journal has no commit that skips the
    fsync safely, so each run makes one more synced commit than a plain task
    (docs/performance.md).

    A database check: it asks the database, so it runs where Django lets checks do that
    (``migrate``, ``check --database``).
    """
    from django.db import DatabaseError, connections, router

    from .models import HandlerRun

    if not databases or not get_event_dispatcher().durable_handlers():
        return []
    alias = router.db_for_write(HandlerRun)
    connection = connections[alias]
    if alias not in databases or connection.vendor != "sqlite":
        return []
    try:
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA journal_mode")
            mode = str(cursor.fetchone()[0]).lower()
    except DatabaseError:  # unreachable: not this check's to say
        return []
    if mode in ("wal", "memory", "off"):
        return []
    return [
        Warning(
            f"Durable runs are on SQLite with the {mode!r} rollback journal (database "
            f"{alias!r}): each run commits four times where a plain task commits three, "
            "each commit with its fsyncs, and readers wait for writers.",
            hint='Use WAL: DATABASES[...]["OPTIONS"]["init_command"] = '
            '"PRAGMA journal_mode=WAL" (docs/deployment.md).',
            id=W011,
        )
    ]


def check_origins(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    if not _settings_usable():
        return []
    from .routing import parse_origin

    origins = conf.get_settings().WS_ALLOWED_ORIGINS
    if origins is None:
        return []
    bad = (
        [repr(origins)]
        if isinstance(origins, str) or not isinstance(origins, tuple)
        else [repr(o) for o in origins if not isinstance(o, str) or parse_origin(o) is None]
    )
    if not bad:
        return []
    return [
        Error(
            f"EVENTBUS['WS_ALLOWED_ORIGINS'] must be a list of origins; not: {', '.join(bad)}.",
            hint="Write each as a browser sends it: scheme://host[:port], e.g. "
            "'https://app.example.com', with no path or trailing slash; or None for "
            "ALLOWED_HOSTS.",
            id=E015,
        )
    ]


# A server limit this many times WS_MAX_FRAME_BYTES is enough: frames between the two
# get eventbus's frame_too_large, larger ones are cut off by the server before it reads them.
_SERVER_LIMIT_FACTOR = 4


def _daphne_serves() -> bool:
    from django.apps import apps

    # Channels' docs put "daphne" in INSTALLED_APPS to make runserver daphne's.
    return apps.is_installed("daphne")


def check_server_message_size(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """The one server whose WebSocket limit a check can read: daphne's runserver."""
    if not _settings_usable() or not _daphne_serves():
        return []
    frame = conf.get_settings().WS_MAX_FRAME_BYTES
    limit = getattr(django_settings, "DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE", 1024 * 1024)
    if not isinstance(frame, int) or (
        isinstance(limit, int) and 0 < limit <= frame * _SERVER_LIMIT_FACTOR
    ):
        return []
    return [
        Warning(
            f"daphne's runserver reads WebSocket messages of up to {limit or 'any'} bytes "
            f"before eventbus refuses those over WS_MAX_FRAME_BYTES ({frame}).",
            hint=f"Set DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE = {frame * _SERVER_LIMIT_FACTOR} "
            f"(daphne: --websocket-max-message-size; uvicorn: --ws-max-size).",
            id=W005,
        )
    ]


def check_daphne_deploy(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    if not _daphne_serves():
        return []
    return [
        Warning(
            "daphne is in INSTALLED_APPS: daphne buffers WebSocket frames without bound for "
            "a client that does not read, so WS_SEND_QUEUE cannot hold (27 MB over 20,000 "
            "events, and the socket was never closed).",
            hint="Serve WebSockets with uvicorn --ws websockets-sansio in production; keep "
            "daphne for runserver and silence this id if you do.",
            id=W006,
        )
    ]


_IN_MEMORY_LAYER = "channels.layers.InMemoryChannelLayer"


def check_layer_deploy(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    if not _settings_usable():
        return []
    settings = conf.get_settings()
    layers = getattr(django_settings, "CHANNEL_LAYERS", None) or {}
    layer = layers.get(settings.CHANNEL_LAYER)
    if settings.SINK != "eventbus.sinks.ChannelLayerSink" or not isinstance(layer, Mapping):
        return []
    if layer.get("BACKEND") != _IN_MEMORY_LAYER:
        return []
    return [
        Warning(
            f"The sink broadcasts on the channel layer {settings.CHANNEL_LAYER!r}, which is "
            "channels' InMemoryChannelLayer: events reach only the sockets of the process "
            "that sends them, so with several server processes (uvicorn --workers), or a "
            "relay worker, sockets miss events.",
            hint="Use channels_redis (RedisChannelLayer or RedisPubSubChannelLayer) in "
            "production; see docs/deployment.md.",
            id=W010,
        )
    ]
