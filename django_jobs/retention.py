"""Retention: delete the rows of jobs that ended long ago.

``DJANGO_JOBS["RETENTION"]`` says how long the rows of each final status
(finished, failed, canceled, stopped) are kept after the job ended. Rows of
jobs that have not ended (queued, scheduled, deferred, started) are never
deleted.

Rows go in batches of at most :data:`MAX_BATCH_SIZE`: the primary keys of a
batch are read first (oldest first, through the ``(status, enqueued_at)``
index), then deleted in a transaction of their own, together with their
:class:`~django_jobs.models.JobDependency` rows. Each transaction is short;
on PostgreSQL its locks are on the deleted rows only, so enqueueing goes on
meanwhile. SQLite locks the whole database while a batch is deleted, so
:func:`prune` pauses between batches to let other writers in.

``manage.py rqprune`` calls :func:`prune`; the scheduler loop calls
:func:`prune_some` on each pass.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta

from django.db import connections, transaction
from django.db.models import Exists, Min, OuterRef, Q, QuerySet
from django.utils import timezone

from . import records
from .conf import RETENTION_STATUSES, conf
from .models import JobDependency, JobRecord

#: The most rows one batch (one transaction) deletes.
MAX_BATCH_SIZE = 10_000

#: The statuses whose rows can be pruned, in the order they are pruned.
STATUSES = RETENTION_STATUSES

#: ``on_batch(status, rows deleted, seconds the delete transaction took)``.
BatchCallback = Callable[[str, int, float], None]


def describe(keep: timedelta | None) -> str:
    """``7 days``, ``12 hours``, ``90 seconds`` or ``forever``, for messages."""
    if keep is None:
        return "forever"
    seconds = keep.total_seconds()
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds:g} second{'s' if seconds != 1 else ''}"


def check_batch_size(batch_size: int) -> None:
    """Refuse a batch size outside 1…MAX_BATCH_SIZE."""
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int)
        or not 1 <= batch_size <= MAX_BATCH_SIZE
    ):
        raise ValueError(
            f"batch_size must be a whole number from 1 to {MAX_BATCH_SIZE:,} (rows deleted per "
            f"transaction: more would hold locks longer), not {batch_size!r}."
        )


def cutoffs(now: datetime | None = None, statuses: Iterable[str] | None = None) -> dict[str, datetime]:
    """For each status pruned (kept forever ones left out): rows that ended before this time go."""
    now = now or timezone.now()
    policy = conf.retention
    wanted = list(STATUSES if statuses is None else statuses)
    unknown = [status for status in wanted if status not in STATUSES]
    if unknown:
        raise ValueError(
            f"Cannot prune rows of status {', '.join(map(repr, unknown))}: only {', '.join(STATUSES)} rows "
            "are pruned (jobs that have not ended are always kept)."
        )
    limits = {}
    for status in wanted:
        keep = policy[status]
        if keep is None:
            continue
        try:
            limits[status] = now - keep
        except OverflowError:  # kept since before year 1: nothing is that old
            continue
    return limits


def due(status: str, cutoff: datetime, using: str) -> QuerySet[JobRecord]:
    """Rows of ``status`` that ended before ``cutoff`` (or, without an end time, were enqueued before it)."""
    # A job ends after it is enqueued, so enqueued_at < cutoff holds for every row that goes; saying
    # so bounds the scan of either index on enqueued_at.
    return JobRecord.objects.using(using).filter(
        Q(ended_at__lt=cutoff) | Q(ended_at__isnull=True), status=status, enqueued_at__lt=cutoff
    )


def oldest_enqueued(status: str, cutoff: datetime, using: str) -> datetime | None:
    """When the oldest row of ``status`` enqueued before ``cutoff`` was enqueued (None: there is none).

    Answered from the ``(status, enqueued_at)`` index alone.
    """
    rows = JobRecord.objects.using(using).filter(status=status, enqueued_at__lt=cutoff)
    oldest: datetime | None = rows.aggregate(oldest=Min("enqueued_at"))["oldest"]
    return oldest


def batch_query(
    status: str, cutoff: datetime, using: str, batch_size: int, since: datetime
) -> QuerySet[JobRecord, str]:
    """The primary keys of the next (oldest) batch of due rows, enqueued at ``since`` or later."""
    rows = due(status, cutoff, using).filter(enqueued_at__gte=since).order_by("enqueued_at")
    return rows.values_list("pk", flat=True)[:batch_size]


def select_batch(status: str, cutoff: datetime, using: str, batch_size: int) -> list[str]:
    """The primary keys of the next (oldest) batch of due rows."""
    # Two queries, not one. With rows of another status kept longer (failed rows, 30 days), the
    # database may answer the batch query through the enqueued_at index and read every one of
    # those older rows on each pass, even when nothing is due: the planner cannot know that the
    # old rows are mostly of other statuses. The probe finds where this status's old rows begin,
    # so the batch query reads from there on: nothing else when nothing is due, and little more
    # than the batch otherwise.
    since = oldest_enqueued(status, cutoff, using)
    if since is None:
        return []
    return list(batch_query(status, cutoff, using, batch_size, since))


def _chunks(ids: list[str], using: str) -> Iterator[list[str]]:
    # SQLite caps the parameters of one statement (Django assumes 999); the others need no cap.
    limit = connections[using].features.max_query_params
    size = max(1, limit - 10) if limit else max(1, len(ids))
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def delete_batch(ids: list[str], status: str, cutoff: datetime, using: str) -> int:
    """Delete these rows and their dependency rows in one transaction; return how many rows went.

    The conditions are checked again: a row requeued since it was selected stays.
    """
    deleted = 0
    with transaction.atomic(using=using):
        for chunk in _chunks(ids, using):
            # One DELETE by primary key. Not QuerySet.delete(): Django's collector would first load
            # every row (JSON payloads and tracebacks included) and set PeriodicJob.last_run to NULL
            # (a dangling last_run is harmless: it has no database constraint). The dependency rows
            # are deleted just below, in bulk.
            deleted += due(status, cutoff, using).filter(pk__in=chunk)._raw_delete(using)
            gone = ~Exists(JobRecord.objects.using(using).filter(pk=OuterRef("job_id")))
            JobDependency.objects.using(using).filter(gone, job_id__in=chunk).delete()
    return deleted


def prune(
    now: datetime | None = None,
    *,
    batch_size: int = MAX_BATCH_SIZE,
    max_batches: int | None = None,
    dry_run: bool = False,
    statuses: Iterable[str] | None = None,
    on_batch: BatchCallback | None = None,
) -> dict[str, int]:
    """Delete the rows ``RETENTION`` no longer keeps; return how many went, per status.

    Oldest first, at most ``batch_size`` rows per transaction, at most
    ``max_batches`` batches in all (None: until nothing is due). With
    ``dry_run``, count the rows that would go and delete nothing.
    ``statuses`` limits the pass to some final statuses. Statuses kept
    forever count 0.
    """
    check_batch_size(batch_size)
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be at least 1 (or None for no limit), not {max_batches!r}.")
    using = records.db_alias()
    wanted = list(STATUSES if statuses is None else statuses)
    limits = cutoffs(now, wanted)
    counts = dict.fromkeys(wanted, 0)
    batches = 0
    last_batch_seconds: float | None = None
    for status, cutoff in limits.items():
        if dry_run:
            count = due(status, cutoff, using).count()
            if max_batches is not None:
                count = min(count, (max_batches - batches) * batch_size)
                batches += math.ceil(count / batch_size)
            counts[status] = count
            continue
        while max_batches is None or batches < max_batches:
            ids = select_batch(status, cutoff, using, batch_size)
            if not ids:
                break
            if last_batch_seconds is not None:
                time.sleep(pause_between_batches(using, last_batch_seconds))
            started = time.perf_counter()
            deleted = delete_batch(ids, status, cutoff, using)
            last_batch_seconds = time.perf_counter() - started
            batches += 1
            counts[status] += deleted
            if on_batch is not None:
                on_batch(status, deleted, last_batch_seconds)
            if len(ids) < batch_size:
                break
    return counts


def pause_between_batches(using: str, last_batch_seconds: float) -> float:
    """Seconds to wait before the next batch, so that other writers get their turn."""
    # SQLite lets one writer in at a time, and a writer kept waiting looks again only every
    # 100 ms or so: without a pause, the next batch would take the lock again first, batch after
    # batch. PostgreSQL locks only the rows being deleted, which no enqueue waits for.
    if connections[using].vendor == "sqlite":
        return max(0.2, last_batch_seconds)
    return 0.0


def prune_some(now: datetime | None = None, *, batch_size: int = MAX_BATCH_SIZE) -> int:
    """Delete at most one batch of rows that ``RETENTION`` no longer keeps; return how many went.

    Meant for each pass of the scheduler loop. When nothing is due it costs
    one probe of the ``(status, enqueued_at)`` index per status not kept forever.
    """
    check_batch_size(batch_size)
    using = records.db_alias()
    for status, cutoff in cutoffs(now).items():
        ids = select_batch(status, cutoff, using, batch_size)
        if ids:
            return delete_batch(ids, status, cutoff, using)
    return 0
