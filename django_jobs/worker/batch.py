"""A worker that takes several jobs at a time, for many short jobs that need no isolation.

``rqworker --worker-class batch`` runs :class:`BatchWorker`: a
:class:`~django_jobs.worker.SimpleWorker` (jobs run in the worker's own
process) that spends fewer round trips per job.

- When it takes a job from a queue, it also takes up to ``batch_size - 1``
  more from the same queue in one round trip (a Lua script moves them to a
  list of its own, ``django_jobs:claimed:<worker name>``, and returns their
  data).
- RQ's bookkeeping of one job's end and of the next job's start travel in one
  ``MULTI``; so do the two row writes (one transaction, one commit).

Every job still gets RQ's full bookkeeping (status, execution, registries,
result) and its own row writes (start and end), at the moment it starts and
ends. What changes is where jobs wait: jobs taken ahead wait in the worker's
list instead of in their queue, where other workers cannot take them.

- A job that runs longer than :data:`SLOW_JOB` seconds makes the worker give
  back the jobs it took ahead (to the front of their queue): when it ends,
  or from the heartbeat thread once it has run ``job_monitoring_interval / 2``
  seconds (that thread looks every half interval, so within one interval).
  Then it takes one job at a time until jobs are short again.
- On a warm or cold shutdown, and when ``--max-jobs`` is reached, the worker
  gives back what it has not started.
- If the worker dies, the scheduler loop (``recovery.OrphanWatch``) gives
  its list back once its heartbeat key has been gone ``ORPHAN_GRACE``
  seconds.
- A job canceled or deleted while it waits in the list is skipped; so is one whose
  row refuses its start (canceled or deleted while Redis was away), as by every worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.utils import timezone
from redis.exceptions import RedisError
from rq.executions import Execution
from rq.job import JobStatus as RQJobStatus
from rq.utils import now as rq_now
from rq.utils import utcformat
from rq.worker import WorkerStatus

from .. import outcomes
from ..claims import CLAIM_SCRIPT, CLAIMS_KEY, claimed_key, release_claims
from .recording import row_result
from .simple import SimpleWorker
from .upkeep import HEARTBEAT_MIN_GAP

if TYPE_CHECKING:
    from redis.client import Pipeline
    from rq import Queue
    from rq.job import Job

logger = logging.getLogger("django_jobs.worker")

#: Jobs taken at once by default (the one dequeued and those taken ahead of it).
BATCH_SIZE = 20

#: A job running longer than this (seconds) makes the worker give back what it took ahead.
SLOW_JOB = 0.1

#: A row write waiting for the next round trip: (step, job, fields) as ``outcomes.record`` takes them.
Row = tuple[str, "Job", dict[str, Any]]


class BatchWorker(SimpleWorker):
    """A :class:`~django_jobs.worker.SimpleWorker` that takes jobs ahead and shares round trips.

    ``batch_size`` is the most jobs taken at once. See the module's text for
    what changes against :class:`~django_jobs.worker.SimpleWorker`.
    """

    def __init__(self, *args: Any, batch_size: int = BATCH_SIZE, **kwargs: Any) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be 1 or more, not {batch_size}.")
        super().__init__(*args, **kwargs)
        self.batch_size = batch_size
        self._ahead_count = batch_size - 1  # how many to take ahead next time
        self._ahead: deque[tuple[Job, Queue]] = deque()
        self._claimed_ids: set[str] = set()
        self._claims_lock = threading.Lock()
        self._claim = self.connection.register_script(CLAIM_SCRIPT)
        self._pipe: Pipeline | None = None
        self._after_pipe: list[Callable[[list[Any]], None]] = []
        self._rows: list[Row] = []
        self._starting: Job | None = None  # the job whose start is in self._rows
        self._refused: str | None = None  # the job whose row refused its start

    # -- taking jobs

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        taken = self._next_taken_ahead()
        if taken is not None:
            return taken
        self.flush()  # what the last job left to send, before waiting for the next
        result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        if result is not None and self._ahead_count > 0:
            self._take_ahead(result[1])
        return result

    def _next_taken_ahead(self) -> tuple[Job, Queue] | None:
        with self._claims_lock:
            if not self._ahead:
                return None
            job, queue = self._ahead[0]
            if self._skip_paused_queues() and queue in self._ordered_queues:
                self.log.info("Worker %s: %s: %s (taken ahead)", self.name, queue.name, job.id)
                return self._ahead.popleft()
        # Its queue was paused meanwhile: the jobs go back, to run once it is resumed.
        self.give_back()
        return None

    def _take_ahead(self, queue: Queue) -> None:
        prefix = self.job_class.redis_job_namespace_prefix
        found = self._claim(
            keys=[queue.key, claimed_key(self.name), CLAIMS_KEY], args=[self._ahead_count, self.name, prefix]
        )
        taken: list[tuple[Job, Queue]] = []
        missing = []
        for raw_id, fields in zip(found[::2], found[1::2], strict=True):
            job_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
            if not fields:
                missing.append(job_id)  # deleted meanwhile: RQ's dequeue skips such ids too
                continue
            job = self.job_class(job_id, connection=self.connection, serializer=self.serializer)
            job.restore(dict(zip(fields[::2], fields[1::2], strict=True)))
            job.redis_server_version = self.get_redis_server_version()
            taken.append((job, queue))
        with self._claims_lock:
            self._ahead.extend(taken)
            self._claimed_ids.update(job.id for job, _queue in taken)
        if missing:
            self.connection.lrem(claimed_key(self.name), 0, *missing)

    def give_back(self, running: Job | None = None, *, final: bool = False) -> int:
        """Put the jobs taken ahead and not started back at the front of their queue.

        From the heartbeat thread, ``running`` is the job that runs long: the
        jobs are given back only while it still runs (after it, the worker may
        already be starting the next one). ``final``: the worker stops; its
        entry in :data:`CLAIMS_KEY` goes too.
        """
        with self._claims_lock:
            if not self._claimed_ids and not final:
                return 0
            if running is not None and (self._running is None or self._running[0] is not running):
                return 0
            self._ahead.clear()
            self._claimed_ids.clear()
            moved = release_claims(self.connection, self.name)
        if moved:
            logger.info("Worker %s gave back %d job(s) it had taken ahead", self.name, moved)
        return moved

    # -- round trips shared by consecutive jobs

    def _pipeline(self) -> Pipeline:
        if self._pipe is None:
            self._pipe = self.connection.pipeline()
        return self._pipe

    def flush(self) -> None:
        """Send the Redis commands and write the rows that wait: one round trip, one commit."""
        pipe, self._pipe = self._pipe, None
        after, self._after_pipe = self._after_pipe, []
        try:
            results = pipe.execute() if pipe is not None and len(pipe) else []
            for callback in after:
                callback(results)
        except BaseException:
            # A job whose start did not reach Redis does not start; what ended did end.
            self._rows = [row for row in self._rows if row[0] != outcomes.STARTED]
            raise
        finally:
            if pipe is not None:
                pipe.reset()
            self._write_rows()

    def _write_rows(self) -> None:
        rows, self._rows = self._rows, []
        # A job with a write kept in the spool (database outage) has its next ones queue up
        # behind it there, in order: outcomes.record() sees to that.
        # The only pair there is: one job's end, then the next job's start (see _start()).
        if self._starting is not None and [row[0] for row in rows] == [outcomes.FINISHED, outcomes.STARTED]:
            (_, ended, ended_fields), (_, starting, starting_fields) = rows
            written = outcomes.record_end_and_start(
                self.connection, ended, ended_fields, starting, starting_fields
            )
            if outcomes.refused(written):
                self._refused = starting.id
            return
        for step, row_job, fields in rows:
            written = outcomes.record(self.connection, step, row_job.id, fields, row_job)
            if step == outcomes.STARTED and outcomes.refused(written):
                self._refused = row_job.id

    def prepare_execution(self, job: Job) -> Execution:
        # RQ's, into the shared pipeline: sent with the start (see _start()).
        pipe = self._pipeline()
        execution = Execution.create(job, self.get_heartbeat_ttl(job), pipeline=pipe, worker_name=self.name)
        self.executions[execution.id] = execution
        if self._state_written != WorkerStatus.BUSY:
            self.set_state(WorkerStatus.BUSY, pipeline=pipe)
        return execution

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        if not self._start(job, queue, execution):
            return False
        return super().perform_job(job, queue, execution)

    def _start(self, job: Job, queue: Queue, execution: Execution) -> bool:
        """Mark the job started (RQ and row), with what the last job left to send; False to skip it."""
        pipe = self._pipeline()
        claimed = job.id in self._claimed_ids
        status_at = len(pipe)
        if claimed:  # it waited in the worker's list: read its status just before the start
            pipe.hget(job.key, "status")
        job.prepare_for_execution(self.name, pipeline=pipe)
        pipe.persist(job.key)
        if claimed:
            pipe.lrem(claimed_key(self.name), 1, job.id)
        elif len(self.queues) == 1:
            pipe.lrem(queue.intermediate_queue_key, 1, job.id)
        if time.monotonic() - self._beat_at >= HEARTBEAT_MIN_GAP:
            self.heartbeat(self.get_heartbeat_ttl(job), pipeline=pipe)
        start: Row = (outcomes.STARTED, job, {"worker_name": self.name, "at": timezone.now()})
        self._rows.append(start)
        self._starting = job
        skipped: list[str | None] = []

        def check_status(results: list[Any]) -> None:
            status = results[status_at]
            status = status.decode() if isinstance(status, bytes) else status
            if claimed and status in (RQJobStatus.CANCELED, None):
                skipped.append(status)
                self._rows.remove(start)

        self._after_pipe.append(check_status)
        self._refused = None
        try:
            self.flush()
        finally:
            self._starting = None
            with self._claims_lock:
                self._claimed_ids.discard(job.id)
        if skipped:
            self._undo_start(job, execution, skipped[0])
            return False
        if self._refused == job.id:
            self._skip(job, execution)
            return False
        self._start_sent = job.id  # prepare_job_execution() skips RQ's start and the row's
        return True

    def _undo_start(self, job: Job, execution: Execution, status: str | None) -> None:
        """A job canceled (or deleted) while it waited in the worker's list: leave it as it was."""
        with self.connection.pipeline() as pipe:
            self.cleanup_execution(job, pipeline=pipe, execution=execution)
            if status is None:
                pipe.delete(job.key)  # the start wrote a few fields of a job that is gone
            else:
                job.set_status(RQJobStatus(status), pipeline=pipe)
            pipe.execute()
        logger.info(
            "Job %s was %s while it waited in worker %s: skipped", job.id, status or "deleted", self.name
        )

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int) -> None:
        # RQ writes the job's last heartbeat here; the job's hash is saved whole right after
        # (success or failure), with it.
        job.ended_at = job.last_heartbeat = rq_now()

    def handle_job_success(
        self, job: Job, queue: Queue, started_job_registry: Any, execution: Execution
    ) -> None:
        if job.repeats_left:  # RQ's Repeat: its own way
            self.flush()
            super().handle_job_success(job, queue, started_job_registry, execution)
            return
        # RQ's bookkeeping of a success, into the shared pipeline: sent with the next start.
        pipe = self._pipeline()
        self.increment_successful_job_count(pipeline=pipe)
        assert job.started_at is not None and job.ended_at is not None
        self.increment_total_working_time(job.ended_at - job.started_at, pipe)
        result_ttl = job.get_result_ttl(self.default_result_ttl)
        if result_ttl != 0:
            job._handle_success(
                result_ttl,
                pipeline=pipe,
                worker_name=self.name,
                execution_id=execution.id,
                execution_started_at=execution.created_at,
                execution_ended_at=job.ended_at,
            )
        job.cleanup(result_ttl, pipeline=pipe, remove_from_queue=False)
        job._status = RQJobStatus.FINISHED
        self.cleanup_execution(job, pipeline=pipe, execution=execution)
        # Read in the transaction that marks the job finished: a dependent added before it is
        # in this set, and one added after it finds the job finished (RQ's enqueue watches it).
        dependents_at = len(pipe)
        pipe.smembers(job.dependents_key)

        def after(results: list[Any]) -> None:
            # RQ's own steps, which log a failure (RQ's clean-up of its registries repairs it).
            if results[dependents_at]:
                self._enqueue_dependents_safely(queue, job)
            self._release_slot_safely(job)

        self._after_pipe.append(after)
        self._rows.append((outcomes.FINISHED, job, {"result": row_result(job), "at": timezone.now()}))

    def handle_job_failure(self, job: Job, queue: Queue, *args: Any, **kwargs: Any) -> None:
        if job.last_heartbeat is not None:  # see handle_execution_ended()
            self._pipeline().hset(job.key, "last_heartbeat", utcformat(job.last_heartbeat))
        self.flush()
        super().handle_job_failure(job, queue, *args, **kwargs)

    def handle_job_retry(self, job: Job, queue: Queue, *args: Any, **kwargs: Any) -> None:
        self.flush()
        super().handle_job_retry(job, queue, *args, **kwargs)

    def execute_job(self, job: Job, queue: Queue) -> None:
        began = time.monotonic()
        try:
            super().execute_job(job, queue)
        finally:
            with self._claims_lock:
                unstarted = job.id in self._claimed_ids  # a limit deferred it: it never started
                self._claimed_ids.discard(job.id)
            if unstarted:
                self.connection.lrem(claimed_key(self.name), 0, job.id)
        if time.monotonic() - began < SLOW_JOB:
            self._ahead_count = min(max(1, 2 * self._ahead_count), self.batch_size - 1)
        else:
            self._ahead_count = 0
            self.give_back()

    def set_state(self, state: str, pipeline: Any = None) -> None:
        if pipeline is None and state == WorkerStatus.IDLE:
            if self._ahead or state == self._state_written:
                self._state = state
                return
            pipeline = self._pipeline()  # sent before the worker waits for the next job
        super().set_state(state, pipeline)

    def check_for_suspension(self, burst: bool) -> None:
        if time.monotonic() - self._suspension_checked_at >= HEARTBEAT_MIN_GAP:
            self.flush()  # RQ may wait here, while workers are suspended
        super().check_for_suspension(burst)

    def maintain_heartbeats(self, job: Job, execution: Execution) -> None:
        # From the heartbeat thread, while a job runs long: what was taken ahead must not
        # wait behind it.
        self._ahead_count = 0
        try:
            self.give_back(running=job)
        except (RedisError, OSError):
            logger.warning("Worker %s could not give back the jobs it took ahead; trying again", self.name)
        super().maintain_heartbeats(job, execution)

    def teardown(self) -> None:
        try:
            self.flush()
            self.give_back(final=True)
        except (RedisError, OSError):
            logger.warning(
                "Worker %s could not give back the jobs it took ahead: the scheduler loop will, "
                "once this worker's heartbeat key has expired",
                self.name,
            )
        super().teardown()
