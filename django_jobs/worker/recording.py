"""The hooks that write a job's row at each step of its life, shared by every worker class.

:class:`RecordingWorkerMixin` goes before RQ's worker class. After RQ's own
bookkeeping of each step it reports the step to :mod:`django_jobs.outcomes`,
which writes the row: started (the attempt counted), finished (the result),
failed (the full traceback; the retry policy on the row decides what comes
next), or put back by RQ (the job returned ``rq.Retry``). In a forking worker's
work-horse the steps go to a file its worker writes from instead (``_outbox_fd``).
Rate and concurrency limits are checked before a job runs (``django_jobs.limits``).

The start is written before the job's code runs, and a row that refuses it (canceled,
or deleted while Redis was away: see :mod:`django_jobs.removals`) makes the worker
skip the job (:meth:`RecordingWorkerMixin._skip`): it is not run, and leaves Redis.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from django.utils import timezone
from redis.exceptions import RedisError
from rq import Queue
from rq.exceptions import DeserializationError
from rq.executions import Execution
from rq.job import Job
from rq.job import JobStatus as RQJobStatus
from rq.serializers import JSONSerializer
from rq.timeouts import JobTimeoutException
from rq.utils import now as rq_now

from .. import limits, outcomes, records, removals, retries
from ..db.connections import reset_database_connections
from ..jobclass import JobsJob
from ..payload import storable_text, to_jsonable
from ..status import JobStatus
from .upkeep import UpkeepMixin

logger = logging.getLogger("django_jobs.worker")


def describe_failure(job: Job, exc_string: str, error: BaseException | None) -> str:
    """The error kept on the row: RQ's text, ending with a line that says what happened."""
    if isinstance(error, DeserializationError):
        return (
            f"{exc_string.rstrip()}\n{records.PAYLOAD_DAMAGED} (damaged or written by other code). "
            "The job was pushed again from its row, which keeps the arguments; if that fails "
            "too, the job ends failed."
        )
    if isinstance(error, JobTimeoutException):
        return f"{exc_string.rstrip()}\nTimed out after {job.timeout} s."
    if exc_string.startswith("Work-horse terminated unexpectedly"):
        started = job.started_at
        elapsed = (rq_now() - started).total_seconds() if started else 0.0
        if job.timeout and job.timeout > 0 and elapsed >= job.timeout:
            return (
                f"Timed out after {job.timeout} s: the job did not stop when told to, so its "
                f"work-horse process was killed. ({exc_string.strip()})"
            )
        return (
            f"The work-horse process running the job died ({exc_string.strip().rstrip(';')}). It may have "
            "run out of memory, been killed, or called os._exit()."
        )
    return exc_string


def row_result(job: Job) -> Any:
    """What the row keeps of a job's return value."""
    if job.serializer is JSONSerializer:
        return job._result
    return to_jsonable(job._result)  # pickled results may be any object; the row keeps a text form


def _requeued_status(job: Job) -> str:
    """The row status of a job RQ put back: at once (queued) or after an interval (scheduled)."""
    scheduled = job.get_status(refresh=False) == RQJobStatus.SCHEDULED
    return JobStatus.SCHEDULED if scheduled else JobStatus.QUEUED


