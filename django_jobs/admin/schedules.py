"""The admin of periodic jobs: schedules from code and from the admin, drift, run now."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.db.models import F, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone as tz
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from ..conf import conf
from ..cron import next_run
from ..models import PeriodicJob
from ..registry import registry
from ..scheduler import start_run

if TYPE_CHECKING:
    PeriodicJobModelAdmin = admin.ModelAdmin[PeriodicJob]
    PeriodicJobModelForm = forms.ModelForm[PeriodicJob]
else:  # django-stubs makes these generic; Django's classes are not subscriptable at run time
    PeriodicJobModelAdmin = admin.ModelAdmin
    PeriodicJobModelForm = forms.ModelForm

#: Above this many matching rows the listing says "10,000+" instead of counting them all.
COUNT_CAP = 10_000


class PeriodicJobForm(PeriodicJobModelForm):
    """Checks the function against the project's @job functions and the schedule with croniter."""

    class Meta:
        model = PeriodicJob
        fields = [
            "name",
            "func_name",
            "args",
            "kwargs",
            "queue",
            "cron",
            "interval",
            "timezone",
            "missed_runs",
            "enabled",
        ]

    def clean_func_name(self) -> str:
        value = str(self.cleaned_data["func_name"]).strip()
        if value not in registry:
            known = ", ".join(sorted(registry)) or "none found"
            raise forms.ValidationError(
                f"{value!r} is not a @job function of this project. Known jobs: {known}.", code="unknown_job"
            )
        return value

    def clean_queue(self) -> str:
        value = str(self.cleaned_data.get("queue") or "").strip()
        if value and value not in conf.queues:
            raise forms.ValidationError(
                f"Unknown queue {value!r}. Configured queues: {', '.join(conf.queues)} (or leave it blank "
                "for the job's own queue).",
                code="unknown_queue",
            )
        return value


@admin.register(PeriodicJob)
class PeriodicJobAdmin(PeriodicJobModelAdmin):
    form = PeriodicJobForm
    list_display = (
        "name",
        "func_name",
        "schedule",
        "enabled",
        "next_run_at",
        "last_run_link",
        "total_runs",
        "source",
        "drift_display",
    )
    list_filter = ("enabled", "source")
    search_fields = ("name", "func_name")
    readonly_fields = ("next_run_at", "last_run_link", "total_runs", "source", "drift_display", "updated_at")
    actions = ["enable", "disable", "run_now"]

    @admin.display(description=_("schedule"))
    def schedule(self, obj: PeriodicJob) -> str:
        zone = f" ({obj.timezone})" if obj.timezone else ""
        return f"cron {obj.cron}{zone}" if obj.cron else f"every {obj.interval} s"

    @admin.display(description=_("last run"))
    def last_run_link(self, obj: PeriodicJob) -> str:
        if not obj.last_run_id:
            return "-"
        url = reverse("admin:django_jobs_jobrecord_change", args=[obj.last_run_id])
        return format_html("<a href='{}'>{}</a>", url, obj.last_run_at or obj.last_run_id)

    @admin.display(description=_("differs from code"))
    def drift_display(self, obj: PeriodicJob) -> str:
        return ", ".join(obj.drift) or "-"

    def save_model(self, request: HttpRequest, obj: PeriodicJob, form: Any, change: bool) -> None:
        schedule_changed = not change or {"cron", "interval", "timezone", "enabled"} & set(form.changed_data)
        if schedule_changed and obj.enabled:
            obj.next_run_at = next_run(obj.cron, obj.interval, obj.timezone, tz.now())
        super().save_model(request, obj, form, change)

    @admin.action(description=_("Enable selected schedules"), permissions=["change"])
    def enable(self, request: HttpRequest, queryset: QuerySet[PeriodicJob]) -> None:
        count = 0
        for periodic in queryset.filter(enabled=False):
            periodic.enabled = True
            periodic.next_run_at = next_run(periodic.cron, periodic.interval, periodic.timezone, tz.now())
            periodic.save(update_fields=["enabled", "next_run_at", "updated_at"])
            count += 1
        self.message_user(request, f"{count} schedule(s) enabled.", messages.SUCCESS)

    @admin.action(description=_("Disable selected schedules"), permissions=["change"])
    def disable(self, request: HttpRequest, queryset: QuerySet[PeriodicJob]) -> None:
        count = queryset.filter(enabled=True).update(enabled=False)
        self.message_user(request, f"{count} schedule(s) disabled.", messages.SUCCESS)

    @admin.action(description=_("Run now (the schedule is not shifted)"), permissions=["change"])
    def run_now(self, request: HttpRequest, queryset: QuerySet[PeriodicJob]) -> None:
        started = []
        for periodic in queryset:
            record = start_run(periodic)
            if record is None:
                self.message_user(
                    request,
                    f"{periodic.name}: {periodic.func_name!r} is not a @job function.",
                    messages.ERROR,
                )
                continue
            PeriodicJob.objects.filter(pk=periodic.pk).update(
                last_run=record, last_run_at=tz.now(), total_runs=F("total_runs") + 1
            )
            started.append(periodic.name)
        if started:
            self.message_user(request, f"Started a run of: {', '.join(started)}.", messages.SUCCESS)
