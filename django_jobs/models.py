"""The database side of django_jobs: one :class:`JobRecord` row per job."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .cron import validate_call, validate_schedule
from .status import ACTIVE_STATUSES, FINAL_STATUSES, JobStatus

__all__ = [
    "ACTIVE_STATUSES",
    "FINAL_STATUSES",
    "Dashboard",
    "JobDependency",
    "JobRecord",
    "JobRecordQuerySet",
    "JobStatus",
    "MissedRunPolicy",
    "PendingRemoval",
    "PeriodicJob",
]


class JobRecordQuerySet(models.QuerySet["JobRecord"]):
    def with_status(self, *statuses: str) -> JobRecordQuerySet:
        return self.filter(status__in=statuses)

    def unfinished(self) -> JobRecordQuerySet:
        return self.exclude(status__in=FINAL_STATUSES)

    def not_pushed(self) -> JobRecordQuerySet:
        """Rows whose push to Redis failed at enqueue time."""
        return self.filter(needs_push=True)


class JobRecord(models.Model):
    """A job: what to run, where, with what, and what happened to it.

    The row is written in the caller's transaction when the job is enqueued
    and updated by the worker at each step of the job's life; it outlives
    RQ's short-lived data in Redis.
    """

    # On PostgreSQL Django also gives this key a varchar_pattern_ops index, which
    # serves the admin's search by id prefix (LIKE 'abc%').
    id = models.CharField(_("job id"), max_length=128, primary_key=True, editable=False)
    func_name = models.CharField(_("function"), max_length=255)
    queue = models.CharField(_("queue"), max_length=100)
    status = models.CharField(_("status"), max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)
    args = models.JSONField(_("arguments"), default=list, blank=True)
    kwargs = models.JSONField(_("keyword arguments"), default=dict, blank=True)
    result = models.JSONField(_("result"), null=True, blank=True)
    error = models.TextField(_("error"), blank=True, default="")
    # Errors of earlier attempts, oldest first: [{"attempt": n, "at": iso, "error": text}].
    error_history = models.JSONField(_("earlier errors"), default=list, blank=True)
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    enqueued_at = models.DateTimeField(_("enqueued at"), default=timezone.now)
    # When a delayed job is due; the scheduler moves it into its queue then.
    scheduled_for = models.DateTimeField(_("scheduled for"), null=True, blank=True)
    periodic_job = models.ForeignKey(
        "PeriodicJob",
        verbose_name=_("periodic job"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="runs",
        db_constraint=False,
    )
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    ended_at = models.DateTimeField(_("ended at"), null=True, blank=True)
    worker_name = models.CharField(_("worker"), max_length=255, blank=True, default="")
    meta = models.JSONField(_("meta"), default=dict, blank=True)
    # Enqueue options (timeout, result_ttl, ttl, retry, description, depends_on,
    # at_front), kept so that the job can be pushed again from this row.
    options = models.JSONField(_("options"), default=dict, blank=True)
    # True when the push to Redis failed at enqueue; reconciliation pushes it.
    needs_push = models.BooleanField(_("not yet pushed to Redis"), default=False)
    # Set for @job(unique=True / unique_key=…): at most one job that is not final holds a key.
    # NULL, not "", for the jobs without one: a unique index never compares NULLs.
    unique_key = models.CharField(  # noqa: DJ001
        _("unique key"), max_length=255, null=True, blank=True, editable=False
    )

    objects = JobRecordQuerySet.as_manager()

    class Meta:
        verbose_name = _("job")
        verbose_name_plural = _("jobs")
        ordering = ["-enqueued_at"]
        get_latest_by = "enqueued_at"
        permissions = [
            ("requeue_jobrecord", "Can requeue jobs"),
            ("cancel_jobrecord", "Can cancel jobs"),
            ("stop_jobrecord", "Can stop running jobs"),
            ("pause_queue", "Can pause and resume queues"),
        ]
        indexes = [
            models.Index(fields=["-enqueued_at"], name="django_jobs_enqueued_idx"),
            models.Index(fields=["status", "-enqueued_at"], name="django_jobs_status_idx"),
            models.Index(fields=["queue", "-enqueued_at"], name="django_jobs_queue_idx"),
            models.Index(fields=["func_name", "-enqueued_at"], name="django_jobs_func_idx"),
            models.Index(fields=["ended_at"], name="django_jobs_ended_idx"),
            models.Index(fields=["status", "scheduled_for"], name="django_jobs_due_idx"),
            # The scheduler looks for rows whose push failed on every tick: few, so a partial index.
            models.Index(
                fields=["enqueued_at"], condition=models.Q(needs_push=True), name="django_jobs_needs_push_idx"
            ),
        ]
        constraints = [
            # Also the index that finds a key's holder: queries name the same statuses.
            models.UniqueConstraint(
                fields=["unique_key"],
                condition=models.Q(status__in=ACTIVE_STATUSES),
                name="django_jobs_unique_key_active",
            )
        ]

    def __str__(self) -> str:
        return f"{self.func_name} [{self.id}] {self.status}"

    @property
    def duration(self) -> Any:
        """Time between start and end, or None while the job has not ended."""
        if self.started_at and self.ended_at:
            return self.ended_at - self.started_at
        return None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


class JobDependency(models.Model):
    """``job`` waits for ``depends_on``; both ways are indexed for the admin's links."""

    job = models.ForeignKey(
        JobRecord, on_delete=models.CASCADE, related_name="dependencies", db_constraint=False
    )
    depends_on = models.ForeignKey(
        JobRecord, on_delete=models.DO_NOTHING, related_name="dependents", db_constraint=False
    )

    class Meta:
        verbose_name = _("job dependency")
        verbose_name_plural = _("job dependencies")
        constraints = [
            models.UniqueConstraint(fields=["job", "depends_on"], name="django_jobs_dependency_unique")
        ]
        indexes = [models.Index(fields=["depends_on"], name="django_jobs_dependents_idx")]

    def __str__(self) -> str:
        return f"{self.job_id} after {self.depends_on_id}"


