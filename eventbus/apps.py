"""The app config: where eventbus is wired together, once, at start-up."""

from django.apps import AppConfig


class EventBusConfig(AppConfig):
    name = "eventbus"
    verbose_name = "Event bus"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
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
        stages = Stages(
            store=EventLog(), hand_off=Relay(), runs=Runs(), record_failure=record_failure
        )
        get_event_dispatcher().start(settings.HANDLER_MODULES, stages)
