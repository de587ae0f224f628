"""The admin of job rows: listing, filters, search, read-only detail, and bulk actions."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _

from .. import actions, dashboard
from ..conf import conf
from ..models import JobRecord, JobStatus
from ..progress import progress_of
from ..redaction import redact_arguments
from ..registry import registry
from ..status import TONE

if TYPE_CHECKING:
    from django.utils.functional import _StrOrPromise as StrOrPromise

    ModelAdmin = admin.ModelAdmin[JobRecord]
    RowPaginator = Paginator[dict[str, Any]]
else:  # django-stubs makes these generic; Django's classes are not subscriptable at run time
    ModelAdmin = admin.ModelAdmin
    RowPaginator = Paginator

#: Above this many matching rows the listing says "10,000+" instead of counting them all.
COUNT_CAP = 10_000


class CappedCountPaginator(RowPaginator):
    """Counts at most ``limit`` + 1 rows, so a page never costs a full COUNT(*) of a large table.

    The limit grows with the page asked for, so paging goes on past it.
    """

    def __init__(self, *args: Any, limit: int = COUNT_CAP, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limit = limit

    @cached_property
    def count(self) -> int:
        object_list: Any = self.object_list
        # Without ORDER BY the capped count is an index-only scan of the filter's index.
        return int(object_list.order_by()[: self.limit + 1].count())

    @property
    def capped(self) -> bool:
        return self.count > self.limit


class JobChangeList(ChangeList):
    """Says "10,000+" rather than a number it did not count to the end."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        paginator = self.paginator
        self.count_capped = bool(getattr(paginator, "capped", False))
        if self.count_capped:
            self.result_count_label = f"{paginator.limit:,}+"
        else:
            self.result_count_label = f"{self.result_count:,}"


class FieldFilter(admin.SimpleListFilter):
    """Filter on the field named ``parameter_name``, with choices that cost no query."""

    def queryset(self, request: HttpRequest, queryset: QuerySet[JobRecord]) -> QuerySet[JobRecord]:
        value = self.value()
        return queryset.filter(**{str(self.parameter_name): value}) if value else queryset


class StatusFilter(FieldFilter):
    title = _("status")
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(str(value), str(label)) for value, label in JobStatus.choices]


class QueueFilter(FieldFilter):
    """The queues from settings: no DISTINCT over the table to build the choices."""

    title = _("queue")
    parameter_name = "queue"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(name, name) for name in conf.queues]


class FunctionFilter(FieldFilter):
    """The project's @job functions (from the registry), not a DISTINCT over the table."""

    title = _("function")
    parameter_name = "func_name"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(name, name) for name in sorted(registry)]


def pretty_json(value: Any) -> str:
    return format_html(
        "<pre class='dj-json'>{}</pre>", json.dumps(value, indent=2, ensure_ascii=False, default=str)
    )


def progress_bar(meta: dict[str, Any] | None) -> str:
    progress = progress_of(meta)
    if not progress:
        return "-"
    percent = progress.get("percent")
    width = 0 if percent is None else max(0, min(100, float(percent)))
    label = f"{progress.get('done')}/{progress.get('total')}"
    if progress.get("message"):
        label += f" · {progress['message']}"
    return format_html(
        "<div class='dj-progress' title='{}'><div class='dj-progress-bar' style='width:{}%'></div></div>"
        "<span class='dj-progress-label'>{}</span>",
        label,
        f"{width:.1f}",
        label,
    )


def confirmed_action(
    name: str, description: StrOrPromise, permission: str
) -> Callable[[Callable[[QuerySet[JobRecord]], actions.ActionResult]], Any]:
    """Make an admin action that asks for confirmation (showing the count), then runs in batches."""

    def decorate(operation: Callable[[QuerySet[JobRecord]], actions.ActionResult]) -> Any:
        def action(modeladmin: JobRecordAdmin, request: HttpRequest, queryset: QuerySet[JobRecord]) -> Any:
            if request.POST.get("confirm") != "yes":
                context = {
                    **modeladmin.admin_site.each_context(request),
                    "title": _("Are you sure?"),
                    "opts": modeladmin.model._meta,
                    "action_name": name,
                    "action_description": description,
                    "count": queryset.count(),
                    "select_across": request.POST.get("select_across", "0"),
                    "selected": request.POST.getlist(ACTION_CHECKBOX_NAME),
                    "sample": list(queryset.values_list("pk", "func_name", "status")[:10]),
                }
                return TemplateResponse(request, "admin/django_jobs/confirm_action.html", context)
            outcome = operation(queryset)
            modeladmin.message_user(request, outcome.message(), messages.SUCCESS)
            return None

        action.__name__ = name
        return admin.action(description=description, permissions=[permission])(action)

    return decorate


