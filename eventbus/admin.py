"""The admin: a read-only view of the event log, handler failures and durable runs,
plus re-delivery and retry."""

from __future__ import annotations

import contextlib
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any, ClassVar
from uuid import UUID

from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db import router
from django.db.models import Case, Count, Exists, F, OuterRef, Q, QuerySet, When
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.dateformat import format as format_date
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe
from django.utils.text import Truncator
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from . import durable, relay
from .catalog import catalog
from .exceptions import UnknownEventTypeError, UnreadablePayloadError
from .ids import key_text, parse_key, parse_uuid
from .models import DeliveryStatus, EventRecord, HandlerFailure, HandlerRun, RunStatus

CHAIN_LIMIT = 500
"""At most this many events of one correlation id are drawn on an event's page."""

REDELIVER_BATCH = 500
"""Rows per UPDATE when an action changes many (re-delivery, retry)."""

SHORT_ID = 8
"""Hex digits of a UUID that the lists show; the full id is in the title and the search."""


def _parse_uuid(term: str) -> UUID | None:
    try:
        return parse_uuid(term)
    except ValueError:
        return None


def _short_id(value: object) -> str:
    """An id short enough for a list column, with the full id in its title.

    UUIDs show their last SHORT_ID hex digits: the first ones of a UUIDv7 (event ids)
    are its timestamp, shared by every event of the same minute. Other keys (integers,
    short strings) stay as they are; long ones are cut.
    """
    if value is None or value == "":
        return ""
    text = str(value)
    uuid = _parse_uuid(text)
    if uuid is not None:
        short = f"…{uuid.hex[-SHORT_ID:]}"
    elif len(text) > 2 * SHORT_ID:
        short = f"{text[: 2 * SHORT_ID - 1]}…"
    else:
        return text
    return format_html('<span class="eventbus-id" title="{}">{}</span>', text, short)


def _when(value: datetime, what: str = "") -> str:
    """A timestamp as people read it: the locale's short date, local time to the second.

    The exact value (ISO 8601, to the microsecond, with its offset) is in the title,
    after ``what`` the time is (``due``, ``finished``) when that is given.
    """
    local = timezone.localtime(value)
    return format_html(
        '<time datetime="{}" title="{}">{} {}</time>',
        value.isoformat(),
        f"{what} {local.isoformat(' ')}" if what else local.isoformat(" "),
        date_format(local, "SHORT_DATE_FORMAT"),
        format_date(local, "H:i:s"),
    )


def _duration(span: timedelta) -> str:
    """A run's duration as people read it: milliseconds, seconds, or minutes and seconds."""
    seconds = span.total_seconds()
    if seconds < 1:
        return _("%(ms)d ms") % {"ms": round(seconds * 1000)}
    if seconds < 60:
        return _("%(s).1f s") % {"s": seconds}
    minutes, rest = divmod(round(seconds), 60)
    return _("%(min)d min %(s)d s") % {"min": minutes, "s": rest}


def _traceback(text: str) -> str:
    """A traceback folded away: one click opens it, as preformatted text."""
    if not text:
        return ""
    return format_html(
        '<details class="eventbus-traceback"><summary>{}</summary><pre>{}</pre></details>',
        _("traceback"),
        text,
    )


def _handler_name(path: str) -> str:
    """A handler's function name, with its full dotted path in the title (and the search)."""
    return format_html('<span title="{}">{}</span>', path, path.rpartition(".")[2])


def _search(
    queryset: QuerySet[Any],
    search_term: str,
    by_uuid: Callable[[UUID], Q],
    text_field: str,
    by_key: Callable[[str], Q] | None = None,
) -> tuple[QuerySet[Any], bool]:
    """Search ids exactly (a UUID column cannot be matched by substring), else text.

    A term that reads as a project or actor key (an integer, a short string) also
    matches ``by_key`` with the key's canonical text.
    """
    term = search_term.strip()
    if not term:
        return queryset, False
    uuid = _parse_uuid(term)
    if uuid is not None:
        return queryset.filter(by_uuid(uuid)), False
    query = Q(**{f"{text_field}__icontains": term})
    if by_key is not None:
        with contextlib.suppress(ValueError):
            query |= by_key(key_text(parse_key(term)))
    return queryset.filter(query), False


