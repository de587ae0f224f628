"""RQ Job and Worker classes that keep each job's row up to date.

The worker writes the row at each step of the job's life through
``records.py``: started (attempt counted), finished (result), failed (full
traceback), stopped, or put back for a retry. A work-horse never uses the
worker's database connections, and connections are checked around every
job, so a database that restarted between two jobs costs nothing but a
reconnect.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import pickle
import random
import signal
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import IO, TYPE_CHECKING, Any

from django.db import DatabaseError, InterfaceError, connections
from django.utils import timezone
from redis.exceptions import RedisError
from rq import Retry
from rq import SimpleWorker as RQSimpleWorker
from rq import Worker as RQWorker
from rq.job import Job
from rq.job import JobStatus as RQJobStatus
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.timeouts import JobTimeoutException
from rq.utils import now as rq_now

from . import limits, pauses, records, retries, spool
from .conf import conf
from .exceptions import JobArgumentsError, JobExited, JobFunctionImportError
from .models import JobStatus
from .payload import check_result, to_jsonable

if TYPE_CHECKING:
    from rq import Queue
    from rq.executions import Execution

logger = logging.getLogger("django_jobs.worker")

#: Seconds between two heartbeats of a worker (RQ: 30). Its key in Redis
#: lives three beats, so a dead worker's key is gone within 30 s, and its
#: started jobs are recovered ``ORPHAN_GRACE`` later (see recovery.py).
JOB_MONITORING_INTERVAL = 10

#: Least seconds between two heartbeats (or looks at RQ's suspension flag) of a busy worker.
HEARTBEAT_MIN_GAP = 1.0

#: Seconds the thread that listens to a worker's command channel waits at a time (RQ: 60).
PUBSUB_WAIT = 0.2

#: Least seconds between two looks at the spool of unwritten outcomes.
SPOOL_CHECK_INTERVAL = 5.0


#: The registries :class:`JobsJob` hands out, by registry class, queue, serializer and job class.
_registries: dict[tuple[type[Any], str, int, type[Any]], Any] = {}


def _kept_registry(registry_class: type[Any]) -> Any:
    """A property that gives a job its queue's ``registry_class``, built once and kept.

    RQ's ``Job`` builds a new registry object at every access (several per job in a worker),
    and each build checks the serializer against a ``typing.Protocol``, which is slow before
    Python 3.12. A registry holds only its queue's name and key, its Redis client, serializer
    and job class: one is kept per queue and reused while the job's client is the same.
    """

    def registry(job: Job) -> Any:
        key = (registry_class, job.origin, id(job.serializer), type(job))
        kept = _registries.get(key)
        if kept is None or kept.connection is not job.connection or kept.serializer is not job.serializer:
            kept = _registries[key] = registry_class(
                job.origin, connection=job.connection, job_class=type(job), serializer=job.serializer
            )
        return kept

    return property(registry, doc=f"The job's queue's {registry_class.__name__} (kept, see _kept_registry).")


class JobsJob(Job):
    """An RQ job that explains an unimportable function and insists on a JSON result."""

    started_job_registry = _kept_registry(StartedJobRegistry)
    finished_job_registry = _kept_registry(FinishedJobRegistry)
    failed_job_registry = _kept_registry(FailedJobRegistry)

    @property
    def func(self) -> Any:
        try:
            return super().func
        except Exception as exc:
            raise JobFunctionImportError(self.func_name or "", exc) from exc

    def _execute(self) -> Any:
        func = self.func
        signature = getattr(func, "signature", None)
        if signature is None:
            try:
                signature = inspect.signature(func)
            except (TypeError, ValueError):  # some builtins have no signature
                signature = None
        if signature is not None:
            try:
                signature.bind(*self.args, **self.kwargs)
            except TypeError as exc:
                raise JobArgumentsError(self.func_name or "", _bare(signature), exc) from None
        try:
            result = super()._execute()
        except SystemExit as exc:
            # Raised inside the job: RQ would record it, but the message should say what happened.
            raise JobExited(exc.code) from exc
        if self.serializer is JSONSerializer and not isinstance(result, Retry):
            check_result(f"Job {self.func_name}()", result)
        return result


def _bare(signature: inspect.Signature) -> inspect.Signature:
    """The signature without annotations: ``(a, b=1)`` reads better in an error than ``(a: 'int', …)``."""
    empty = inspect.Parameter.empty
    parameters = [parameter.replace(annotation=empty) for parameter in signature.parameters.values()]
    return signature.replace(parameters=parameters, return_annotation=empty)


#: A connection kept across jobs is tested with a round trip when it sat idle this long.
IDLE_CHECK_AFTER = 1.0

_last_reset = float("-inf")


def reset_database_connections() -> None:
    """Drop database connections that are broken or past ``CONN_MAX_AGE``.

    Django does this around each request; a worker does it around each job.
    A persistent connection that sat idle for a second or more (or saw an
    error) is also checked with a round trip, so that a database restarted
    between two jobs costs a reconnect, not an error. Jobs that follow each
    other closely skip that round trip; if their connection broke all the
    same, the row writes are retried on a new one (see ``_write``).
    """
    global _last_reset
    now = time.monotonic()
    idle, _last_reset = now - _last_reset, now
    for conn in connections.all(initialized_only=True):
        check = conn.errors_occurred or idle >= IDLE_CHECK_AFTER
        conn.close_if_unusable_or_obsolete()
        if check and conn.connection is not None and not conn.is_usable():
            conn.close()


#: Pauses between the attempts of a row write before it is kept in Redis instead.
WRITE_RETRY_DELAYS = (0.2, 0.5, 1.0)

#: Jobs of this process with outcomes waiting in the spool: their later writes
#: queue up behind them, so that a job's writes land in order.
_spooled: set[str] = set()


def _write(connection: Any, step: str, job_id: str, apply: Callable[[], Any], **fields: Any) -> Any:
    """Apply one row write; if the database stays unavailable, keep it in Redis for later.

    The write is tried again after short pauses (the database may be
    restarting). Then the outcome goes to the spool (``spool.py``), which
    workers and the scheduler write back once the database answers. The
    worker never dies of a database error. Returns what ``apply`` returned,
    or None when the write was spooled.
    """
    if job_id not in _spooled:
        for pause in (*WRITE_RETRY_DELAYS, None):
            try:
                return apply()
            except (DatabaseError, InterfaceError) as exc:
                reset_database_connections()
                if pause is None:
                    logger.warning(
                        "Could not record %s of job %s (%s); keeping it in Redis until the database is back.",
                        step,
                        job_id,
                        exc,
                    )
                    break
                time.sleep(pause)
    if spool.save(connection, step, job_id=job_id, **fields):
        _spooled.add(job_id)
    if step != "started":
        _spooled.discard(job_id)  # the job has no later writes
    return None


def continue_after_failure(job_id: str, outcome: records.Outcome) -> None:
    """After a failed attempt that will be retried: push it now, or leave it to the scheduler loop.

    The database holds the retry, so RQ's failed registry must not list the job meanwhile.
    """
    if not outcome.retrying or outcome.row is None:
        return
    from .enqueue import push
    from .queues import get_queue

    row = outcome.row
    try:
        get_queue(row["queue"]).failed_job_registry.remove(job_id)
    except (RedisError, OSError):
        logger.warning("Could not take job %s out of RQ's failed registry", job_id)
    if outcome.push_now:
        args = (row["func_name"], row["queue"], row["args"], row["kwargs"], row["options"])
        push(job_id, *args, records.db_alias())


def describe_failure(job: Job, exc_string: str, error: BaseException | None) -> str:
    """The error kept on the row: RQ's text, ending with a line that says what happened."""
    from rq.exceptions import DeserializationError
    from rq.timeouts import JobTimeoutException

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
    _job_error: BaseException | None = None
    _beat_at = float("-inf")
    _state_written: str | None = None
    _outbox_fd: int | None = None
    #: The job whose start (RQ's bookkeeping and its row) went out already: sent by the
    #: forking Worker before the hand-over, by the BatchWorker with the last job's end.
    _start_sent: str | None = None
    _suspension_checked_at = float("-inf")
    _spool_backoff: spool.Backoff | None = None
    _admission: limits.Admission = limits.UNLIMITED

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
        self.drain_spool()
        if timeout is None:  # burst: one pass over the queues that are not paused
            return dequeue(None, max_idle_time) if self._skip_paused_queues() else None
        idle_since = time.monotonic()
        while True:
            # Come back at least every heartbeat interval, to beat (see heartbeat()).
            window = max(1, math.ceil(min(conf.pause_check_interval, self.job_monitoring_interval)))  # type: ignore[attr-defined]
            if max_idle_time is not None:
                left = max_idle_time - (time.monotonic() - idle_since)
                if left <= 0:
                    return None
                window = min(window, math.ceil(left))
            self.drain_spool()
            if not self._skip_paused_queues():
                self.heartbeat()
                time.sleep(window)
                continue
            # Come back after `window` idle seconds to look at the pauses again.
            result = dequeue(min(timeout, window), max_idle_time=window)
            if result is not None:
                return result

    def subscribe(self) -> None:
        """RQ's subscription to the worker's command channel, its listening thread waiting
        :data:`PUBSUB_WAIT` seconds at a time instead of RQ's 60.

        On leaving, RQ unsubscribes, then stops that thread and waits up to a second for it. A
        thread that reads the unsubscribe's confirmation before it is told to stop then waits
        for a new subscription, as long as one wait, so RQ's join used to take the whole second,
        and so did every ``--burst`` exit and warm shutdown that met it. Messages (a stop
        request) still reach the thread as soon as they arrive.
        """
        self.log.info(  # type: ignore[attr-defined]
            "Worker %s: subscribing to channel %s",
            self.name,
            self.pubsub_channel_name,  # type: ignore[attr-defined]
        )
        self.pubsub = self.connection.pubsub()  # type: ignore[attr-defined]
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})  # type: ignore[attr-defined]
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=PUBSUB_WAIT,
            daemon=True,
            exception_handler=self._pubsub_exception_handler,  # type: ignore[attr-defined]
        )

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        # RQ lets a worker's key live 60 s past each beat (480 s when idle); a dead worker is
        # noticed only when its key expires, so keep it to three beats.
        cap = 3 * self.job_monitoring_interval  # type: ignore[attr-defined]
        timeout = min(timeout or cap, cap)
        if pipeline is not None:  # rides on a round trip RQ makes anyway
            super().heartbeat(timeout, pipeline)  # type: ignore[misc]
            self._beat_at = time.monotonic()
            return
        # RQ beats up to three times per job, three commands each. The key lives 30 s: one
        # beat a second is plenty, and one round trip carries it.
        now = time.monotonic()
        if now - self._beat_at < HEARTBEAT_MIN_GAP:
            return
        with self.connection.pipeline(transaction=False) as beat:  # type: ignore[attr-defined]
            super().heartbeat(timeout, beat)  # type: ignore[misc]
            beat.execute()
        self._beat_at = now

    def set_state(self, state: str, pipeline: Any = None) -> None:
        # RQ writes "idle" both after a job and before the next dequeue: once is enough.
        if pipeline is None and state == self._state_written:
            self._state = state
            return
        super().set_state(state, pipeline)  # type: ignore[misc]
        self._state_written = state

    def check_for_suspension(self, burst: bool) -> None:
        # RQ reads the suspension flag before every job; once a second is soon enough.
        now = time.monotonic()
        if now - self._suspension_checked_at >= HEARTBEAT_MIN_GAP:
            self._suspension_checked_at = now
            super().check_for_suspension(burst)  # type: ignore[misc]

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
            super().execute_job(job, queue)  # type: ignore[misc]
        finally:
            # Also when the work-horse died: the slot must not outlive the run.
            self._admission = limits.UNLIMITED
            admission.release()
            reset_database_connections()

    def maintain_heartbeats(self, job: Job, execution: Execution) -> None:
        try:
            super().maintain_heartbeats(job, execution)  # type: ignore[misc]
        except (RedisError, OSError):
            # Redis is away for a moment: RQ would quit here and leave the work-horse running
            # alone; keep watching the job instead, and beat again next time.
            logger.warning("Heartbeat of worker %s failed (Redis unreachable); trying again", self.name)
        try:
            self._admission.renew()
        except (RedisError, OSError):
            logger.warning("Could not renew the concurrency slot of job %s; trying again", job.id)

    def _record(self, step: str, job_id: str, apply: Callable[[], Any], **fields: Any) -> Any:
        """Write one step of a job to its row; in a work-horse, hand it to the parent instead."""
        if self._outbox_fd is not None:
            os.write(self._outbox_fd, (spool.encode(step, job_id=job_id, **fields) + "\n").encode())
            return None
        return _write(self.connection, step, job_id, apply, **fields)  # type: ignore[attr-defined]

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        if self._start_sent == job.id:
            self._start_sent = None
            self.procline(f"Processing {job.func_name} from {job.origin} since {time.time()}")  # type: ignore[attr-defined]
            return
        super().prepare_job_execution(job, remove_from_intermediate_queue)  # type: ignore[misc]
        # After RQ marked it started in Redis: a row that says "started" can be stopped.
        at = timezone.now()
        self._record(
            "started",
            job.id,
            lambda: records.mark_started(job, self.name, at),
            worker_name=self.name,
            at=at,
        )

    def handle_job_success(
        self, job: Job, queue: Queue, started_job_registry: Any, execution: Execution
    ) -> None:
        super().handle_job_success(job, queue, started_job_registry, execution)  # type: ignore[misc]
        result = row_result(job)
        at = timezone.now()
        self._record(
            "finished",
            job.id,
            lambda: records.mark_finished(job.id, result, at),
            result=result,
            at=at,
        )

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        # Kept for handle_job_failure(), which RQ calls next with the text only.
        self._job_error = exc_info[1] if len(exc_info) > 1 else None
        super().handle_exception(job, *exc_info)  # type: ignore[misc]

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
        super().handle_job_failure(  # type: ignore[misc]
            job, queue, started_job_registry=started_job_registry, exc_string=exc_string, execution=execution
        )
        message = describe_failure(job, exc_string, error)
        if stopped:
            message = exc_string or "Stopped on request."
        types = retries.error_types(error)
        at = timezone.now()
        outcome = self._record(
            "failed",
            job.id,
            lambda: records.mark_attempt_failed(job.id, message, error_types=types, stopped=stopped, at=at),
            error=message,
            error_types=types,
            stopped=stopped,
            at=at,
        )
        if outcome is not None:
            continue_after_failure(job.id, outcome)

    def handle_job_retry(
        self, job: Job, queue: Queue, retry: Any, started_job_registry: Any, execution: Any
    ) -> None:
        super().handle_job_retry(job, queue, retry, started_job_registry, execution)  # type: ignore[misc]
        message = "The job returned rq.Retry."
        status: str = _requeued_status(job)
        if job.get_status(refresh=False) == RQJobStatus.FAILED:
            status, message = JobStatus.FAILED, message + " No retries left."
        self._record(
            "error",
            job.id,
            lambda: records.mark_failed(job.id, message, status),
            error=message,
            status=status,
        )

    def drain_spool(self) -> None:
        """Write back outcomes kept in Redis during a database outage (with backoff while it lasts)."""
        backoff = self._spool_backoff
        if backoff is None:
            backoff = self._spool_backoff = spool.Backoff()
        if not backoff.due():
            return
        connection = self.connection  # type: ignore[attr-defined]
        try:
            if spool.pending(connection):
                spool.drain(connection)
            if spool.pending(connection):
                backoff.failed()
            else:
                backoff.succeeded(wait=SPOOL_CHECK_INTERVAL)
        except (RedisError, OSError):
            backoff.failed()