class RecordingWorkerMixin(UpkeepMixin):
    """Lifecycle hooks shared by every worker class: each step of a job is written to its row."""

    job_class = JobsJob
    _stopped_job_id: str | None
    _job_error: BaseException | None = None
    #: In a forking worker's work-horse: the file its steps go to, for the worker to write.
    _outbox_fd: int | None = None
    #: The job whose start (RQ's bookkeeping and its row) went out already: sent by the
    #: forking Worker before the hand-over, by the BatchWorker with the last job's end.
    _start_sent: str | None = None
    _admission: limits.Admission = limits.UNLIMITED

    def execute_job(self, job: Job, queue: Queue) -> None:
        reset_database_connections()
        admission = limits.admit(job)
        if admission.wait is not None:
            # Over its rate or concurrency limit: it waits in the database, it is not dropped.
            limits.defer(job, queue, admission)
            reset_database_connections()
            return
        self._admission = admission
        try:
            super().execute_job(job, queue)
        finally:
            # Also when the work-horse died: the slot must not outlive the run.
            self._admission = limits.UNLIMITED
            admission.release()
            reset_database_connections()

    def maintain_heartbeats(self, job: Job, execution: Execution) -> None:
        try:
            super().maintain_heartbeats(job, execution)
        except (RedisError, OSError):
            # Redis is away for a moment: RQ would quit here and leave the work-horse running
            # alone; keep watching the job instead, and beat again next time.
            logger.warning("Heartbeat of worker %s failed (Redis unreachable); trying again", self.name)
        try:
            self._admission.renew()
        except (RedisError, OSError):
            logger.warning("Could not renew the concurrency slot of job %s; trying again", job.id)

    def _record(self, step: str, job: Job, **fields: Any) -> Any:
        """Write one step of a job to its row (return what the write returned); in a work-horse,
        hand it to the worker instead."""
        if self._outbox_fd is not None:
            os.write(self._outbox_fd, (outcomes.encode(step, job.id, fields) + "\n").encode())
            return None
        return outcomes.record(self.connection, step, job.id, fields, job)

    def _write_start(self, job: Job, at: Any = None) -> bool:
        """Write the job's start to its row; False if the row refuses it (the job must not run)."""
        written = self._record(outcomes.STARTED, job, worker_name=self.name, at=at or timezone.now())
        return not outcomes.refused(written)

    def _skip(self, job: Job, execution: Execution | None) -> None:
        """Leave unrun a job whose row refused its start (canceled, or deleted while Redis was
        away): undo RQ's start of it, and take it out of Redis."""
        logger.info("Job %s was canceled or deleted: skipped, not run", job.id)
        try:
            with self.connection.pipeline() as pipeline:
                self.cleanup_execution(job, pipeline=pipeline, execution=execution)
                pipeline.execute()
            removals.skipped(job)
        except Exception:  # never lose the worker over it: the scheduler loop takes it out later
            logger.warning("Could not take skipped job %s out of Redis", job.id, exc_info=True)

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        if self._start_sent != job.id:
            # RQ's start in Redis, then the row's (a row that says "started" can be stopped),
            # before the job's code: a row that refuses the start means the job is skipped.
            super().prepare_job_execution(job, len(self.queues) == 1)
            if not self._write_start(job):
                self._skip(job, execution)
                return False
            self._start_sent = job.id  # prepare_job_execution() has nothing more to do
        return bool(super().perform_job(job, queue, execution))

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        if self._start_sent == job.id:
            self._start_sent = None
            self.procline(f"Processing {job.func_name} from {job.origin} since {time.time()}")
            return
        super().prepare_job_execution(job, remove_from_intermediate_queue)
        self._write_start(job)

    def handle_job_success(
        self, job: Job, queue: Queue, started_job_registry: Any, execution: Execution
    ) -> None:
        super().handle_job_success(job, queue, started_job_registry, execution)
        self._record(outcomes.FINISHED, job, result=row_result(job), at=timezone.now())

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        # Kept for handle_job_failure(), which RQ calls next with the text only.
        self._job_error = exc_info[1] if len(exc_info) > 1 else None
        super().handle_exception(job, *exc_info)

    def handle_job_failure(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: Any = None,
        exc_string: str = "",
        execution: Execution | None = None,
    ) -> None:
        stopped = self._stopped_job_id == job.id
        error, self._job_error = self._job_error, None
        # An exception's text is the job's to choose: RQ writes it to Redis as UTF-8, which a lone
        # surrogate breaks (the worker or its work-horse would die of it), so RQ gets it escaped too.
        exc_string = storable_text(exc_string)
        super().handle_job_failure(
            job, queue, started_job_registry=started_job_registry, exc_string=exc_string, execution=execution
        )
        message = describe_failure(job, exc_string, error)
        if stopped:
            message = exc_string or "Stopped on request."
        self._record(
            outcomes.FAILED,
            job,
            error=message,
            error_types=retries.error_types(error),
            stopped=stopped,
            at=timezone.now(),
        )

    def handle_job_retry(
        self, job: Job, queue: Queue, retry: Any, started_job_registry: Any, execution: Any
    ) -> None:
        super().handle_job_retry(job, queue, retry, started_job_registry, execution)
        message = "The job returned rq.Retry."
        status: str = _requeued_status(job)
        if job.get_status(refresh=False) == RQJobStatus.FAILED:
            status, message = JobStatus.FAILED, message + " No retries left."
        self._record(outcomes.ERROR, job, error=message, status=status)
