"""The one task eventbus gives Django's task framework: run one durable handler once.

``django.tasks`` on Django 6, the ``django-tasks`` backport before it: the same API, and
the project's ``TASKS`` setting picks the backend whose workers run it. This module is
imported only where runs are enqueued or executed (and by the workers, by its path),
never at start-up: declaring a task asks the framework for its backend.
"""

from __future__ import annotations

from .conf import get_settings

try:
    from django.tasks import task
except ImportError:  # Django 5.2: the backport
    from django_tasks import task  # type: ignore[no-redef,import-not-found,unused-ignore]


@task(
    backend=get_settings().DURABLE_TASK_BACKEND,
    queue_name=get_settings().DURABLE_QUEUE,
)
def run_handler(run_id: str) -> str:
    """Execute the run; what happened ("done", "retrying", "dead", "skipped: ...")."""
    from .durable import execute

    return execute(run_id)
