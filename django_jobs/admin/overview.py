"""The jobs dashboard in the admin: queues, workers and the last day's counts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import URLPattern, path, reverse

from ..models import Dashboard, JobRecord
from .jobs import JobRecordAdmin

if TYPE_CHECKING:
    DashboardModelAdmin = admin.ModelAdmin[Dashboard]
else:  # django-stubs makes it generic; Django's class is not subscriptable at run time
    DashboardModelAdmin = admin.ModelAdmin

#: Above this many matching rows the listing says "10,000+" instead of counting them all.
COUNT_CAP = 10_000


@admin.register(Dashboard)
class DashboardAdmin(DashboardModelAdmin):
    """The admin index's "Dashboard" entry: it opens the jobs dashboard."""

    def _job_admin(self) -> JobRecordAdmin:
        job_admin = self.admin_site.get_model_admin(JobRecord)
        assert isinstance(job_admin, JobRecordAdmin)
        return job_admin

    def get_urls(self) -> list[URLPattern]:
        # Only the index entry: no change or history pages that would show job data.
        view = self.admin_site.admin_view(self.changelist_view)
        return [path("", view, name="django_jobs_dashboard_changelist")]

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._job_admin().has_view_permission(request)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._job_admin().has_module_permission(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        return HttpResponseRedirect(reverse("admin:django_jobs_dashboard"))