requeue_jobs = confirmed_action("requeue_jobs", _("Requeue failed, stopped or canceled jobs"), "requeue")(
    actions.requeue
)
cancel_jobs = confirmed_action("cancel_jobs", _("Cancel queued, scheduled or deferred jobs"), "cancel")(
    actions.cancel
)
stop_jobs = confirmed_action("stop_jobs", _("Stop running jobs"), "stop")(actions.stop)
delete_jobs = confirmed_action("delete_jobs", _("Delete job records"), "delete")(actions.delete)


@admin.register(JobRecord)
class JobRecordAdmin(ModelAdmin):
    list_display = (
        "short_id",
        "func_name",
        "queue",
        "status_badge",
        "attempts",
        "enqueued_at",
        "started_at",
        "duration_display",
        "worker_name",
        "progress_display",
    )
    list_display_links = ("short_id",)
    list_filter = (StatusFilter, QueueFilter, FunctionFilter)
    search_fields = ("id", "func_name")
    search_help_text = _("A job id (or its first characters), or part of a function's dotted path.")
    date_hierarchy = "enqueued_at"
    ordering = ("-enqueued_at",)
    paginator = CappedCountPaginator
    show_full_result_count = False
    list_per_page = 50
    actions = [requeue_jobs, cancel_jobs, stop_jobs, delete_jobs]
    change_list_template = "admin/django_jobs/jobrecord/change_list.html"
    change_form_template = "admin/django_jobs/jobrecord/change_form.html"
    fieldsets = (
        (None, {"fields": ("id", "func_name", "queue", "status_badge", "attempts", "worker_name")}),
        (_("Call"), {"fields": ("args_display", "kwargs_display", "options_display")}),
        (_("Outcome"), {"fields": ("result_display", "error_display", "error_history_display")}),
        (_("Timings"), {"fields": ("enqueued_at", "started_at", "ended_at", "duration_display")}),
        (_("Progress and meta"), {"fields": ("progress_display", "meta_display")}),
        (_("Dependencies"), {"fields": ("depends_on_display", "dependents_display")}),
    )

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return JobChangeList

    def get_paginator(
        self,
        request: HttpRequest,
        queryset: Any,
        per_page: int,
        orphans: int = 0,
        allow_empty_first_page: bool = True,
    ) -> CappedCountPaginator:
        try:
            page = max(1, int(request.GET.get("p", 1)))
        except ValueError:
            page = 1
        return CappedCountPaginator(
            queryset, per_page, orphans, allow_empty_first_page, limit=page * per_page + COUNT_CAP
        )

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [str(field) for _, options in self.fieldsets for field in options["fields"]]

    # -- permissions ---------------------------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def _has(self, request: HttpRequest, codename: str) -> bool:
        return bool(request.user.has_perm(f"{self.opts.app_label}.{codename}"))

    def has_requeue_permission(self, request: HttpRequest) -> bool:
        return self._has(request, "requeue_jobrecord")

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return self._has(request, "cancel_jobrecord")

    def has_stop_permission(self, request: HttpRequest) -> bool:
        return self._has(request, "stop_jobrecord")

    def has_pause_permission(self, request: HttpRequest) -> bool:
        return self._has(request, "pause_queue")

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A running job is stopped first; deleting its row under it would lose its outcome.
        if obj is not None and obj.status == JobStatus.STARTED:
            return False
        return super().has_delete_permission(request, obj)

    def delete_model(self, request: HttpRequest, obj: JobRecord) -> None:
        # The job page's Delete button: the same as the action (its RQ job goes too).
        outcome = actions.delete(JobRecord.objects.filter(pk=obj.pk))
        if outcome.redis_later:  # Django's own message says the row was deleted
            self.message_user(request, outcome.redis_note(), messages.WARNING)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[JobRecord]) -> None:
        actions.delete(queryset)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # ours confirms with a count and works in batches
        return actions

    # -- search ----------------------------------------------------------------

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[JobRecord], search_term: str
    ) -> tuple[QuerySet[JobRecord], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        # Each branch is one indexed lookup: an OR of them, or a '%term%' scan, is not.
        if term.replace("-", "").replace("_", "").isalnum():
            by_id = queryset.filter(pk__startswith=term)
            if by_id.exists():
                return by_id, False
        names = [name for name in registry if term.lower() in name.lower()]
        if names:
            return queryset.filter(func_name__in=names), False
        return queryset.filter(func_name__icontains=term), False

    # -- columns -----------------------------------------------------------------

    @admin.display(description=_("id"), ordering="pk")
    def short_id(self, obj: JobRecord) -> str:
        return obj.id[:12]

    @admin.display(description=_("status"), ordering="status")
    def status_badge(self, obj: JobRecord) -> str:
        return format_html(
            "<span class='dj-badge dj-{} dj-tone-{}'>{}</span>",
            obj.status,
            TONE.get(obj.status, "unknown"),
            obj.get_status_display(),
        )

    @admin.display(description=_("duration"))
    def duration_display(self, obj: JobRecord) -> str:
        duration = obj.duration
        if duration is None:
            return "-"
        seconds = duration.total_seconds()
        return f"{seconds * 1000:.0f} ms" if seconds < 1 else str(timedelta(seconds=round(seconds)))

    @admin.display(description=_("progress"))
    def progress_display(self, obj: JobRecord) -> str:
        return progress_bar(obj.meta)

    # -- detail fields -------------------------------------------------------------

    @admin.display(description=_("arguments"))
    def args_display(self, obj: JobRecord) -> str:
        return pretty_json(redact_arguments(obj.func_name, list(obj.args or []), dict(obj.kwargs or {}))[0])

    @admin.display(description=_("keyword arguments"))
    def kwargs_display(self, obj: JobRecord) -> str:
        return pretty_json(redact_arguments(obj.func_name, list(obj.args or []), dict(obj.kwargs or {}))[1])

    @admin.display(description=_("options"))
    def options_display(self, obj: JobRecord) -> str:
        return pretty_json(obj.options)

    @admin.display(description=_("result"))
    def result_display(self, obj: JobRecord) -> str:
        return pretty_json(obj.result) if obj.status == JobStatus.FINISHED else "-"

    @admin.display(description=_("error"))
    def error_display(self, obj: JobRecord) -> str:
        return format_html("<pre class='dj-traceback'>{}</pre>", obj.error) if obj.error else "-"

    @admin.display(description=_("errors of every attempt"))
    def error_history_display(self, obj: JobRecord) -> str:
        history = obj.error_history or []
        if not history:
            return "-"
        return format_html_join(
            "",
            "<details class='dj-attempt'><summary>Attempt {} · {}</summary><pre class='dj-traceback'>{}</pre>"
            "</details>",
            ((item.get("attempt"), item.get("at"), item.get("error")) for item in history),
        )

    @admin.display(description=_("meta"))
    def meta_display(self, obj: JobRecord) -> str:
        return pretty_json(obj.meta)

    def _links(self, ids: list[str]) -> str:
        if not ids:
            return "-"
        return format_html_join(
            ", ",
            "<a href='{}'>{}</a>",
            ((reverse("admin:django_jobs_jobrecord_change", args=[job_id]), job_id[:12]) for job_id in ids),
        )

    @admin.display(description=_("waits for"))
    def depends_on_display(self, obj: JobRecord) -> str:
        return self._links(list(obj.dependencies.values_list("depends_on_id", flat=True)))

    @admin.display(description=_("jobs waiting for it"))
    def dependents_display(self, obj: JobRecord) -> str:
        return self._links(list(obj.dependents.values_list("job_id", flat=True)[:100]))

    # -- dashboard -------------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        custom = [
            path(
                "dashboard/",
                self.admin_site.admin_view(self.dashboard_view),
                name="django_jobs_dashboard",
            ),
        ]
        return custom + super().get_urls()

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            if not self.has_pause_permission(request):
                raise PermissionDenied
            try:
                message = dashboard.toggle_pause(request.POST.get("queue", ""), request.POST.get("do", ""))
            except ValueError as exc:  # an unknown queue or action
                self.message_user(request, str(exc), messages.ERROR)
            else:
                self.message_user(request, message, messages.SUCCESS)
            return HttpResponseRedirect(reverse("admin:django_jobs_dashboard"))
        try:
            refresh = min(3600, max(0, int(request.GET.get("refresh", "5"))))
        except ValueError:
            refresh = 5
        context = {
            **self.admin_site.each_context(request),
            "title": _("Jobs dashboard"),
            "opts": self.opts,
            "can_pause": self.has_pause_permission(request),
            "refresh": refresh,
            **dashboard.snapshot(),
        }
        return TemplateResponse(request, "admin/django_jobs/dashboard.html", context)