class _Spare:
    """A work-horse forked ahead of its job, waiting for it on a pipe."""

    def __init__(self, pid: int, order_fd: int, outbox: IO[bytes]) -> None:
        self.pid, self.order_fd, self.outbox = pid, order_fd, outbox

    def alive(self) -> bool:
        try:
            return os.waitpid(self.pid, os.WNOHANG) == (0, 0)
        except ChildProcessError:
            return False

    def close(self, wait: float = 2.0) -> None:
        """End it: it reads end-of-file and exits; killed if it does not within ``wait`` s."""
        with contextlib.suppress(OSError):
            os.close(self.order_fd)
        self.outbox.close()
        deadline = time.monotonic() + wait
        while True:
            try:
                if os.waitpid(self.pid, os.WNOHANG) != (0, 0):
                    return
            except ChildProcessError:
                return
            if time.monotonic() >= deadline:
                with contextlib.suppress(OSError):
                    os.kill(self.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(self.pid, 0)
                return
            time.sleep(0.005)


class Worker(RecordingWorkerMixin, RQWorker):
    """RQ's forking worker: each job runs in a fresh child process (isolation, hard timeouts).

    The child process of the next job (the spare) is forked while the current
    job runs, and waits on a pipe: the fork, the child's new Redis connection
    and the dropping of inherited database connections are then off the path
    from dequeue to the job's first line. Each process still runs one job and
    exits; set ``prefork = False`` on a subclass to fork at dequeue instead,
    as RQ does.
    """

    #: Fork the next job's process ahead of time.
    prefork = True
    _spare: _Spare | None = None
    _outbox: IO[bytes] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Heartbeats every 10 s (RQ: 30 s) while a job runs, so that a dead worker is noticed
        # within HEARTBEAT_TTL of its last one.
        kwargs.setdefault("job_monitoring_interval", JOB_MONITORING_INTERVAL)
        super().__init__(*args, **kwargs)

    def prepare_execution(self, job: Job) -> Execution:
        """RQ's execution bookkeeping and the job's start in Redis, in one round trip.

        RQ's work-horse marks the job started in Redis once it runs; here the
        worker does it before the hand-over, which saves the work-horse a
        round trip and means that a row that says "started" is one that
        ``handle.stop()`` can reach (it needs the worker's name).
        """
        from rq.executions import Execution as RQExecution
        from rq.worker import WorkerStatus

        self._stopped_job_id = None  # a stop request for this run is taken from here on
        with self.connection.pipeline() as pipeline:
            ttl = self.get_heartbeat_ttl(job)
            execution = RQExecution.create(job, ttl, pipeline=pipeline, worker_name=self.name)
            self.executions[execution.id] = execution
            self.set_state(WorkerStatus.BUSY, pipeline=pipeline)
            # What RQ's work-horse does first (prepare_job_execution), in the same round trip.
            self.heartbeat(ttl, pipeline=pipeline)
            job.prepare_for_execution(self.name, pipeline)
            pipeline.persist(job.key)
            if len(self.queues) == 1:  # as RQ's work-horse: the job came from that queue
                pipeline.lrem(self.queues[0].intermediate_queue_key, 1, job.id)
            pipeline.execute()
        return execution

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        if self.prefork and self._spare is None:
            self._fork_spare()  # the first job's; later ones are forked while a job runs
        return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)

    def fork_work_horse(self, job: Job, queue: Queue) -> None:
        # The worker writes the job's row, on its own (kept) connection: the start now, before
        # the job's code can run (a worker killed a moment later leaves a row that counts the
        # attempt), the end from what the work-horse hands back in a file. The work-horse then
        # needs no database connection of its own, unless the job itself uses the database.
        # On PostgreSQL the start is sent, and its answer read once the job has its process:
        # the statement commits even if the worker dies in between.
        self._start_sent = job.id
        at = timezone.now()
        sent = None if job.id in _spooled else records.send_start(job, self.name, at)
        if sent is None:
            self._write_start(job, at)
        spare, self._spare = self._spare, None
        if spare is not None and self._hand_over(spare, job, queue):
            self._outbox = spare.outbox
        else:
            self._outbox = tempfile.TemporaryFile()  # noqa: SIM115 (closed in _apply_outbox)
            super().fork_work_horse(job, queue)
            _own_process_group(self._horse_pid)
        if self._stopped_job_id == job.id:
            self.kill_horse()  # stopped before its process had it (see kill_horse())
        if sent is not None:
            try:
                sent.finish()
            except (DatabaseError, InterfaceError) as exc:
                logger.warning("The start of job %s was not written (%s); writing it again", job.id, exc)
                reset_database_connections()
                self._write_start(job, at)
        if self.prefork:
            self._fork_spare(job, queue)  # the next job's process, forked while this job runs
            self._rehearse_pickup(job, queue)

    def _rehearse_pickup(self, job: Job, queue: Queue) -> None:
        """Run the next pickup's Python steps on a copy of ``job``, sending nothing anywhere.

        The spare was just forked: the first write of this process to each memory page it
        shares with the spare copies that page (a fault of a few microseconds). Making the
        writes of the next job's fetch, start and hand-over now, while this job runs, copies
        most of those pages here rather than between the next dequeue and its hand-over.
        """
        from rq.executions import Execution as RQExecution

        try:
            copy = self.job_class(job.id, connection=self.connection, serializer=self.serializer)
            copy.restore(_stored_form(job))
            with self.connection.pipeline() as pipeline:  # never executed: reset on leaving
                execution = RQExecution.create(
                    copy, self.get_heartbeat_ttl(copy), pipeline=pipeline, worker_name=self.name
                )
                copy.prepare_for_execution(self.name, pipeline)
                pipeline.persist(copy.key)
            records.start_statement(copy.id, self.name, timezone.now(), alone=True)  # as send_start builds it
            _order(copy, queue, execution)
        except Exception:  # a rehearsal only: the real pickup reports its own errors
            logger.debug("Could not rehearse the pickup of job %s", job.id, exc_info=True)

    def _write_start(self, job: Job, at: datetime) -> None:
        _write(
            self.connection,
            "started",
            job.id,
            lambda: records.mark_started(job, self.name, at),
            worker_name=self.name,
            at=at,
        )

    def kill_horse(self, sig: signal.Signals = signal.SIGKILL) -> None:
        # A stop request can come between the execution's start and the fork (or hand-over):
        # RQ would then kill the process group of pid 0, the worker's own. fork_work_horse()
        # kills the job's process once there is one.
        if self.horse_pid > 0:
            super().kill_horse(sig)

    def _hand_over(self, spare: _Spare, job: Job, queue: Queue) -> bool:
        """Give ``job`` to the spare; False if the spare is gone (then the caller forks)."""
        try:
            order = _order(job, queue, self.execution)
        except Exception:
            logger.exception("Could not write down job %s for the spare work-horse; forking one", job.id)
            spare.close(wait=0)
            return False
        try:
            handed = spare.alive() and _write_all(spare.order_fd, order)
        except OSError:  # it exited since: the pipe has no reader
            handed = False
        if not handed:
            logger.warning(
                "The spare work-horse %s of worker %s is gone; forking a new one", spare.pid, self.name
            )
            spare.close(wait=0)
            return False
        os.close(spare.order_fd)
        os.environ["RQ_WORKER_ID"], os.environ["RQ_JOB_ID"] = self.name, job.id
        self._horse_pid = spare.pid
        self.procline(f"Handed job {job.id} to {spare.pid} at {time.time()}")  # type: ignore[no-untyped-call]
        return True

    def _fork_spare(self, sample: Job | None = None, queue: Queue | None = None) -> None:
        """Fork the next job's process; ``sample``, the job running now (from ``queue``), lets it
        warm up."""
        outbox = tempfile.TemporaryFile()  # noqa: SIM115 (closed with the spare or in _apply_outbox)
        order_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(write_fd)
            try:
                self._spare_main(order_fd, outbox, sample, queue)
            except BaseException:  # nothing may escape a forked child
                logger.exception("Spare work-horse of worker %s failed", self.name)
                os._exit(1)
            os._exit(0)
        os.close(order_fd)
        _own_process_group(pid)
        self._spare = _Spare(pid, write_fd, outbox)

    def _spare_main(
        self, order_fd: int, outbox: IO[bytes], sample: Job | None, sample_queue: Queue | None
    ) -> None:
        """In the spare: get ready, wait for a job, run it as RQ's work-horse would."""
        os.setpgrp()
        self.setup_work_horse_signals()  # type: ignore[no-untyped-call]
        _drop_inherited_connections()
        if self._outbox is not None:  # the running job's, inherited: not this process's
            self._outbox.close()
        with contextlib.suppress(RedisError, OSError):
            self.connection.ping()  # its own Redis connection, made now rather than at the job
        if sample is not None:
            with contextlib.suppress(Exception):
                self._warm_up(sample, sample_queue)
        with os.fdopen(order_fd, "rb") as orders:
            head = orders.read(4)
            payload = orders.read(struct.unpack("!I", head)[0]) if len(head) == 4 else b""
        if not payload:
            os._exit(0)  # the worker is done with it (or gone)
        order, job = self._read_order(payload)
        queue = self._take_order(order, job)
        self._outbox = outbox
        self.main_work_horse(job, queue)

    def _warm_up(self, sample: Job, queue: Queue | None) -> None:
        """Take an order for the job running now, and go through the start of a job, without
        running it. A forked child's first write to each memory page it shares with the worker
        copies the page (hundreds of pages here): the real order then touches pages already
        copied. What it sets is set again by the real order."""
        order, job = self._read_order(_order(sample, queue, self.execution)[4:], warm_up=True)
        self._take_order(order, job)
        random.seed()  # as RQ's work-horse does first
        job.func, job.args, job.kwargs  # noqa: B018 (the import and the payload, read)
        with self.death_penalty_class(job.timeout or 180, JobTimeoutException, job_id=job.id):
            self.log.debug("Worker %s: spare ready", self.name)

    def _take_order(self, order: dict[str, Any], job: Job) -> Queue:
        """Make this process the work-horse of ``job``, as the worker's order says; its queue."""
        from rq.executions import Execution as RQExecution

        queue = next((q for q in self.queues if q.name == order["queue"]), None)
        if queue is None:
            queue = self.queue_class(order["queue"], connection=self.connection, serializer=self.serializer)
        self.executions.clear()
        if order["execution"] is not None:
            execution = RQExecution(order["execution"], job.id, self.connection, worker_name=self.name)
            execution.created_at = datetime.fromtimestamp(order["created_at"], tz=UTC)
            self.executions[execution.id] = execution
        os.environ["RQ_WORKER_ID"], os.environ["RQ_JOB_ID"] = self.name, job.id
        self._horse_pid = 0
        self._stopped_job_id = None
        self._job_error = None
        self._start_sent = job.id
        return queue

    def _read_order(self, payload: bytes, warm_up: bool = False) -> tuple[dict[str, Any], Job]:
        """The order the worker sent (see :func:`_order`), and its job, without a fetch."""
        order = pickle.loads(payload)  # from the worker, this process's parent
        job: Job = self.job_class(order["job"], connection=self.connection, serializer=self.serializer)
        try:
            job.restore(order["hash"])
        except Exception:
            if warm_up:
                raise
            logger.warning("Job %s as handed over could not be read; fetching it from Redis", order["job"])
            job = self.job_class.fetch(order["job"], connection=self.connection, serializer=self.serializer)
        return order, job

    def main_work_horse(self, job: Job, queue: Queue) -> None:
        # In the child. A connection must never be used by both processes: drop the inherited
        # ones without closing them (closing would end the parent's session); the child opens
        # its own if the job needs one, and ends with os._exit().
        _drop_inherited_connections()
        if self._outbox is not None:
            self._outbox_fd = self._outbox.fileno()
        super().main_work_horse(job, queue)

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        try:
            return super().perform_job(job, queue, execution)
        finally:
            if self.is_horse:
                # The work-horse ends with os._exit(), which runs no atexit hook: the pushes and
                # rows of jobs this job enqueued in the background are done before it.
                from .pusher import flush

                flush()
                connections.close_all()

    def monitor_work_horse(self, job: Job, queue: Queue, execution: Execution) -> None:
        try:
            super().monitor_work_horse(job, queue, execution)
        finally:
            # Outside RQ's watch over the work-horse: its alarm must not cut the writes short.
            self._apply_outbox()

    def teardown(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None and not self.is_horse:
            spare.close()
        super().teardown()  # type: ignore[no-untyped-call]

    def _apply_outbox(self) -> None:
        """Write the steps the work-horse handed back (end, error, retry) to the job's row."""
        outbox, self._outbox, self._start_sent = self._outbox, None, None
        if outbox is None:
            return
        with outbox:
            outbox.seek(0)
            lines = outbox.read().splitlines()
        for line in lines:
            item = json.loads(line)
            fields = {key: value for key, value in item.items() if key not in ("step", "job_id")}
            try:
                _write(self.connection, item["step"], item["job_id"], partial(spool.apply, item), **fields)
            except Exception:  # never lose the worker over one write; the scheduler repairs the row
                logger.exception("Could not record %s of job %s", item["step"], item["job_id"])


def _order(job: Job, queue: Queue | None, execution: Execution | None) -> bytes:
    """The hand-over of ``job`` to a spare, framed for its pipe: a length, then the pickle.

    It carries the worker's copy of the job in the form RQ's own save writes to Redis, so that
    the work-horse need not fetch the job again (RQ's own forking worker hands its child the
    same copy, through fork).
    """
    order = {
        "job": job.id,
        "queue": queue.name if queue is not None else None,
        "execution": execution.id if execution is not None else None,
        "created_at": execution.created_at.timestamp() if execution is not None else None,
        "hash": _stored_form(job),
    }
    payload = pickle.dumps(order, protocol=pickle.HIGHEST_PROTOCOL)
    return struct.pack("!I", len(payload)) + payload


def _stored_form(job: Job) -> dict[bytes, bytes]:
    """The job's ``to_dict()`` as RQ's save stores it and ``HGETALL`` returns it (redis-py's encoding)."""
    encode: Callable[[Any], bytes] = job.connection.get_encoder().encode
    return {encode(key): encode(value) for key, value in job.to_dict().items()}


def _write_all(fd: int, data: bytes) -> bool:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    return True


def _own_process_group(pid: int) -> None:
    """Put a just-forked work-horse in a process group of its own, from the worker's side.

    The child does it too (``os.setpgrp()``), but maybe not yet: until then,
    RQ's ``kill_horse()`` would signal the worker's own group.
    """
    with contextlib.suppress(OSError):  # it did it already, or it is gone
        os.setpgid(pid, pid)


def _drop_inherited_connections() -> None:
    """In a forked child: forget the parent's database connections without closing them."""
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None:
            _inherited.append(conn.connection)
            conn.connection = None


#: Connections a work-horse inherited from its worker: kept referenced, never closed.
_inherited: list[Any] = []


class SimpleWorker(RecordingWorkerMixin, RQSimpleWorker):
    """RQ's in-process worker: no fork per job (faster, no isolation between jobs)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("job_monitoring_interval", JOB_MONITORING_INTERVAL)
        super().__init__(*args, **kwargs)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        # RQ keeps a SimpleWorker alive for the job's whole timeout, as it cannot beat while
        # the job runs; this one beats from a thread (below), so a dead one is noticed sooner.
        return RQWorker.get_heartbeat_ttl(self, job, working_time)

    _running: tuple[Job, Execution, float] | None = None
    _beater: threading.Thread | None = None

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        if self._beater is None or not self._beater.is_alive():
            self._beater = threading.Thread(target=self._beat_while_running, name="heartbeat", daemon=True)
            self._beater.start()
        self._running = (job, execution, time.monotonic())
        try:
            return super().perform_job(job, queue, execution)
        finally:
            self._running = None

    def _beat_while_running(self) -> None:
        """Beat for a job that runs longer than a heartbeat interval (one thread per worker)."""
        interval = self.job_monitoring_interval
        while True:
            time.sleep(interval / 2)
            running = self._running
            if running is None or time.monotonic() - running[2] < interval / 2:
                continue
            try:
                self.maintain_heartbeats(running[0], running[1])
            except (RedisError, OSError):
                logger.warning("Heartbeat of worker %s failed; trying again", self.name)


def run_job_in_process(worker: SimpleWorker, job: Job, queue: Queue) -> None:
    """Run one job with ``worker``'s lifecycle hooks but without touching database connections."""
    RQSimpleWorker.execute_job(worker, job, queue)


WORKER_CLASS_ALIASES: dict[str, str] = {
    "fork": "django_jobs.worker.Worker",
    "worker": "django_jobs.worker.Worker",
    "simple": "django_jobs.worker.SimpleWorker",
    "batch": "django_jobs.batching.BatchWorker",
}
