from django.apps import AppConfig


class EventBusConfig(AppConfig):
    name = "eventbus"
    verbose_name = "Event bus"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from .catalog import catalog
        from .conf import get_settings
        from .dispatcher import get_event_dispatcher
        from .log import arecord, record, record_failure
        from .relay import Relay

        settings = get_settings()
        catalog.load(settings.CATALOGS)
        dispatcher = get_event_dispatcher()
        # The log row must be written first, inside the publisher's transaction.
        dispatcher.publish_listeners.insert(0, record)
        dispatcher.apublish_listeners.insert(0, arecord)
        relay = Relay()
        dispatcher.commit_listeners.append(relay.hand_off)
        dispatcher.acommit_listeners.append(relay.ahand_off)
        dispatcher.failure_listeners.append(record_failure)
        dispatcher.start(settings.HANDLER_MODULES)
