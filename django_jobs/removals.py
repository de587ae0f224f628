"""RQ jobs to take out of Redis after their rows were canceled or deleted while Redis was away.

The admin's cancel and delete (:mod:`django_jobs.actions`, also behind
``JobHandle.cancel()``) change the row at once and take the job out of Redis.
When Redis cannot be reached, the row still changes, and the job's id is kept in a
:class:`~django_jobs.models.PendingRemoval` row, written in the same
transaction (:func:`remember`). Until Redis is cleaned:

- a worker that takes the job skips it, never runs it: the start of a canceled
  row is refused (``status.TRANSITIONS["start"]``), and so is the start of a
  job that has no row but has a ``PendingRemoval`` (its row was deleted). A
  job enqueued with plain RQ or django-rq has neither, and still runs (it gets
  a row when it starts). The worker then takes the job out of Redis itself
  (:func:`skipped`);
- the scheduler loop, and ``manage.py rqreconcile``, take it out of Redis once
  Redis answers (:func:`sweep`): canceled in RQ if its row is canceled, deleted
  if its row is gone, as the action would have done.

A row requeued meanwhile (``actions.requeue``) has its old job deleted from Redis
before its new push; while Redis is still away, the row waits for its push
(``needs_push``) and the sweep deletes the old job before ``recovery.push_pending``
pushes it, so that Redis does not hold the job twice.

An entry is kept :data:`GRACE` after its job left Redis: a worker that took the
job just before still finds it when it writes the start.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.db.models import Q
from django.utils import timezone
from redis.exceptions import RedisError
from rq.exceptions import InvalidJobOperation
from rq.job import Job

from . import records
from .models import JobRecord, JobStatus, PendingRemoval
from .queues import get_queue

logger = logging.getLogger("django_jobs.recovery")

#: How long an entry outlives its job's removal from Redis.
GRACE = timedelta(minutes=10)

#: Entries looked at per sweep.
BATCH = 1000


def remember(entries: Iterable[tuple[str, str]], using: str) -> None:
    """Keep ``(job id, queue)`` pairs whose RQ job Redis still holds (it could not be reached).

    Call it in the transaction that cancels or deletes the rows.
    """
    rows = [PendingRemoval(job_id=job_id, queue=queue) for job_id, queue in entries]
    if rows:
        PendingRemoval.objects.using(using).bulk_create(
            rows, update_conflicts=True, unique_fields=["job_id"], update_fields=["queue", "removed_at"]
        )


def pending(job_ids: list[str], using: str) -> set[str]:
    """Which of ``job_ids`` have an entry: Redis may still hold their old jobs."""
    return set(PendingRemoval.objects.using(using).filter(pk__in=job_ids).values_list("pk", flat=True))


def forget(job_ids: list[str], using: str) -> None:
    """Drop the entries of ``job_ids``: their old jobs are out of Redis."""
    PendingRemoval.objects.using(using).filter(pk__in=job_ids).delete()


def take_out(job: Job, row_status: str | None) -> None:
    """Take ``job`` out of Redis as the action would have: canceled in RQ if its row is canceled,
    deleted if its row is gone (``row_status`` None). Raises Redis' errors."""
    if row_status is None:
        job.delete()
    elif row_status == JobStatus.CANCELED:
        with contextlib.suppress(InvalidJobOperation):  # canceled in RQ already
            job.cancel()


def skipped(job: Job) -> None:
    """A worker took ``job`` and did not run it (its row refused the start): out of Redis with it."""
    using = records.db_alias()
    status = JobRecord.objects.using(using).filter(pk=job.id).values_list("status", flat=True).first()
    take_out(job, status)
    PendingRemoval.objects.using(using).filter(pk=job.id).update(removed_at=timezone.now())


def sweep(now: datetime | None = None, *, dry_run: bool = False) -> list[str]:
    """Take out of Redis the jobs of rows canceled or deleted while it was away; return their ids.

    A row requeued while Redis was away waits for its push (``needs_push``): its old job is
    deleted here, and ``recovery.push_pending`` pushes it afresh. The entries of a queue whose
    Redis is still away wait for the next sweep.
    """
    now = now or timezone.now()
    using = records.db_alias()
    due = PendingRemoval.objects.using(using).filter(Q(removed_at=None) | Q(removed_at__lt=now - GRACE))
    removed: list[str] = []
    away: set[str] = set()
    last = ""
    while True:
        entries = list(
            due.filter(pk__gt=last).order_by("pk").values_list("job_id", "queue", "removed_at")[:BATCH]
        )
        if not entries:
            break
        last = entries[-1][0]
        removed += _sweep_some(entries, now, using, away, dry_run)
    if removed and not dry_run:
        logger.warning(
            "Took %d job(s) out of Redis whose rows were canceled or deleted while it was away", len(removed)
        )
    return removed


def _sweep_some(
    entries: list[tuple[str, str, datetime | None]], now: datetime, using: str, away: set[str], dry_run: bool
) -> list[str]:
    rows = JobRecord.objects.using(using).filter(pk__in=[entry[0] for entry in entries])
    found = {
        str(pk): (str(status), bool(unpushed))
        for pk, status, unpushed in rows.values_list("pk", "status", "needs_push")
    }
    removed: list[str] = []
    done: list[str] = []
    for job_id, queue_name, removed_at in entries:
        status, unpushed = found.get(job_id, (None, False))
        again = status is not None and status != JobStatus.CANCELED  # waiting or run again since
        if (again and not unpushed) or (not again and removed_at is not None):
            done.append(job_id)  # pushed afresh since, or out of Redis for longer than GRACE
            continue
        if queue_name in away:
            continue
        if dry_run:
            removed.append(job_id)
            continue
        try:
            job = get_queue(queue_name).fetch_job(job_id)
            if job is not None:
                take_out(job, None if again else status)
        except (RedisError, OSError) as exc:
            logger.warning("Redis of queue %r is still away (%s); its jobs leave it later", queue_name, exc)
            away.add(queue_name)
            continue
        except Exception:  # an unknown queue now, or an unreadable job: left in Redis
            logger.exception("Could not take job %s out of Redis", job_id)
        removed.append(job_id)
        if again:
            done.append(job_id)
        else:
            # Kept a while: a worker that took the job just before finds it at its start.
            PendingRemoval.objects.using(using).filter(pk=job_id).update(removed_at=now)
    if not dry_run and done:
        forget(done, using)
    return removed