class _ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Rows are written by the event bus only; staff with view permission may browse."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class EventTypeFilter(admin.SimpleListFilter):
    """The types present in the log, each with its count, catalog or not.

    One ``GROUP BY type`` over the whole log per page, which can be read from the
    (type, timestamp) index alone; the other filters do not narrow the counts.
    """

    title = _("type")
    parameter_name = "type"

    def lookups(
        self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]
    ) -> list[tuple[str, str]]:
        counts = dict(
            model_admin.get_queryset(request)
            .order_by("type")  # also drops the default ordering from the GROUP BY
            .values_list("type")
            .annotate(Count("pk"))
            .values_list("type", "pk__count")
        )
        current = self.value()
        if current and current not in counts:
            counts[current] = 0  # a link to a type that is gone: still shown as chosen
        return [(name, f"{name} ({count})") for name, count in counts.items()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(type=value) if value else queryset


class _EventChangeList(ChangeList):
    def get_queryset(
        self, request: HttpRequest, exclude_parameters: list[str | None] | None = None
    ) -> QuerySet[Any]:
        # The list never shows payloads, and each can be tens of kilobytes.
        return super().get_queryset(request, exclude_parameters).defer("payload", "last_error")


def _started(run: HandlerRun) -> str:
    if run.started_at is None:
        return format_html("{} {}", _("due"), _when(run.due_at))
    return _when(run.started_at)


def _finished(run: HandlerRun) -> str:
    """When the last attempt ended and how long it took; nothing while one is running."""
    if run.status == RunStatus.RUNNING or run.finished_at is None or run.started_at is None:
        return ""
    took = run.finished_at - run.started_at
    if took < timedelta(0):  # ended by the sweep, which does not restart the clock
        return _when(run.finished_at)
    return format_html("{} ({})", _when(run.finished_at), _duration(took))


class HandlerRunInline(admin.StackedInline):  # type: ignore[type-arg]
    """An event's durable runs on its page: read-only, each linked to its own page.

    Stacked, not tabular: a traceback needs the page's width. Django shows it to users
    who may view handler runs (``eventbus.view_handlerrun``).
    """

    model = HandlerRun
    fk_name = "event"
    verbose_name = _("durable run")
    verbose_name_plural = _("Handlers: durable runs")
    # The heading of each run names its handler (HandlerRun.__str__).
    fields = (("status", "attempts_of", "started", "finished"), "error")
    readonly_fields = ("status", "attempts_of", "started", "finished", "error")
    extra = 0
    can_delete = False
    show_change_link = True

    def get_queryset(self, request: HttpRequest) -> QuerySet[HandlerRun]:
        # Recorded together in subscription order, with increasing ids (UUIDv7);
        # a run added later (eventbus_replay of a new handler) comes after them.
        return super().get_queryset(request).order_by("created_at", "id")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description=_("attempts"))
    def attempts_of(self, obj: HandlerRun) -> str:
        return f"{obj.attempts}/{obj.max_attempts}"

    @admin.display(description=_("started"))
    def started(self, obj: HandlerRun) -> str:
        return _started(obj)

    @admin.display(description=_("finished (took)"))
    def finished(self, obj: HandlerRun) -> str:
        return _finished(obj)

    @admin.display(description=_("last error"))
    def error(self, obj: HandlerRun) -> str:
        return format_html("{}{}", obj.last_error, _traceback(obj.traceback))


