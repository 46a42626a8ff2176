"""Writing the event log: one pending row per logged event, in the publisher's transaction.

The dispatcher's store stage (wired by ``AppConfig.ready()``); nothing here runs at import.
With tracing on, the insert is the publish span's ``store`` child.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

from asgiref.sync import sync_to_async
from django.db import connections, router
from django.db.models import Field

from . import conf
from .catalog import CatalogEntry
from .envelope import Event
from .models import EVENT_COLUMNS, EventRecord, event_to_columns
from .tracing import get_tracing


def is_logged(entry: CatalogEntry) -> bool:
    """Whether events of ``entry``'s type get a row (``LOG`` and the type's ``log`` flag)."""
    return conf.get_settings().LOG and entry.spec.log


class EventLog:
    """The store stage of publishing: the row exists exactly when the publisher commits."""

    def store(
        self, event: Event[Any], entry: CatalogEntry, payload: bytes, using: str | None
    ) -> None:
        """Insert the event's row in the current transaction of ``using``, if it is logged."""
        if is_logged(entry):
            _traced_insert(event, payload, using or router.db_for_write(EventRecord))

    async def astore(
        self, event: Event[Any], entry: CatalogEntry, payload: bytes, using: str | None
    ) -> None:
        """Async twin of :meth:`store`: touches the database only when the event is logged."""
        if is_logged(entry):
            await sync_to_async(_traced_insert, thread_sensitive=True)(
                event, payload, using or router.db_for_write(EventRecord)
            )


def _traced_insert(event: Event[Any], payload: bytes, using: str) -> None:
    tracing = get_tracing()
    if tracing is None or event.traceparent is None:
        _insert(event, payload, using)
        return
    with tracing.storing(event):
        _insert(event, payload, using)


_INSERT_SQL: dict[str, str] = {}
_PREPARE: dict[str, list[Callable[[Any, Any], Any] | None]] = {}


def _insert(event: Event[Any], payload: bytes, using: str) -> None:
    """One INSERT of a pending row.

    This runs once per published event, so on SQLite and PostgreSQL it skips the
    model-save machinery (signals, per-field compilation) and hands the payload's
    JSON text straight to the database; elsewhere it saves through the ORM.
    """
    connection = connections[using]
    vendor = connection.vendor
    if vendor not in ("sqlite", "postgresql"):
        EventRecord(**event_to_columns(event, json.loads(payload))).save(
            using=using, force_insert=True
        )
        return
    sql = _INSERT_SQL.get(vendor)
    if sql is None:
        sql = _INSERT_SQL[vendor] = _insert_sql(connection)
        _PREPARE[vendor] = _preparers()
    values = event_to_columns(event, payload.decode())
    params = [
        value if prepare is None else prepare(value, connection)
        for value, prepare in zip(values.values(), _PREPARE[vendor], strict=True)
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _preparers() -> list[Callable[[Any, Any], Any] | None]:
    # UUIDs and datetimes need the backend's form; the rest (text) goes in as it is,
    # the payload as JSON text already.
    prepared = {"id", "timestamp", "correlation_id", "causation_id"}
    return [
        cast("Field[Any, Any]", EventRecord._meta.get_field(column)).get_db_prep_save
        if column in prepared
        else None
        for column in EVENT_COLUMNS
    ]


def _insert_sql(connection: Any) -> str:
    quote = connection.ops.quote_name
    columns = [*EVENT_COLUMNS, "status", "attempts", "last_error"]
    placeholders = [
        "%s::jsonb" if column == "payload" and connection.vendor == "postgresql" else "%s"
        for column in EVENT_COLUMNS
    ]
    values = [*placeholders, "'pending'", "0", "''"]
    return (
        f"INSERT INTO {quote(EventRecord._meta.db_table)} "
        f"({', '.join(quote(c) for c in columns)}) VALUES ({', '.join(values)})"
    )
