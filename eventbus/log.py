"""Writing the event log: events in the publisher's transaction, handler failures after.

Wired into the dispatcher by ``AppConfig.ready()``; nothing here runs at import.
"""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
from collections.abc import Iterable
from typing import Any
from uuid import UUID

from asgiref.sync import sync_to_async
from django.db import connections, router, transaction
from pydantic_core import PydanticSerializationError

from . import conf
from .catalog import catalog
from .envelope import Event
from .exceptions import EventSchemaError, PayloadTooLargeError
from .models import EventRecord, HandlerFailure

logger = logging.getLogger("eventbus")
_pending_writes: set[asyncio.Task[None]] = set()


def payload_json(event: Event[Any]) -> bytes:
    """The payload as JSON; refuses what cannot be stored or sent.

    Raises :class:`EventSchemaError` for data JSON cannot hold and
    :class:`PayloadTooLargeError` past ``EVENTBUS['MAX_PAYLOAD_BYTES']``.
    """
    name = str(event.type.value)
    try:
        raw: bytes = event.payload.__pydantic_serializer__.to_json(event.payload)
    except (PydanticSerializationError, ValueError, TypeError) as exc:
        raise EventSchemaError(name, [("payload", f"is not JSON-serializable: {exc}")]) from exc
    limit = conf.get_settings().MAX_PAYLOAD_BYTES
    if len(raw) > limit:
        raise PayloadTooLargeError(
            f"Payload of {name!r} is {len(raw)} bytes of JSON, over the limit of {limit} "
            "(EVENTBUS['MAX_PAYLOAD_BYTES'])."
        )
    return raw


def is_logged(event: Event[Any]) -> bool:
    return conf.get_settings().LOG and catalog.resolve(event.type).spec.log


def record(event: Event[Any], using: str | None) -> None:
    """Insert the event's row in the current transaction of ``using`` (publish listener).

    Raises for a payload that could not be stored or sent, before anything is written.
    """
    payload = _payload_to_store(event)
    if payload is not None:
        _insert(event, payload, using or router.db_for_write(EventRecord))


async def arecord(event: Event[Any], using: str | None) -> None:
    """Async twin of :func:`record`: touches the database only when the event is logged."""
    payload = _payload_to_store(event)
    if payload is not None:
        await sync_to_async(_insert, thread_sensitive=True)(
            event, payload, using or router.db_for_write(EventRecord)
        )


def _payload_to_store(event: Event[Any]) -> bytes | None:
    """The payload JSON when the event is logged; validated too when it is only broadcast."""
    settings = conf.get_settings()
    entry = catalog.resolve(event.type)
    logged = settings.LOG and entry.spec.log
    if not logged and not (entry.spec.broadcast and settings.SINK):
        return None  # neither stored nor sent: no JSON needed
    payload = payload_json(event)  # refuse what could not be stored or sent
    return payload if logged else None


_INSERT_SQL: dict[str, str] = {}


def _insert(event: Event[Any], payload: bytes, using: str) -> None:
    """One INSERT of a pending row.

    This runs once per published event, so on SQLite and PostgreSQL it skips the
    model-save machinery (signals, per-field compilation) and hands the payload's
    JSON text straight to the database; elsewhere it saves through the ORM.
    """
    connection = connections[using]
    vendor = connection.vendor
    if vendor not in ("sqlite", "postgresql"):
        _row(event, json.loads(payload)).save(using=using, force_insert=True)
        return
    sql = _INSERT_SQL.get(vendor)
    if sql is None:
        sql = _INSERT_SQL[vendor] = _insert_sql(connection)
    meta = EventRecord._meta
    uuid = meta.get_field("id").get_db_prep_save
    when = meta.get_field("timestamp").get_db_prep_save
    params = [
        uuid(event.id, connection),
        event.type.value,
        when(event.timestamp, connection),
        uuid(event.project_id, connection),
        uuid(event.actor_id, connection),
        event.actor_type.value,
        payload.decode(),
        uuid(event.correlation_id, connection),
        uuid(event.causation_id, connection),
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _insert_sql(connection: Any) -> str:
    quote = connection.ops.quote_name
    columns = [
        "id", "type", "timestamp", "project_id", "actor_id", "actor_type", "payload",
        "correlation_id", "causation_id", "status", "attempts", "last_error",
    ]  # fmt: skip
    placeholders = ["%s"] * 9
    if connection.vendor == "postgresql":
        placeholders[6] = "%s::jsonb"
    values = [*placeholders, "'pending'", "0", "''"]
    return (
        f"INSERT INTO {quote(EventRecord._meta.db_table)} "
        f"({', '.join(quote(c) for c in columns)}) VALUES ({', '.join(values)})"
    )


def _row(event: Event[Any], payload: Any) -> EventRecord:
    return EventRecord(
        id=event.id,
        type=event.type.value,
        timestamp=event.timestamp,
        project_id=event.project_id,
        actor_id=event.actor_id,
        actor_type=event.actor_type.value,
        payload=payload,
        correlation_id=event.correlation_id,
        causation_id=event.causation_id,
    )


def record_failure(event: Event[Any], handler: str, exc: BaseException) -> None:
    """Store a handler failure (failure listener); from async code, in a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        _store_failure(event, handler, exc)
        return
    task = asyncio.get_running_loop().create_task(
        sync_to_async(_store_failure, thread_sensitive=True)(event, handler, exc)
    )
    _pending_writes.add(task)
    task.add_done_callback(_pending_writes.discard)


def _store_failure(event: Event[Any], handler: str, exc: BaseException) -> None:
    using = router.db_for_write(HandlerFailure)
    # Inside a transaction that may roll back, write after it commits instead.

    def write() -> None:
        HandlerFailure.objects.using(using).create(
            event_id=event.id,
            event_type=event.type.value,
            handler=handler[:300],
            error=f"{type(exc).__name__}: {exc}",
            traceback="".join(traceback.format_exception(exc)),
        )

    transaction.on_commit(write, using=using)


def assign_sequences(ids: Iterable[UUID], using: str | None = None) -> None:
    """Number rows that have no sequence yet, in timestamp order, after their commit.

    PostgreSQL draws from a database sequence; SQLite numbers on from ``MAX``, which
    its write lock serializes.
    """
    ids = list(ids)
    if not ids:
        return
    alias = using or router.db_for_write(EventRecord)
    connection = connections[alias]
    table = EventRecord._meta.db_table
    with transaction.atomic(using=alias), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"""
                UPDATE {table} AS t SET sequence = s.seq
                FROM (
                    SELECT id, nextval('eventbus_event_sequence') AS seq FROM (
                        SELECT id FROM {table}
                        WHERE id = ANY(%s) AND sequence IS NULL
                        ORDER BY timestamp, id
                    ) AS ordered
                ) AS s
                WHERE t.id = s.id
                """,
                [ids],
            )
            return
        # SQLite (3.33+ for UPDATE ... FROM): one statement, serialized by the write lock.
        id_param = EventRecord._meta.pk.get_db_prep_value
        placeholders = ", ".join(["%s"] * len(ids))
        cursor.execute(
            f"""
            UPDATE {table} SET sequence = numbered.seq
            FROM (
                SELECT id, ROW_NUMBER() OVER (ORDER BY timestamp, id)
                    + (SELECT COALESCE(MAX(sequence), 0) FROM {table}) AS seq
                FROM {table}
                WHERE id IN ({placeholders}) AND sequence IS NULL
            ) AS numbered
            WHERE {table}.id = numbered.id
            """,
            [id_param(event_id, connection) for event_id in ids],
        )
