"""The one writer of :class:`~django_jobs.models.JobRecord` state.

Every transition is one ``UPDATE`` by primary key, so a job costs three
statements in all: the insert at enqueue, the start and the end.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from django.db import router
from django.utils import timezone

from .models import JobRecord, JobStatus

if TYPE_CHECKING:
    from rq.job import Job

logger = logging.getLogger("django_jobs.records")


def db_alias() -> str:
    """The database alias that job rows are written to (honours routers)."""
    return router.db_for_write(JobRecord) or "default"


def _update(job_id: str, **fields: Any) -> int:
    return JobRecord.objects.using(db_alias()).filter(pk=job_id).update(**fields)


def add_dependencies(job_id: str, depends_on: list[str], using: str) -> None:
    from .models import JobDependency

    JobDependency.objects.using(using).bulk_create(
        [JobDependency(job_id=job_id, depends_on_id=parent) for parent in depends_on], ignore_conflicts=True
    )


def create(
    *,
    job_id: str,
    func_name: str,
    queue: str,
    args: list[Any],
    kwargs: dict[str, Any],
    status: str,
    options: dict[str, Any],
    using: str,
    scheduled_for: Any = None,
    periodic_job_id: int | None = None,
) -> JobRecord:
    """Insert the row of a job being enqueued."""
    return JobRecord.objects.using(using).create(
        id=job_id,
        func_name=func_name,
        queue=queue,
        status=status,
        args=args,
        kwargs=kwargs,
        options=options,
        scheduled_for=scheduled_for,
        periodic_job_id=periodic_job_id,
    )


def claim_due(job_ids: list[str], using: str) -> int:
    """Move due ``scheduled`` rows to ``queued``; only rows still scheduled are taken."""
    return (
        JobRecord.objects.using(using)
        .filter(pk__in=job_ids, status=JobStatus.SCHEDULED)
        .update(status=JobStatus.QUEUED, needs_push=False)
    )


def _create_from_job(job: Job, **fields: Any) -> None:
    """Insert a row for a job that was enqueued without django_jobs (plain RQ)."""
    from .payload import to_jsonable

    try:
        args, kwargs = to_jsonable(list(job.args)), to_jsonable(dict(job.kwargs))
    except Exception:  # the payload itself may be what is broken
        args, kwargs = [], {}
    JobRecord.objects.using(db_alias()).create(
        id=job.id,
        func_name=job.func_name or "",
        queue=job.origin,
        args=args,
        kwargs=kwargs,
        enqueued_at=timezone.now(),
        **fields,
    )


def mark_started(job: Job, worker_name: str) -> None:
    """The job is running: set ``started``, the start time, the worker and count the attempt."""
    from django.db.models import F

    now = timezone.now()
    fields: dict[str, Any] = {
        "status": JobStatus.STARTED,
        "started_at": now,
        "ended_at": None,
        "worker_name": worker_name,
    }
    if not _update(job.id, attempts=F("attempts") + 1, **fields):
        _create_from_job(job, attempts=1, **fields)


def mark_finished(job_id: str, result: Any) -> None:
    """The job returned ``result``."""
    _update(job_id, status=JobStatus.FINISHED, result=result, ended_at=timezone.now(), error="")


def _failure(job_id: str, error: str, status: str) -> None:
    """Record a failed attempt: ``error`` becomes the last error and joins the history."""
    now = timezone.now()
    row = JobRecord.objects.using(db_alias()).filter(pk=job_id).values("attempts", "error_history").first()
    history = list(row["error_history"] or []) if row else []
    history.append({"attempt": row["attempts"] if row else 0, "at": now.isoformat(), "error": error})
    _update(job_id, status=status, error=error, error_history=history, ended_at=now)


def mark_failed(job_id: str, error: str, status: str = JobStatus.FAILED) -> None:
    """The job ended without a result: ``failed`` (or ``stopped``), with the error text."""
    _failure(job_id, error, status)


def mark_retrying(job_id: str, error: str, status: str) -> None:
    """The attempt failed and RQ put the job back (``queued`` or ``scheduled``)."""
    _failure(job_id, error, status)


def mark_requeued(job_ids: list[str]) -> int:
    """Make final jobs wait again, as a new attempt of the same rows (errors are kept)."""
    return (
        JobRecord.objects.using(db_alias())
        .filter(pk__in=job_ids)
        .update(status=JobStatus.QUEUED, result=None, started_at=None, ended_at=None, needs_push=False)
    )


def mark_canceled_many(job_ids: list[str]) -> int:
    return (
        JobRecord.objects.using(db_alias())
        .filter(pk__in=job_ids)
        .update(status=JobStatus.CANCELED, ended_at=timezone.now())
    )


def set_meta(job_id: str, meta: dict[str, Any]) -> None:
    """Replace the job's ``meta`` (progress and user data)."""
    _update(job_id, meta=meta)


def mark_canceled(job_id: str) -> None:
    _update(job_id, status=JobStatus.CANCELED, ended_at=timezone.now())


def mark_status(job_id: str, status: str) -> None:
    _update(job_id, status=status)


def mark_push_failed(job_id: str, using: str) -> None:
    """Remember that the push to Redis failed, so that reconciliation can push the row again."""
    JobRecord.objects.using(using).filter(pk=job_id).update(needs_push=True)


def load(job_id: str) -> JobRecord | None:
    """Return the job's row, read fresh, or None."""
    return JobRecord.objects.using(db_alias()).filter(pk=job_id).first()
