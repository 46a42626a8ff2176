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

        settings = get_settings()
        catalog.load(settings.CATALOGS)
        get_event_dispatcher().start(settings.HANDLER_MODULES)