@admin.register(EventRecord)
class EventRecordAdmin(_ReadOnlyAdmin):
    # Few, short columns: with the admin's two sidebars, a 1280 px screen leaves the
    # table about 630 px. Ids are shortened (_short_id); attempts join the status.
    list_display = ("event_type", "project", "actor", "delivery", "when")
    list_filter = (
        EventTypeFilter,
        "actor_type",
        "status",
        ("timestamp", admin.DateFieldListFilter),
    )
    date_hierarchy = "timestamp"
    # Only shows the search box: get_search_results() does the searching.
    search_fields = ("id", "correlation_id", "project_id", "type")
    search_help_text = _("A full event id, correlation id or project id, or part of an event type.")
    show_full_result_count = False  # no COUNT(*) over the whole log on every filtered page
    show_facets = admin.ShowFacets.NEVER  # one COUNT per filter choice is too much for a log
    actions = ("redeliver_events",)
    inlines = (HandlerRunInline,)
    fieldsets = (
        (None, {"fields": ("id", "type", "timestamp", "project_id", "actor", "payload_json")}),
        (_("Chain"), {"fields": ("correlation_id", "causation_id", "chain")}),
        (
            _("Delivery"),
            {
                "fields": (
                    "status",
                    "attempts",
                    "last_error",
                    "next_attempt_at",
                    "delivered_at",
                    "sequence",
                )
            },
        ),
    )
    # In-process handlers leave a row only when they raise; durable ones have a run each
    # (the inline below this section). Two records of different kinds, so two sections.
    failures_fieldset = (_("Handlers: in-process failures"), {"fields": ("handler_failures",)})
    readonly_fields = (*flatten_fieldsets(fieldsets), "handler_failures")

    class Media:
        css: ClassVar[dict[str, tuple[str, ...]]] = {"all": ("eventbus/admin.css",)}

    def get_urls(self) -> list[URLPattern]:
        catalog_view = self.admin_site.admin_view(self.catalog_view)
        dashboard_view = self.admin_site.admin_view(self.dashboard_view)
        return [
            path("catalog/", catalog_view, name="eventbus_eventrecord_catalog"),
            path("dashboard/", dashboard_view, name="eventbus_eventrecord_dashboard"),
            *super().get_urls(),
        ]

    def dashboard_view(self, request: HttpRequest) -> TemplateResponse:
        """Delivery at a glance: traffic, lag, failures and sockets (eventbus.dashboard)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        from . import dashboard

        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": _("Delivery dashboard"),
            **dashboard.context(),
        }
        return TemplateResponse(request, "admin/eventbus/dashboard.html", context)

    def catalog_view(self, request: HttpRequest) -> TemplateResponse:
        """Every event type: version, model, flags, handlers, count in the log, schema, example."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        from .dispatcher import get_event_dispatcher
        from .export import payload_schema
        from .wire import public_json

        records = EventRecord.objects.using(router.db_for_read(EventRecord))
        counts = dict(records.values_list("type").annotate(n=Count("id")).order_by())
        rows = []
        for entry in sorted(catalog, key=lambda e: e.name):
            spec = entry.spec
            example, no_example = "", str(_("No event of this type in the log yet."))
            newest = records.filter(type=entry.name).order_by("-timestamp").first()
            if newest is not None:
                try:
                    event = newest.to_event()
                    example = json.dumps(
                        json.loads(public_json(event, entry))["payload"],
                        indent=2,
                        ensure_ascii=False,
                    )
                except Exception as exc:  # an unreadable row: say so, as its page does
                    no_example = f"{type(exc).__name__}: {exc}"
            flags = [str(_("logged")) if spec.log else str(_("not logged"))]
            flags.append(str(_("broadcast")) if spec.broadcast else str(_("not broadcast")))
            if spec.private_fields:
                flags.append(_("private: %s") % ", ".join(sorted(spec.private_fields)))
            rows.append(
                {
                    "name": entry.name,
                    "version": spec.version,
                    "model": spec.payload.__name__,
                    "model_path": f"{spec.payload.__module__}.{spec.payload.__qualname__}",
                    "count": counts.get(entry.name, 0),
                    "flags": "; ".join(flags),
                    "handlers": [
                        {"name": h.name, "short": h.name.rsplit(".", 1)[-1], "durable": h.durable}
                        for h in get_event_dispatcher().handlers(entry.member)
                    ],
                    "schema": json.dumps(payload_schema(entry.member), indent=2),
                    "example": example,
                    "no_example": no_example,
                }
            )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": _("Event catalog"),
            "rows": rows,
        }
        return TemplateResponse(request, "admin/eventbus/catalog.html", context)

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return _EventChangeList

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        fieldsets = super().get_fieldsets(request, obj)
        if request.user.has_perm("eventbus.view_handlerfailure"):
            return [*fieldsets, self.failures_fieldset]
        return fieldsets

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[EventRecord], search_term: str
    ) -> tuple[QuerySet[EventRecord], bool]:
        """A UUID matches event, correlation, project or actor id; a key, the project or
        actor; any text, part of the type."""

        def by_key(text: str) -> Q:
            return Q(project_id=text) | Q(actor_id=text)

        return _search(
            queryset,
            search_term,
            lambda uuid: Q(id=uuid) | Q(correlation_id=uuid) | by_key(str(uuid)),
            text_field="type",
            by_key=by_key,
        )

    @admin.display(description=_("type"), ordering="type")
    def event_type(self, obj: EventRecord) -> str:
        return format_html('<span title="{}">{}</span>', obj.pk, obj.type)

    @admin.display(description=_("project"), ordering="project_id")
    def project(self, obj: EventRecord) -> str:
        return _short_id(obj.project_id)

    @admin.display(description=_("actor"), ordering="actor_type")
    def actor(self, obj: EventRecord) -> str:
        """The actor's type, and its short id when the event names one."""
        if not obj.actor_id:
            return obj.actor_type
        return format_html("{} {}", obj.actor_type, _short_id(obj.actor_id))

    @admin.display(description=_("status"), ordering="status")
    def delivery(self, obj: EventRecord) -> str:
        """The status; for a pending event that has failed before, how often it was tried."""
        if obj.status == DeliveryStatus.PENDING and obj.attempts:
            return ngettext(
                "pending, %(count)d attempt", "pending, %(count)d attempts", obj.attempts
            ) % {"count": obj.attempts}
        return obj.get_status_display()

    @admin.display(description=_("time"), ordering="timestamp")
    def when(self, obj: EventRecord) -> str:
        return _when(obj.timestamp)

    @admin.display(description=_("payload"))
    def payload_json(self, obj: EventRecord) -> SafeString:
        """The payload as the current catalog reads it (upcast), or why it cannot be read."""

        def pretty(value: Any) -> str:
            return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)

        try:
            entry = catalog.resolve(obj.type)
            payload = entry.read_payload(obj.payload, obj.payload_version)
        except (UnknownEventTypeError, UnreadablePayloadError) as exc:
            return format_html(
                '<p class="errornote">{}</p><p>{}</p><pre>{}</pre>',
                str(exc),
                _("As stored (version %(version)s):") % {"version": obj.payload_version},
                pretty(obj.payload),
            )
        shown = format_html("<pre>{}</pre>", pretty(payload.model_dump(mode="json")))
        if obj.payload_version == entry.spec.version:
            return shown
        return format_html(
            "<p>{}</p>{}<details><summary>{}</summary><pre>{}</pre></details>",
            _("Stored as version %(stored)s, shown as version %(current)s (upcast).")
            % {"stored": obj.payload_version, "current": entry.spec.version},
            shown,
            _("as stored"),
            pretty(obj.payload),
        )

    @admin.display(description=_("events with this correlation id"))
    def chain(self, obj: EventRecord) -> SafeString:
        """The correlation's events as a tree by causation id, oldest first, capped."""
        records = EventRecord.objects.using(obj._state.db).filter(correlation_id=obj.correlation_id)
        rows = list(
            records.order_by("timestamp", "id").only("type", "timestamp", "status", "causation_id")[
                : CHAIN_LIMIT + 1
            ]
        )
        notice = SafeString()
        if len(rows) > CHAIN_LIMIT:
            rows = rows[:CHAIN_LIMIT]
            notice = format_html(
                "<p>{}</p>",
                _("Showing the first %(shown)d of %(total)d events.")
                % {"shown": CHAIN_LIMIT, "total": records.count()},
            )
        if obj.pk not in {row.pk for row in rows}:
            rows.append(obj)
        tree = mark_safe("".join(self._chain_html(rows, obj)))  # constant tags and format_html()
        return format_html("{}{}", notice, tree)

    @admin.display(description=_("failures"))
    def handler_failures(self, obj: EventRecord) -> SafeString:
        """Each time an in-process handler raised on this event, oldest first."""
        failures = HandlerFailure.objects.using(obj._state.db).filter(event_id=obj.pk)
        rows = [
            format_html(
                '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}{}</td></tr>',
                reverse(f"{self.admin_site.name}:eventbus_handlerfailure_change", args=[row.pk]),
                _when(row.occurred_at),
                _handler_name(row.handler),
                row.error,
                _traceback(row.traceback),
            )
            for row in failures.order_by("occurred_at", "pk")
        ]
        if not rows:
            return format_html("<p>{}</p>", _("No in-process handler raised on this event."))
        return format_html(
            '<table class="eventbus-failures"><thead><tr><th>{}</th><th>{}</th><th>{}</th>'
            "</tr></thead><tbody>{}</tbody></table>",
            _("time"),
            _("handler"),
            _("error"),
            mark_safe("".join(rows)),  # each built by format_html()
        )

    def _chain_html(self, rows: list[EventRecord], current: EventRecord) -> Iterator[str]:
        # Walked with an explicit stack: deep chains must not hit the recursion limit,
        # and the visited set stops causation cycles in corrupted data.
        by_id = {row.pk: row for row in rows}
        children: dict[UUID, list[EventRecord]] = defaultdict(list)
        roots = []
        for row in rows:
            if row.causation_id in by_id and row.causation_id != row.pk:
                children[row.causation_id].append(row)
            else:
                roots.append(row)  # a first event, or its cause is missing or past the cap

        def tops() -> Iterator[EventRecord]:
            yield from roots
            yield from rows  # events on a causation cycle have no root: start from the oldest

        visited: set[UUID] = set()
        stack: list[Iterator[EventRecord]] = [tops()]
        yield '<ul class="eventbus-chain">'
        while stack:
            node = next(stack[-1], None)
            if node is None:
                stack.pop()
                yield "</ul></li>" if stack else "</ul>"
                continue
            if node.pk in visited:
                continue
            visited.add(node.pk)
            yield self._chain_item(node, current)
            if children[node.pk]:
                yield "<ul>"
                stack.append(iter(children[node.pk]))
            else:
                yield "</li>"

    def _chain_item(self, row: EventRecord, current: EventRecord) -> str:
        url = reverse(f"{self.admin_site.name}:eventbus_eventrecord_change", args=[row.pk])
        label = format_html(
            '<a href="{}">{}</a> {} · {}',
            url,
            row.type,
            _when(row.timestamp),  # the tree gives the order; the title has the milliseconds
            row.get_status_display(),
        )
        if row.pk == current.pk:
            return format_html(
                '<li class="eventbus-current" aria-current="page"><strong>{}</strong> ({})',
                label,
                _("this event"),
            )
        return format_html("<li>{}", label)

    @admin.action(permissions=["redeliver"], description=_("Re-deliver selected events"))
    def redeliver_events(self, request: HttpRequest, queryset: QuerySet[EventRecord]) -> None:
        count = sum(
            relay.redeliver(batch, using=queryset.db)
            for batch in _batches(queryset.values_list("id", flat=True), REDELIVER_BATCH)
        )
        self.message_user(
            request,
            ngettext(
                "%(count)d event queued for re-delivery.",
                "%(count)d events queued for re-delivery.",
                count,
            )
            % {"count": count},
            messages.SUCCESS,
        )

    def has_redeliver_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("eventbus.redeliver_eventrecord")


