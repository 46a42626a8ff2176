"""Model signals to catalog events, declared once per model.

::

    class TicketEvents(ModelEvents):
        model = Ticket
        project = "project_id"
        created = OnCreate(AppEvent.TICKET_CREATED)
        status = OnChange("status", AppEvent.TICKET_STATUS_UPDATED)
        closed = OnChange("status", AppEvent.TICKET_CLOSED, when=lambda old, new: new == "closed")

Declaring the class connects it. Old values come from a snapshot of the watched
fields taken when the instance is loaded (``post_init``) and after each save, so
detecting a change costs no query. ``QuerySet.update()`` and ``bulk_create()``
send no model signals and so publish nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from django.db import models
from django.db.models.signals import post_delete, post_init, post_save

from .dispatcher import get_event_dispatcher

PayloadBuilder = Callable[..., dict[str, Any]]
_SNAPSHOT = "_eventbus_snapshot"


@dataclass(frozen=True)
class OnCreate:
    """Publish ``event_type`` when an instance is first saved."""

    event_type: object
    payload: PayloadBuilder | None = None  # called as payload(instance)


@dataclass(frozen=True)
class OnDelete:
    """Publish ``event_type`` after an instance is deleted."""

    event_type: object
    payload: PayloadBuilder | None = None  # called as payload(instance)


@dataclass(frozen=True)
class OnChange:
    """Publish ``event_type`` when a saved instance's ``field`` changed.

    ``when(old, new)`` narrows it to some transitions. The default payload fills
    ``old_<field>``/``new_<field>`` (or ``old_<attname>``/``new_<attname>`` for
    foreign keys) from the change and every other payload field from the
    instance; ``payload(instance, old, new)`` replaces that.
    """

    field: str
    event_type: object
    when: Callable[[Any, Any], bool] | None = None
    payload: PayloadBuilder | None = None


registry: list[type[ModelEvents]] = []


class ModelEvents:
    """Subclass with ``model`` and rules (``OnCreate``/``OnChange``/``OnDelete``) as attributes.

    ``project`` names the attribute (or is a callable) giving the event's
    ``project_id``; ``actor_type`` is the actor type of the events.
    """

    model: ClassVar[type[models.Model]]
    project: ClassVar[str | Callable[[Any], Any] | None] = None
    actor_type: ClassVar[str] = "system"

    _creates: ClassVar[tuple[OnCreate, ...]]
    _changes: ClassVar[tuple[OnChange, ...]]
    _deletes: ClassVar[tuple[OnDelete, ...]]
    _attnames: ClassVar[dict[str, str]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        rules = [value for name, value in vars(cls).items() if not name.startswith("__")]
        cls._creates = tuple(rule for rule in rules if isinstance(rule, OnCreate))
        cls._changes = tuple(rule for rule in rules if isinstance(rule, OnChange))
        cls._deletes = tuple(rule for rule in rules if isinstance(rule, OnDelete))
        cls._attnames = {
            rule.field: getattr(cls.model._meta.get_field(rule.field), "attname", rule.field)
            for rule in cls._changes
        }
        uid = f"eventbus:{cls.__module__}.{cls.__qualname__}"
        post_init.connect(cls._snapshot, sender=cls.model, weak=False, dispatch_uid=uid)
        post_save.connect(cls._saved, sender=cls.model, weak=False, dispatch_uid=uid)
        if cls._deletes:
            post_delete.connect(cls._deleted, sender=cls.model, weak=False, dispatch_uid=uid)
        registry.append(cls)

    @classmethod
    def disconnect(cls) -> None:
        uid = f"eventbus:{cls.__module__}.{cls.__qualname__}"
        for signal in (post_init, post_save, post_delete):
            signal.disconnect(sender=cls.model, dispatch_uid=uid)
        if cls in registry:
            registry.remove(cls)

    @classmethod
    def _snapshot(cls, instance: models.Model, **kwargs: Any) -> None:
        # Read __dict__, not attributes: touching a deferred field would cost a query.
        state = instance.__dict__
        instance.__dict__.setdefault(_SNAPSHOT, {}).update(
            {attname: state[attname] for attname in cls._attnames.values() if attname in state}
        )

    @classmethod
    def _saved(
        cls,
        instance: models.Model,
        created: bool,
        update_fields: frozenset[str] | None = None,
        raw: bool = False,
        **kwargs: Any,
    ) -> None:
        if raw:  # loaddata: fixtures are not domain events
            return
        if created:
            for create in cls._creates:
                cls._publish(
                    create.event_type, instance, _build(create.event_type, create.payload, instance)
                )
        else:
            before = instance.__dict__.get(_SNAPSHOT, {})
            for change in cls._changes:
                attname = cls._attnames[change.field]
                if update_fields is not None and not {change.field, attname} & update_fields:
                    continue
                if attname not in before:
                    continue  # never loaded (deferred): no old value to compare
                old, new = before[attname], instance.__dict__.get(attname)
                if old == new or (change.when is not None and not change.when(old, new)):
                    continue
                cls._publish(
                    change.event_type,
                    instance,
                    _build(
                        change.event_type, change.payload, instance, old, new, change.field, attname
                    ),
                )
        cls._snapshot(instance)

    @classmethod
    def _deleted(cls, instance: models.Model, **kwargs: Any) -> None:
        for delete in cls._deletes:
            cls._publish(
                delete.event_type, instance, _build(delete.event_type, delete.payload, instance)
            )

    @classmethod
    def _publish(cls, event_type: object, instance: models.Model, payload: dict[str, Any]) -> None:
        project = cls.project
        project_id = (
            project(instance)
            if callable(project)
            else (getattr(instance, project) if project else None)
        )
        get_event_dispatcher().publish(
            event_type, payload, project_id=project_id, actor_type=cls.actor_type
        )

    @classmethod
    def rules(cls) -> tuple[OnCreate | OnChange | OnDelete, ...]:
        """Every rule of this declaration, in the order they publish."""
        return (*cls._creates, *cls._changes, *cls._deletes)

    @classmethod
    def default_payload_fields(cls, rule: OnCreate | OnChange | OnDelete) -> set[str]:
        """The payload fields that ``rule``'s default payload can fill from the model."""
        meta = cls.model._meta
        available = {f.name for f in meta.get_fields()} | {
            getattr(f, "attname", f.name) for f in meta.get_fields()
        }
        available.add(f"{meta.model_name}_id")
        if isinstance(rule, OnChange):
            attname = cls._attnames[rule.field]
            available |= {f"{p}_{n}" for p in ("old", "new") for n in (rule.field, attname)}
        return available


def _build(
    event_type: object,
    builder: PayloadBuilder | None,
    instance: models.Model,
    old: Any = None,
    new: Any = None,
    field: str | None = None,
    attname: str | None = None,
) -> dict[str, Any]:
    if builder is not None:
        return builder(instance, old, new) if field is not None else builder(instance)
    wanted = get_event_dispatcher().catalog.resolve(event_type).payload_model.model_fields
    payload: dict[str, Any] = {}
    if field is not None:
        for name in {field, attname}:
            payload[f"old_{name}"], payload[f"new_{name}"] = old, new
    payload[f"{instance._meta.model_name}_id"] = instance.pk
    for model_field in instance._meta.concrete_fields:
        payload.setdefault(model_field.attname, instance.__dict__.get(model_field.attname))
        payload.setdefault(model_field.name, instance.__dict__.get(model_field.attname))
    return {name: value for name, value in payload.items() if name in wanted}
