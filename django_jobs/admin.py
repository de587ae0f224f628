"""A read-only admin for job rows (listing, filters, search, detail)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.http import HttpRequest

from .models import JobRecord

if TYPE_CHECKING:
    ModelAdmin = admin.ModelAdmin[JobRecord]
else:
    ModelAdmin = admin.ModelAdmin


@admin.register(JobRecord)
class JobRecordAdmin(ModelAdmin):
    list_display = ("id", "func_name", "queue", "status", "attempts", "enqueued_at", "started_at", "ended_at")
    list_filter = ("status", "queue")
    search_fields = ("=id", "func_name")
    date_hierarchy = "enqueued_at"
    ordering = ("-enqueued_at",)
    show_full_result_count = False
    readonly_fields = [field.name for field in JobRecord._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
