"""The only reader of ``settings.EVENTBUS``; every default is documented in README.md.

Values are read lazily and cached until Django's ``setting_changed`` signal says
``EVENTBUS`` changed, so ``override_settings(EVENTBUS=...)`` just works.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.dispatch import receiver


@dataclass(frozen=True)
class EventBusSettings:
    # Dotted paths to catalog mappings ({EnumMember: PayloadModel | EventSpec}).
    CATALOGS: tuple[str, ...] = ()
    # Module names autodiscovered in every installed app for @event_handler code.
    HANDLER_MODULES: tuple[str, ...] = ("handlers",)
    # Store every event in the event log (per-type opt-out: EventSpec(log=False)).
    LOG: bool = True
    # Largest accepted payload, in bytes of JSON.
    MAX_PAYLOAD_BYTES: int = 64 * 1024
    # Where committed events go beyond the process: import path of a Sink class, or None.
    SINK: str | None = "eventbus.sinks.ChannelLayerSink"
    # Hand each event to the sink right after its commit (the relay is the safety net).
    HAND_OFF_ON_COMMIT: bool = True
    # The relay: rows per batch, attempts before "failed", backoff in seconds.
    RELAY_BATCH_SIZE: int = 200
    RELAY_MAX_ATTEMPTS: int = 10
    RELAY_BACKOFF_BASE: float = 1.0
    RELAY_BACKOFF_MAX: float = 300.0
    # Pending rows never handed off (their process died) are swept after this many seconds.
    RELAY_SWEEP_AFTER: float = 10.0
    RELAY_POLL_INTERVAL: float = 0.5
    # How long a relay worker owns the rows it claimed before others may retry them.
    RELAY_CLAIM_SECONDS: float = 60.0
    # Durable handlers (eventbus/durable.py): the TASKS alias and queue their runs go to,
    # attempts before a run is dead (per-handler override: max_attempts=), the backoff
    # between attempts, and how long a started run may take before the relay's sweep
    # presumes its worker lost and runs it again.
    DURABLE_TASK_BACKEND: str = "default"
    DURABLE_QUEUE: str = "default"
    DURABLE_MAX_ATTEMPTS: int = 5
    DURABLE_BACKOFF_BASE: float = 2.0
    DURABLE_BACKOFF_MAX: float = 600.0
    DURABLE_RUN_TIMEOUT: float = 600.0
    # Real-time delivery: the CHANNEL_LAYERS alias, and what picks an event's channels.
    CHANNEL_LAYER: str = "default"
    CHANNEL_ROUTER: str = "eventbus.bus.default_channels"
    # WebSocket consumer: authorization hook (import path of callable(user, channel) -> bool).
    AUTHORIZE: str | None = None
    WS_MAX_FRAME_BYTES: int = 4096
    WS_MAX_SUBSCRIPTIONS: int = 50
    WS_MAX_ERRORS: int = 20
    WS_REAUTHORIZE_SECONDS: float = 10.0
    WS_SEND_TIMEOUT: float = 10.0
    # Frames that may wait for one socket; a socket that falls further behind is closed.
    WS_SEND_QUEUE: int = 1000
    RESUME_MAX_EVENTS: int = 1000
    # Origins allowed to open a socket ("https://app.example.com"); None: ALLOWED_HOSTS'
    # hosts on the port the client connected to.
    WS_ALLOWED_ORIGINS: tuple[str, ...] | None = None
    # Hostile clients (eventbus/limits.py): per server process, not global.
    WS_MAX_CONNECTIONS_PER_USER: int = 20
    WS_MAX_CONNECTIONS_PER_IP: int = 50
    WS_CONNECTS_PER_MINUTE: int = 60
    WS_FRAMES_PER_MINUTE: int = 600
    WS_SUBSCRIBES_PER_MINUTE: int = 120
    # Events one client (user, or IP when anonymous) may have replayed per minute, with a
    # burst of two full replays (2 x RESUME_MAX_EVENTS); past it, a resume gets a reset.
    WS_REPLAY_EVENTS_PER_MINUTE: int = 5000
    # Seconds a socket may stay open without ever subscribing.
    WS_SUBSCRIBE_TIMEOUT: float = 60.0
    # Forbidden subscribes an anonymous socket with no subscription may make.
    WS_ANONYMOUS_MAX_FORBIDDEN: int = 3
    # Presence (eventbus/presence.py): import path of a hook (user, channel) -> dict | None
    # (None: not present there; the dict is what others see), or None: presence off.
    # Each server process renews its sockets' entries every PRESENCE_HEARTBEAT_SECONDS;
    # an entry not renewed for PRESENCE_TTL_SECONDS (its process died) is gone.
    PRESENCE: str | None = None
    PRESENCE_HEARTBEAT_SECONDS: float = 10.0
    PRESENCE_TTL_SECONDS: float = 30.0
    # Monitoring (eventbus/metrics.py, tracing.py, health.py). Metrics and spans are on
    # when their optional package is installed, unless turned off here; read at start-up.
    METRICS: bool = True
    TRACING: bool = True
    # What eventbus_health and the health view call unhealthy: relay lag over this many
    # seconds, or more than this many dead durable runs, failed events, or events whose
    # last send failed and that wait for a retry.
    HEALTH_MAX_LAG: float = 60.0
    HEALTH_MAX_DEAD_RUNS: int = 0
    HEALTH_MAX_FAILED_EVENTS: int = 0
    HEALTH_MAX_RETRYING: int = 0
    unknown_keys: tuple[str, ...] = field(default=())


_KNOWN = {f.name for f in fields(EventBusSettings) if f.name.isupper()}


def _read(raw: Any) -> EventBusSettings:
    if not isinstance(raw, Mapping):
        # checks.E001 reports it; run with defaults meanwhile.
        return EventBusSettings()
    values = {key: raw[key] for key in _KNOWN if key in raw}
    for key in ("CATALOGS", "HANDLER_MODULES", "WS_ALLOWED_ORIGINS"):
        if key in values and isinstance(values[key], list | tuple):
            values[key] = tuple(values[key])
    unknown = tuple(sorted(str(key) for key in raw if key not in _KNOWN))
    return EventBusSettings(**values, unknown_keys=unknown)


@functools.cache
def get_settings() -> EventBusSettings:
    return _read(getattr(django_settings, "EVENTBUS", {}))


def raw_setting() -> Any:
    return getattr(django_settings, "EVENTBUS", {})


@receiver(setting_changed)
def _clear_cache(*, setting: str, **kwargs: Any) -> None:
    if setting == "EVENTBUS":
        get_settings.cache_clear()