def _batches(ids: Iterable[UUID], size: int) -> Iterator[list[UUID]]:
    # "Select all" can pick the whole log; keep each UPDATE's IN list small.
    batch: list[UUID] = []
    for event_id in ids:
        batch.append(event_id)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@admin.register(HandlerFailure)
class HandlerFailureAdmin(_ReadOnlyAdmin):
    list_display = ("occurred_at", "event_type", "handler", "event", "error_summary")
    list_filter = ("event_type", "handler")
    search_fields = ("event_id", "handler")  # only shows the box; see get_search_results()
    search_help_text = _("A full event id, or part of a handler's dotted path.")
    date_hierarchy = "occurred_at"
    fields = ("event", "event_type", "handler", "error", "traceback_text", "occurred_at")
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[HandlerFailure]:
        # One query tells, for the whole page, which events are in the log to link to.
        queryset: QuerySet[HandlerFailure] = super().get_queryset(request)
        logged = EventRecord.objects.filter(pk=OuterRef("event_id"))
        return queryset.annotate(event_logged=Exists(logged))

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[HandlerFailure], search_term: str
    ) -> tuple[QuerySet[HandlerFailure], bool]:
        """A UUID matches the event id; anything else, part of the handler path."""
        return _search(queryset, search_term, lambda uuid: Q(event_id=uuid), text_field="handler")

    @admin.display(description=_("event"), ordering="event_id")
    def event(self, obj: HandlerFailure) -> str:
        if not getattr(obj, "event_logged", False):
            return str(obj.event_id)
        url = reverse(f"{self.admin_site.name}:eventbus_eventrecord_change", args=[obj.event_id])
        return format_html('<a href="{}">{}</a>', url, obj.event_id)

    @admin.display(description=_("error"))
    def error_summary(self, obj: HandlerFailure) -> str:
        return Truncator(obj.error).chars(120)

    @admin.display(description=_("traceback"))
    def traceback_text(self, obj: HandlerFailure) -> SafeString:
        return format_html("<pre>{}</pre>", obj.traceback)