class PendingRemoval(models.Model):
    """An RQ job still to be taken out of Redis: its row was canceled or deleted while Redis
    could not be reached.

    Written with the row's change, in the same transaction. Until Redis is cleaned
    (``removals.sweep``) a worker that takes the job skips it: a canceled row refuses the
    start, and a job that has no row and has this entry is one whose row was deleted (a job
    enqueued with plain RQ has no row and no entry, and runs). ``removed_at`` is when the job
    was taken out of Redis; the entry is kept a while after it (``removals.GRACE``) for a
    worker that took the job just before.
    """

    job_id = models.CharField(_("job id"), max_length=128, primary_key=True)
    queue = models.CharField(_("queue"), max_length=100)
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    removed_at = models.DateTimeField(_("removed from Redis at"), null=True, blank=True)

    class Meta:
        verbose_name = _("pending removal from Redis")
        verbose_name_plural = _("pending removals from Redis")

    def __str__(self) -> str:
        return f"{self.job_id} ({self.queue})"


class Dashboard(JobRecord):
    """No table of its own: puts the jobs dashboard in the admin index."""

    class Meta:
        proxy = True
        verbose_name = _("dashboard")
        verbose_name_plural = _("dashboard")


class MissedRunPolicy(models.TextChoices):
    """What a periodic job does about runs it missed while no scheduler ran."""

    SKIP = "skip", _("skip to the next run")
    RUN_ONCE = "run_once", _("run once to catch up")


class PeriodicJob(models.Model):
    """A schedule: run ``func_name`` on a cron expression or every ``interval`` seconds.

    Rows come from code (``@job(cron=…)``, ``DJANGO_JOBS["SCHEDULE"]``),
    synced when the scheduler starts, or from the admin. Each run is an
    ordinary :class:`JobRecord` linked here.
    """

    name = models.CharField(_("name"), max_length=200, unique=True)
    func_name = models.CharField(_("function"), max_length=255)
    args = models.JSONField(_("arguments"), default=list, blank=True)
    kwargs = models.JSONField(_("keyword arguments"), default=dict, blank=True)
    queue = models.CharField(_("queue"), max_length=100, blank=True, default="")
    cron = models.CharField(_("cron expression"), max_length=100, blank=True, default="")
    interval = models.PositiveIntegerField(_("interval (seconds)"), null=True, blank=True)
    timezone = models.CharField(_("time zone"), max_length=64, blank=True, default="")
    enabled = models.BooleanField(_("enabled"), default=True)
    missed_runs = models.CharField(
        _("missed runs"), max_length=16, choices=MissedRunPolicy.choices, default=MissedRunPolicy.SKIP
    )
    next_run_at = models.DateTimeField(_("next run at"), null=True, blank=True)
    last_run_at = models.DateTimeField(_("last run at"), null=True, blank=True)
    last_run = models.ForeignKey(
        JobRecord,
        verbose_name=_("last run"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_constraint=False,
    )
    total_runs = models.PositiveIntegerField(_("total runs"), default=0)
    # "code" for schedules declared in code; "admin" for rows made in the admin.
    source = models.CharField(_("source"), max_length=16, default="admin", editable=False)
    # What the code declared at the last sync, to report admin edits as drift.
    code_definition = models.JSONField(_("definition in code"), null=True, blank=True, editable=False)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("periodic job")
        verbose_name_plural = _("periodic jobs")
        ordering = ["name"]
        indexes = [models.Index(fields=["enabled", "next_run_at"], name="django_jobs_periodic_due_idx")]
        constraints = [
            models.CheckConstraint(
                condition=~models.Q(cron="") | models.Q(interval__isnull=False),
                name="django_jobs_periodic_has_schedule",
            )
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        validate_schedule(self.cron, self.interval, self.timezone)
        validate_call(self.args, self.kwargs)

    def definition(self) -> dict[str, Any]:
        """The fields a schedule in code declares, for drift detection."""
        return {
            "func_name": self.func_name,
            "args": self.args,
            "kwargs": self.kwargs,
            "queue": self.queue,
            "cron": self.cron,
            "interval": self.interval,
            "timezone": self.timezone,
            "missed_runs": self.missed_runs,
        }

    @property
    def drift(self) -> list[str]:
        """Fields of a code schedule that differ from the code (edited in the admin)."""
        if self.source != "code" or not self.code_definition:
            return []
        current = self.definition()
        return [key for key, value in self.code_definition.items() if current.get(key) != value]
