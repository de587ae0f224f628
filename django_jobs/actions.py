"""Actions on many jobs at once (the admin's requeue, cancel, stop and delete), in batches.

Which rows an action takes comes from ``status.TRANSITIONS``: a job is requeued only
from a final status the "requeue" transition starts from, canceled only from one
"cancel" starts from, and asked to stop only while it is started.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.db.models import QuerySet
from redis.exceptions import RedisError
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job

from . import records
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

    def message(self) -> str:
        noun = "job" if self.done == 1 else "jobs"
        text = f"{self.done} {noun} {self.verb}"
        if self.skipped:
            reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items()))
            text += f"; skipped: {reasons}"
        return text + "."


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


def _fetch(queue_name: str, job_id: str) -> Job | None:
    queue = get_queue(queue_name)
    try:
        job: Job = queue.job_class.fetch(job_id, connection=queue.connection, serializer=queue.serializer)
    except NoSuchJobError:
        return None
    return job


def requeue(queryset: QuerySet[JobRecord]) -> ActionResult:
    """Run failed, stopped or canceled jobs again: a new attempt of the same rows, earlier errors kept."""
    outcome = ActionResult("requeued")
    using = records.db_alias()
    for batch in _batches(queryset):
        chosen = _split(batch, REQUEUEABLE, outcome)
        requeued = records.mark_requeued([row["pk"] for row in chosen])
        rows = [row for row in chosen if row["pk"] in requeued]
        outcome.skipped["because they had moved on meanwhile"] += len(chosen) - len(rows)
        for row in rows:
            # The push below is what matters; it marks the row if Redis is away.
            with contextlib.suppress(RedisError, ValueError):
                get_queue(row["queue"]).failed_job_registry.remove(row["pk"])
            push(JobSpec.from_row(row, using))
        outcome.done += len(rows)
    outcome.skipped = +outcome.skipped  # drop zero counts
    return outcome


def cancel(queryset: QuerySet[JobRecord]) -> ActionResult:
    """Cancel jobs that have not started: they leave Redis and end ``canceled``."""
    outcome = ActionResult("canceled")
    for batch in _batches(queryset):
        rows = _split(batch, CANCELABLE, outcome)
        for row in rows:
            job = _fetch(row["queue"], row["pk"])
            if job is None:
                forget_push(row["pk"])  # its push may still be waiting for a commit
                continue
            with contextlib.suppress(InvalidJobOperation):  # already canceled in Redis
                job.cancel()
        canceled = records.mark_canceled_many([row["pk"] for row in rows])
        outcome.done += canceled
        outcome.skipped["because they had started meanwhile"] += len(rows) - canceled
    outcome.skipped = +outcome.skipped  # drop zero counts
    return outcome


def stop(queryset: QuerySet[JobRecord]) -> ActionResult:
    """Ask the workers running these jobs to stop them (they end ``stopped``)."""
    outcome = ActionResult("asked to stop")
    for batch in _batches(queryset):
        for row in _split(batch, STOPPABLE, outcome):
            try:
                send_stop_job_command(get_queue(row["queue"]).connection, row["pk"])
            except (InvalidJobOperation, NoSuchJobError):
                outcome.skipped["because no worker was running them"] += 1
                continue
            outcome.done += 1
    return outcome


def delete(queryset: QuerySet[JobRecord]) -> ActionResult:
    """Delete rows (and their RQ jobs); running jobs are left alone."""
    outcome = ActionResult("deleted")
    for batch in _batches(queryset):
        rows = [row for row in batch if row["status"] != JobStatus.STARTED]
        outcome.skipped["because they were running"] += len(batch) - len(rows)
        for row in rows:
            job = _fetch(row["queue"], row["pk"])
            if job is not None:
                job.delete()
        JobRecord.objects.using(records.db_alias()).filter(pk__in=[row["pk"] for row in rows]).delete()
        outcome.done += len(rows)
    outcome.skipped = +outcome.skipped  # drop zero counts
    return outcome
