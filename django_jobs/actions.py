"""Actions on many jobs at once (the admin's requeue, cancel, stop and delete), in batches.

Which rows an action takes comes from ``status.TRANSITIONS``: a job is requeued only
from a final status the "requeue" transition starts from, canceled only from one
"cancel" starts from, and asked to stop only while it is started.

Cancel and delete work while Redis is away: the rows change at once, and the jobs
Redis still holds are taken out of it once it is back (:mod:`django_jobs.removals`);
a worker that takes one meanwhile skips it.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from redis.exceptions import RedisError
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job

from . import records, removals
from .models import JobRecord
from .push import forget_push, push
from .queues import get_queue
from .spec import JobSpec
from .status import FINAL_STATUSES, JobStatus, sources

logger = logging.getLogger("django_jobs.actions")

BATCH_SIZE = 1000

#: Final statuses a job can be run again from (the admin's requeue).
REQUEUEABLE = tuple(status for status in sources("requeue") if status in FINAL_STATUSES)
#: Statuses a job can be canceled in: it has not started.
CANCELABLE = tuple(sources("cancel"))
#: Only a running job can be asked to stop; its worker then ends its attempt "stopped".
STOPPABLE = (JobStatus.STARTED.value,)


@dataclass
class ActionResult:
    """What an action did: how many rows, and why the others were skipped."""

    verb: str
    done: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    #: Redis could not be reached: the jobs it holds are taken out once it is back.
    redis_later: bool = False

    def message(self) -> str:
        noun = "job" if self.done == 1 else "jobs"
        text = f"{self.done} {noun} {self.verb}"
        if self.skipped:
            reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items()))
            text += f"; skipped: {reasons}"
        if self.redis_later:
            return f"{text}. {self.redis_note()}"
        return text + "."

    def redis_note(self) -> str:
        """What the message adds when Redis could not be reached."""
        return (
            "Redis could not be reached; it will be cleaned up when it is back, and meanwhile no "
            f"worker runs what was {self.verb}."
        )


def _batches(queryset: QuerySet[JobRecord]) -> Iterator[list[dict[str, Any]]]:
    """Rows in primary-key order, BATCH_SIZE at a time, without holding a long query open."""
    last = ""
    base = queryset.order_by("pk").values("pk", "status", "func_name", "queue", "args", "kwargs", "options")
    while True:
        batch: list[dict[str, Any]] = [dict(row) for row in base.filter(pk__gt=last)[:BATCH_SIZE]]
        if not batch:
            return
        yield batch
        last = batch[-1]["pk"]


def _split(
    batch: list[dict[str, Any]], allowed: tuple[str, ...], outcome: ActionResult
) -> list[dict[str, Any]]:
    chosen = []
    for row in batch:
        if row["status"] in allowed:
            chosen.append(row)
        else:
            outcome.skipped[f"because they were {row['status']}"] += 1
    return chosen


def _out_of_redis(rows: list[dict[str, Any]], remove: Callable[[Job], Any]) -> list[tuple[str, str]]:
    """Take the RQ job of each row out of Redis with ``remove(job)``; return ``(id, queue)`` of
    those Redis could not be reached for (after one failure, a queue's other jobs are not tried).

    A job Redis does not hold may have its push still waiting for a commit: it is dropped.
    """
    unreached: list[tuple[str, str]] = []
    away: set[str] = set()
    for row in rows:
        if row["queue"] not in away:
            try:
                job = get_queue(row["queue"]).fetch_job(row["pk"])
                if job is not None:
                    remove(job)
                    continue
            except (RedisError, OSError) as exc:
                logger.warning("Redis could not be reached for queue %r: %s", row["queue"], exc)
                away.add(row["queue"])
        forget_push(row["pk"])
        if row["queue"] in away:
            unreached.append((row["pk"], row["queue"]))
    return unreached


def _old_job_deleted(row: dict[str, Any], using: str) -> bool:
    """Delete the job Redis kept of a row canceled while it was away, before the row's new push.

    False if Redis is still away: the row then waits for its push (``needs_push``), which
    follows once the scheduler loop has deleted the old job (``removals.sweep``).
    """
    try:
        job = get_queue(row["queue"]).fetch_job(row["pk"])
        if job is not None:
            job.delete()
    except (RedisError, OSError):
        records.mark_push_failed(row["pk"], using)
        return False
    removals.forget([row["pk"]], using)
    return True


def requeue(queryset: QuerySet[JobRecord]) -> ActionResult:
    """Run failed, stopped or canceled jobs again: a new attempt of the same rows, earlier errors kept."""
    outcome = ActionResult("requeued")
    using = records.db_alias()
    for batch in _batches(queryset):
        chosen = _split(batch, REQUEUEABLE, outcome)
        requeued = records.mark_requeued([row["pk"] for row in chosen])
        rows = [row for row in chosen if row["pk"] in requeued]
        outcome.skipped["because they had moved on meanwhile"] += len(chosen) - len(rows)
        left_in_redis = removals.pending([row["pk"] for row in rows], using)
        for row in rows:
            if row["pk"] in left_in_redis and not _old_job_deleted(row, using):
                continue
            # The push below is what matters; it marks the row if Redis is away.
            with contextlib.suppress(RedisError, ValueError):
                get_queue(row["queue"]).failed_job_registry.remove(row["pk"])
            push(JobSpec.from_row(row, using))
        outcome.done += len(rows)
    outcome.skipped = +outcome.skipped  # drop zero counts
    return outcome


def cancel(queryset: QuerySet[JobRecord]) -> ActionResult:
    """Cancel jobs that have not started: they leave Redis and end ``canceled``.

    With Redis away the rows are canceled all the same; their jobs leave Redis once it is
    back, and a worker that takes one meanwhile skips it (see :mod:`django_jobs.removals`).
    """
    outcome = ActionResult("canceled")
    using = records.db_alias()
    for batch in _batches(queryset):
        rows = _split(batch, CANCELABLE, outcome)
        unreached = _out_of_redis(rows, partial(removals.take_out, row_status=JobStatus.CANCELED))
        with transaction.atomic(using=using):
            canceled = records.mark_canceled_many([row["pk"] for row in rows])
            removals.remember(unreached, using)
        outcome.redis_later |= bool(unreached)
        outcome.done += canceled
        outcome.skipped["because they had started meanwhile"] += len(rows) - canceled
    outcome.skipped = +outcome.skipped  # drop zero counts
    return outcome


def stop(queryset: QuerySet[JobRecord]) -> ActionResult:
    """Ask the workers running these jobs to stop them (they end ``stopped``). With Redis away
    the request cannot be sent: those jobs are reported as skipped, and go on running."""
    outcome = ActionResult("asked to stop")
    for batch in _batches(queryset):
        for row in _split(batch, STOPPABLE, outcome):
            try:
                send_stop_job_command(get_queue(row["queue"]).connection, row["pk"])
            except (InvalidJobOperation, NoSuchJobError):
                outcome.skipped["because no worker was running them"] += 1
                continue
            except (RedisError, OSError):
                # A stop is a message to the worker, through Redis: nothing to keep for later.
                outcome.skipped["because Redis could not be reached (try again once it is back)"] += 1
                continue
            outcome.done += 1
    return outcome


def delete(queryset: QuerySet[JobRecord]) -> ActionResult:
    """Delete rows (and their RQ jobs); running jobs are left alone.

    With Redis away the rows are deleted all the same, and a small
    :class:`~django_jobs.models.PendingRemoval` row is kept for each (in the same
    transaction): it tells a worker that takes the job meanwhile to skip it (a job
    enqueued with plain RQ has no row and no such record, and runs), and the scheduler
    loop deletes the job from Redis once it is back (see :mod:`django_jobs.removals`).
    """
    outcome = ActionResult("deleted")
    using = records.db_alias()
    for batch in _batches(queryset):
        rows = [row for row in batch if row["status"] != JobStatus.STARTED]
        outcome.skipped["because they were running"] += len(batch) - len(rows)
        unreached = _out_of_redis(rows, partial(removals.take_out, row_status=None))
        with transaction.atomic(using=using):
            removals.remember(unreached, using)
            # A row that started since it was read is kept: its worker writes its end.
            _total, by_model = (
                JobRecord.objects.using(using)
                .filter(pk__in=[row["pk"] for row in rows])
                .exclude(status=JobStatus.STARTED)
                .delete()
            )
        deleted = by_model.get(JobRecord._meta.label, 0)
        outcome.skipped["because they were running"] += len(rows) - deleted
        outcome.redis_later |= bool(unreached)
        outcome.done += deleted
    outcome.skipped = +outcome.skipped  # drop zero counts
    return outcome
