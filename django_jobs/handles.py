"""``JobHandle``: what ``.delay()`` and ``.apply_async()`` return."""

from __future__ import annotations

import time
from typing import Any, Generic, TypeVar, cast

from rq.exceptions import NoSuchJobError
from rq.job import Job

from . import actions, records
from .conf import conf
from .exceptions import JobFailed, JobWaitTimeout
from .models import FINAL_STATUSES, JobRecord, JobStatus
from .pusher import settle
from .queues import get_queue

R = TypeVar("R")


class JobHandle(Generic[R]):
    """A job by id. ``.status``, ``.result`` and ``.record`` read the database afresh."""

    __slots__ = ("id",)

    def __init__(self, job_id: str) -> None:
        self.id: str = job_id

    def __repr__(self) -> str:
        return f"<JobHandle {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def record(self) -> JobRecord | None:
        """The job's row, read now (None if it does not exist, or not yet in this transaction)."""
        settle()
        return records.load(self.id)

    @property
    def status(self) -> str | None:
        """The job's status, read now from its row."""
        settle()
        return (
            JobRecord.objects.using(records.db_alias())
            .filter(pk=self.id)
            .values_list("status", flat=True)
            .first()
        )

    @property
    def result(self) -> R | None:
        """The job's return value once it has finished, else None."""
        record = self.record
        if record is None or record.status != JobStatus.FINISHED:
            return None
        return cast(R, record.result)

    def wait(self, timeout: float = 30.0) -> R:
        """Block until the job ends and return its result.

        Raises :class:`~django_jobs.exceptions.JobFailed` when it ended failed,
        stopped or canceled, and :class:`~django_jobs.exceptions.JobWaitTimeout`
        (a ``TimeoutError``) when ``timeout`` seconds passed first.
        """
        deadline = time.monotonic() + timeout
        interval = conf.wait_poll_interval
        while True:
            record = self.record
            if record is not None and record.status in FINAL_STATUSES:
                if record.status == JobStatus.FINISHED:
                    return cast(R, record.result)
                raise JobFailed(self.id, record.status, record.error)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise JobWaitTimeout(self.id, record.status if record else None, timeout)
            time.sleep(min(interval, remaining))
            interval = min(interval * 1.5, max(conf.wait_poll_interval, 0.5))

    def rq_job(self) -> Job | None:
        """The RQ job in Redis, while Redis still has it."""
        record = self.record
        queue = get_queue(record.queue if record else None)
        try:
            job: Job = queue.job_class.fetch(
                self.id, connection=queue.connection, serializer=queue.serializer
            )
        except NoSuchJobError:
            return None
        return job

    def cancel(self) -> bool:
        """Cancel a job that has not started yet; return whether it was canceled.

        Works before the enqueuing transaction commits too: the pending push is dropped. Works
        while Redis is away too: the row is canceled at once, a worker that takes the job skips
        it, and the job leaves Redis once it is back (see :mod:`django_jobs.removals`).
        """
        settle()
        return actions.cancel(JobRecord.objects.using(records.db_alias()).filter(pk=self.id)).done == 1

    def stop(self) -> bool:
        """Ask the worker running this job to stop it; return whether a request was sent.

        Only a forking worker can stop a job (it kills the job's process); a
        SimpleWorker ignores the request and the job runs to its end.
        """
        settle()
        return actions.stop(JobRecord.objects.using(records.db_alias()).filter(pk=self.id)).done == 1


def get_job(job_id: str) -> JobHandle[Any]:
    """Return a handle for the job with this id."""
    return JobHandle(job_id)
