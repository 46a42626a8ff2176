"""Recording handler failures as rows, so operators see them without reading logs.

The dispatcher's failure stage (wired by ``AppConfig.ready()``). Inside a transaction
that may still roll back, the row is written after the commit.
"""

from __future__ import annotations

import traceback
from typing import Any

from asgiref.sync import sync_to_async
from django.db import router, transaction

from ._asyncio import TaskSet, in_event_loop
from .envelope import Event
from .models import HandlerFailure

_writes = TaskSet()


def record_failure(event: Event[Any], handler: str, exc: BaseException) -> None:
    """Store that ``handler`` raised ``exc`` on ``event``; from async code, in a worker thread."""
    if in_event_loop():
        _writes.start(sync_to_async(_store, thread_sensitive=True)(event, handler, exc))
    else:
        _store(event, handler, exc)


def _store(event: Event[Any], handler: str, exc: BaseException) -> None:
    using = router.db_for_write(HandlerFailure)

    def write() -> None:
        HandlerFailure.objects.using(using).create(
            event_id=event.id,
            event_type=event.type.value,
            handler=handler[:300],
            error=f"{type(exc).__name__}: {exc}",
            traceback="".join(traceback.format_exception(exc)),
        )

    transaction.on_commit(write, using=using)
