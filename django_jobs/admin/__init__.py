"""The admin for jobs: the job rows (:mod:`.jobs`), the dashboard (:mod:`.overview`) and the
periodic jobs (:mod:`.schedules`). Importing this package registers all three."""

from __future__ import annotations

from .jobs import JobRecordAdmin, pretty_json, progress_bar
from .overview import DashboardAdmin
from .schedules import PeriodicJobAdmin, PeriodicJobForm

__all__ = [
    "DashboardAdmin",
    "JobRecordAdmin",
    "PeriodicJobAdmin",
    "PeriodicJobForm",
    "pretty_json",
    "progress_bar",
]
