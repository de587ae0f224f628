"""RQ Job and Worker classes that keep each job's row up to date.

The worker writes the row at each step of the job's life through
``records.py``: started (attempt counted), finished (result), failed (full
traceback), stopped, or put back for a retry. Database connections are
closed before every fork and around every job, so a database that restarted
between two jobs costs nothing but a reconnect.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, InterfaceError, connections
from rq import Retry
from rq import SimpleWorker as RQSimpleWorker
from rq import Worker as RQWorker
from rq.job import Job
from rq.job import JobStatus as RQJobStatus
from rq.serializers import JSONSerializer

from . import pauses, records
from .conf import conf
from .exceptions import JobFunctionImportError
from .models import JobStatus
from .payload import check_result, to_jsonable

if TYPE_CHECKING:
    from rq import Queue
    from rq.executions import Execution

logger = logging.getLogger("django_jobs.worker")


class JobsJob(Job):
    """An RQ job that explains an unimportable function and insists on a JSON result."""

    @property
    def func(self) -> Any:
        try:
            return super().func
        except Exception as exc:
            raise JobFunctionImportError(self.func_name or "", exc) from exc

    def _execute(self) -> Any:
        result = super()._execute()
        if self.serializer is JSONSerializer and not isinstance(result, Retry):
            check_result(f"Job {self.func_name}()", result)
        return result


def reset_database_connections() -> None:
    """Drop database connections that are broken or past ``CONN_MAX_AGE``.

    Django does this around each request; a worker does it around each job.
    A persistent connection is also checked with a round trip, so that a
    database restarted between two jobs costs a reconnect, not an error.
    """
    for conn in connections.all(initialized_only=True):
        conn.close_if_unusable_or_obsolete()
        if conn.connection is not None and not conn.is_usable():
            conn.close()


def _write(step: Callable[..., None], *args: Any) -> None:
    """Apply one row update; a database error is logged and never kills the worker."""
    try:
        step(*args)
    except (DatabaseError, InterfaceError):
        logger.exception("Could not record %s for job %s", step.__name__, getattr(args[0], "id", args[0]))
        reset_database_connections()


def _requeued_status(job: Job) -> str:
    """The row status of a job RQ put back: at once (queued) or after an interval (scheduled)."""
    scheduled = job.get_status(refresh=False) == RQJobStatus.SCHEDULED
    return JobStatus.SCHEDULED if scheduled else JobStatus.QUEUED


class RecordingWorkerMixin:
    """Lifecycle hooks shared by :class:`Worker` and :class:`SimpleWorker`."""

    job_class = JobsJob
    name: str
    queues: list[Queue]
    _ordered_queues: list[Queue]
    _stopped_job_id: str | None
    _paused: frozenset[str] = frozenset()
    _pauses_read_at = float("-inf")
    _full_order: list[Queue] | None = None

    def _skip_paused_queues(self) -> bool:
        """Leave paused queues out of the dequeue order; return whether any queue is left."""
        now = time.monotonic()
        if now - self._pauses_read_at >= conf.pause_check_interval:
            self._paused = frozenset(pauses.paused(self.connection))  # type: ignore[attr-defined]
            self._pauses_read_at = now
        if not self._paused:
            if self._full_order is not None:
                self._ordered_queues, self._full_order = self._full_order, None
            return True
        if self._full_order is None:
            self._full_order = list(self._ordered_queues)
        self._ordered_queues = [queue for queue in self._full_order if queue.name not in self._paused]
        return bool(self._ordered_queues)

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        """RQ's dequeue, skipping paused queues and noticing a pause or resume within seconds."""
        dequeue = super().dequeue_job_and_maintain_ttl  # type: ignore[misc]
        if timeout is None:  # burst: one pass over the queues that are not paused
            return dequeue(None, max_idle_time) if self._skip_paused_queues() else None
        idle_since = time.monotonic()
        while True:
            window = max(1, math.ceil(conf.pause_check_interval))
            if max_idle_time is not None:
                left = max_idle_time - (time.monotonic() - idle_since)
                if left <= 0:
                    return None
                window = min(window, math.ceil(left))
            if not self._skip_paused_queues():
                self.heartbeat()  # type: ignore[attr-defined]
                time.sleep(window)
                continue
            # Come back after `window` idle seconds to look at the pauses again.
            result = dequeue(min(timeout, window), max_idle_time=window)
            if result is not None:
                return result

    def execute_job(self, job: Job, queue: Queue) -> None:
        reset_database_connections()
        try:
            super().execute_job(job, queue)  # type: ignore[misc]
        finally:
            reset_database_connections()

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        super().prepare_job_execution(job, remove_from_intermediate_queue)  # type: ignore[misc]
        # After RQ marked it started in Redis: a row that says "started" can be stopped.
        _write(records.mark_started, job, self.name)

    def handle_job_success(
        self, job: Job, queue: Queue, started_job_registry: Any, execution: Execution
    ) -> None:
        super().handle_job_success(job, queue, started_job_registry, execution)  # type: ignore[misc]
        result = job._result
        if job.serializer is not JSONSerializer:
            result = to_jsonable(result)  # pickled results may be any object; the row keeps a text form
        _write(records.mark_finished, job.id, result)

    def handle_job_failure(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: Any = None,
        exc_string: str = "",
        execution: Execution | None = None,
    ) -> None:
        stopped = self._stopped_job_id == job.id
        retry = bool(job.should_retry) and not stopped
        super().handle_job_failure(  # type: ignore[misc]
            job, queue, started_job_registry=started_job_registry, exc_string=exc_string, execution=execution
        )
        if stopped:
            _write(records.mark_failed, job.id, exc_string or "Stopped on request.", JobStatus.STOPPED)
        elif retry:
            _write(records.mark_retrying, job.id, exc_string, _requeued_status(job))
        else:
            _write(records.mark_failed, job.id, exc_string)

    def handle_job_retry(
        self, job: Job, queue: Queue, retry: Any, started_job_registry: Any, execution: Any
    ) -> None:
        super().handle_job_retry(job, queue, retry, started_job_registry, execution)  # type: ignore[misc]
        message = "The job returned rq.Retry."
        if job.get_status(refresh=False) == RQJobStatus.FAILED:
            _write(records.mark_failed, job.id, message + " No retries left.")
        else:
            _write(records.mark_retrying, job.id, message, _requeued_status(job))


class Worker(RecordingWorkerMixin, RQWorker):
    """RQ's forking worker: each job runs in a fresh child process (isolation, hard timeouts)."""

    def fork_work_horse(self, job: Job, queue: Queue) -> None:
        # A connection must never be shared between the parent and the child.
        connections.close_all()
        super().fork_work_horse(job, queue)

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        try:
            return super().perform_job(job, queue, execution)
        finally:
            if self.is_horse:
                connections.close_all()


class SimpleWorker(RecordingWorkerMixin, RQSimpleWorker):
    """RQ's in-process worker: no fork per job (faster, no isolation between jobs)."""


def run_job_in_process(worker: SimpleWorker, job: Job, queue: Queue) -> None:
    """Run one job with ``worker``'s lifecycle hooks but without touching database connections."""
    RQSimpleWorker.execute_job(worker, job, queue)


WORKER_CLASS_ALIASES: dict[str, str] = {
    "fork": "django_jobs.worker.Worker",
    "worker": "django_jobs.worker.Worker",
    "simple": "django_jobs.worker.SimpleWorker",
}