class _RunChangeList(ChangeList):
    def get_queryset(
        self, request: HttpRequest, exclude_parameters: list[str | None] | None = None
    ) -> QuerySet[Any]:
        # The list shows neither, and a traceback can be tens of kilobytes.
        return super().get_queryset(request, exclude_parameters).defer("traceback", "task_id")


# The time the list shows for a run: when it is due, when it started, when it ended.
_RUN_TIME = Case(
    When(status=RunStatus.PENDING, then=F("due_at")),
    When(status=RunStatus.RUNNING, then=F("started_at")),
    default=F("finished_at"),
)


@admin.register(HandlerRun)
class HandlerRunAdmin(_ReadOnlyAdmin):
    # As the event log's list: few, short columns for the 630 px a 1280 px screen leaves.
    # Dead runs are the status filter's "dead" (?status__exact=dead).
    list_display = ("handler_name", "event_link", "run_status", "time", "error_summary")
    list_filter = ("status", "handler", "event_type")
    search_fields = ("event_id", "handler")  # only shows the box; see get_search_results()
    search_help_text = _("A full event id or run id, or part of a handler's dotted path.")
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    actions = ("retry_runs",)
    fieldsets = (
        (None, {"fields": ("id", "event_link", "event_type", "handler", "run_status")}),
        (
            _("Timing"),
            {
                "fields": (
                    "created_at",
                    "due_at",
                    "enqueued_at",
                    "task_id",
                    "started_at",
                    "finished_at",
                    "took",
                )
            },
        ),
        (_("Last error"), {"fields": ("last_error", "traceback_text")}),
    )
    readonly_fields = flatten_fieldsets(fieldsets)

    class Media:
        css: ClassVar[dict[str, tuple[str, ...]]] = {"all": ("eventbus/admin.css",)}

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return _RunChangeList

    def get_queryset(self, request: HttpRequest) -> QuerySet[HandlerRun]:
        # The event is not a database constraint: pruned events are not linked to.
        queryset: QuerySet[HandlerRun] = super().get_queryset(request)
        logged = EventRecord.objects.filter(pk=OuterRef("event_id"))
        return queryset.annotate(event_logged=Exists(logged))

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[HandlerRun], search_term: str
    ) -> tuple[QuerySet[HandlerRun], bool]:
        """A UUID matches the event id or the run id; anything else, part of the handler path."""
        return _search(
            queryset, search_term, lambda uuid: Q(event_id=uuid) | Q(id=uuid), text_field="handler"
        )

    @admin.display(description=_("handler"), ordering="handler")
    def handler_name(self, obj: HandlerRun) -> str:
        return _handler_name(obj.handler)

    @admin.display(description=_("event"), ordering="event_type")
    def event_link(self, obj: HandlerRun) -> str:
        """The event's type, linked to its page while it is in the log; its id in the title."""
        if not getattr(obj, "event_logged", False):
            return format_html(
                '<span title="{}">{}</span> ({})', obj.event_id, obj.event_type, _("pruned")
            )
        url = reverse(f"{self.admin_site.name}:eventbus_eventrecord_change", args=[obj.event_id])
        return format_html('<a href="{}" title="{}">{}</a>', url, obj.event_id, obj.event_type)

    @admin.display(description=_("status"), ordering="status")
    def run_status(self, obj: HandlerRun) -> str:
        """The status and the attempts made of those allowed (``dead, 3/3``)."""
        return format_html(
            '{}, <span title="{}">{}/{}</span>',
            obj.get_status_display(),
            _("%(attempts)d of %(max)d attempts")
            % {"attempts": obj.attempts, "max": obj.max_attempts},
            obj.attempts,
            obj.max_attempts,
        )

    @admin.display(description=_("time"), ordering=_RUN_TIME)
    def time(self, obj: HandlerRun) -> str:
        """When a pending run is due, a running one started, a done or dead one ended."""
        value: datetime | None
        if obj.status == RunStatus.PENDING:
            value, what = obj.due_at, _("due")
        elif obj.status == RunStatus.RUNNING:
            value, what = obj.started_at, _("started")
        else:
            value, what = obj.finished_at, _("finished")
        return "" if value is None else _when(value, str(what))

    @admin.display(description=_("last error"))
    def error_summary(self, obj: HandlerRun) -> str:
        if not obj.last_error:
            return ""
        return format_html(
            '<span title="{}">{}</span>',
            Truncator(obj.last_error).chars(500),
            Truncator(obj.last_error).chars(120),  # and two lines at most (admin.css)
        )

    @admin.display(description=_("took"))
    def took(self, obj: HandlerRun) -> str:
        return _finished(obj)

    @admin.display(description=_("traceback"))
    def traceback_text(self, obj: HandlerRun) -> SafeString:
        return format_html("<pre>{}</pre>", obj.traceback)

    @admin.action(permissions=["retry"], description=_("Retry selected dead runs"))
    def retry_runs(self, request: HttpRequest, queryset: QuerySet[HandlerRun]) -> None:
        """Give the selected dead runs fresh attempts (``durable.retry``); say what was not."""
        dead: list[UUID] = []
        others: Counter[str] = Counter()
        for run_id, status in queryset.values_list("id", "status").iterator():
            if status == RunStatus.DEAD:
                dead.append(run_id)
            else:
                others[str(RunStatus(status).label)] += 1
        count = sum(durable.retry(batch) for batch in _batches(dead, REDELIVER_BATCH))
        if count:
            self.message_user(
                request,
                ngettext(
                    "%(count)d dead run will run again.",
                    "%(count)d dead runs will run again.",
                    count,
                )
                % {"count": count},
                messages.SUCCESS,
            )
        if len(dead) > count:  # retried by someone else between the list and the click
            others[str(_("no longer dead"))] += len(dead) - count
        skipped = sum(others.values())
        if skipped:
            statuses = ", ".join(f"{n} {label}" for label, n in sorted(others.items()))
            self.message_user(
                request,
                ngettext(
                    "%(count)d selected run was not retried: only dead runs are (%(statuses)s).",
                    "%(count)d selected runs were not retried: only dead runs are (%(statuses)s).",
                    skipped,
                )
                % {"count": skipped, "statuses": statuses},
                messages.WARNING,
            )

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("eventbus.retry_handlerrun")
