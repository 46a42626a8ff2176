"""The app config: where eventbus is wired together, once, at start-up."""

from django.apps import AppConfig


class EventBusConfig(AppConfig):
    name = "eventbus"
    verbose_name = "Event bus"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import metrics, tracing
        from .catalog import catalog
        from .checks import register_checks
        from .conf import get_settings
        from .dispatcher import Stages, get_event_dispatcher
        from .durable import Runs
        from .failures import record_failure
        from .log import EventLog
        from .relay import Relay

        register_checks()
        settings = get_settings()
        catalog.load(settings.CATALOGS)
        # Measured or not is decided here, once: off, the dispatcher holds None and the
        # rest of eventbus a recorder that does nothing.
        meter = metrics.load()
        metrics.set_metrics(meter)
        spans = tracing.load()
        tracing.set_tracing(spans)
        stages = Stages(
            store=EventLog(),
            hand_off=Relay(),
            runs=Runs(),
            record_failure=record_failure,
            metrics=meter,
            tracing=spans,
        )
        get_event_dispatcher().start(settings.HANDLER_MODULES, stages)
