"""The forking worker: each job runs in a process of its own, forked ahead of time.

:class:`Worker` is RQ's ``Worker`` with django_jobs' recording hooks. The child
process of the next job (the spare, :class:`_Spare`) is forked while the
current job runs and waits on a pipe; at the next dequeue the worker writes the
job's start to its row, marks it started in Redis in the same round trip as
RQ's own bookkeeping, and hands the job to the spare (:func:`_order`). The
work-horse writes each step of the job to a file (its outbox); the worker writes
them to the row once the work-horse has exited (:func:`django_jobs.outcomes.apply_lines`).
docs/performance.md tells what each of these saves.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import random
import signal
import struct
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any

from django.db import DatabaseError, InterfaceError, connections
from django.utils import timezone
from redis.exceptions import RedisError
from rq import Queue
from rq import Worker as RQWorker
from rq.executions import Execution
from rq.job import Job
from rq.timeouts import JobTimeoutException
from rq.worker import WorkerStatus

from .. import outcomes, records
from ..db.connections import drop_inherited_connections, reset_database_connections
from ..db.statements import start_statement
from ..pusher import flush as flush_background_work
from .recording import RecordingWorkerMixin
from .upkeep import JOB_MONITORING_INTERVAL

logger = logging.getLogger("django_jobs.worker")

#: The worker's word to a work-horse at the gate: run the job, or exit without running it.
_GO, _NO_GO = b"+", b"-"


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
    #: In the worker: the pipe of the work-horse that waits for its word (``_open_gate``), and
    #: the word it was given.
    _gate_fd: int | None = None
    _told: bool | None = None
    #: In a work-horse: the pipe it reads the worker's word from, before its job runs.
    _gate: IO[bytes] | None = None
    #: The job skipped without a work-horse: monitor_work_horse() has none to wait for.
    _skipped: str | None = None

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
        self._stopped_job_id = None  # a stop request for this run is taken from here on
        with self.connection.pipeline() as pipeline:
            ttl = self.get_heartbeat_ttl(job)
            execution = Execution.create(job, ttl, pipeline=pipeline, worker_name=self.name)
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
        # On PostgreSQL the start is sent, and its answer read once the spare has the job: the
        # statement commits even if the worker dies in between, and the spare waits for the
        # worker's word (the gate) before the job's first line. A row that refuses the start
        # (canceled, or deleted while Redis was away) means the job is skipped, never run.
        self._start_sent, self._told = job.id, None
        at = timezone.now()
        sent = None if outcomes.is_spooled(job.id) else records.send_start(job, self.name, at)
        if sent is None and not self._write_start(job, at):
            self._skip_unhanded(job)
            return
        spare, self._spare = self._spare, None
        if spare is not None and self._hand_over(spare, job, queue, gated=sent is not None):
            self._outbox = spare.outbox
        else:
            if sent is not None:  # no spare to hold the job back: the answer first
                runs = self._finish_start(sent, job, at)
                sent = None
                if not runs:
                    self._skip_unhanded(job)
                    return
            self._outbox = tempfile.TemporaryFile()  # noqa: SIM115 (closed in _apply_outbox)
            super().fork_work_horse(job, queue)
            _own_process_group(self._horse_pid)
        if self._stopped_job_id == job.id:
            self.kill_horse()  # stopped before its process had it (see kill_horse())
        if sent is not None and not self._finish_start(sent, job, at):
            self._skip(job, self.execution)  # the work-horse exits without running it
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
        try:
            copy = self.job_class(job.id, connection=self.connection, serializer=self.serializer)
            copy.restore(_stored_form(job))
            with self.connection.pipeline() as pipeline:  # never executed: reset on leaving
                execution = Execution.create(
                    copy, self.get_heartbeat_ttl(copy), pipeline=pipeline, worker_name=self.name
                )
                copy.prepare_for_execution(self.name, pipeline)
                pipeline.persist(copy.key)
            start_statement(copy.id, self.name, timezone.now(), alone=True)  # as send_start builds it
            _order(copy, queue, execution)
        except Exception:  # a rehearsal only: the real pickup reports its own errors
            logger.debug("Could not rehearse the pickup of job %s", job.id, exc_info=True)

    def _finish_start(self, sent: records.SentStart, job: Job, at: datetime) -> bool:
        """Read the sent start's answer and tell the work-horse at the gate, if one waits, whether
        to run the job; return that (False: the row refused the start). A job without a row is
        let run before its row is written."""
        try:
            runs = sent.finish(ruled=self._open_gate)
        except (DatabaseError, InterfaceError) as exc:
            logger.warning("The start of job %s was not written (%s); writing it again", job.id, exc)
            reset_database_connections()
            runs = self._write_start(job, at)
        return self._open_gate(runs)

    def _open_gate(self, runs: bool) -> bool:
        """Tell the work-horse at the gate whether to run its job; return what it was told (the
        first word stands), or ``runs`` where none waits."""
        fd, self._gate_fd = self._gate_fd, None
        if fd is not None:
            self._told = runs
            with contextlib.suppress(OSError):  # it is gone already (a stop request killed it)
                _write_all(fd, _GO if runs else _NO_GO)
            os.close(fd)
        return runs if self._told is None else self._told

    def _skip_unhanded(self, job: Job) -> None:
        """Skip a job that no work-horse has (see ``_skip``); monitor_work_horse() then waits for none."""
        self._skip(job, self.execution)
        self._skipped = job.id

    def monitor_work_horse(self, job: Job, queue: Queue, execution: Execution) -> None:
        if self._skipped == job.id:
            self._skipped = self._start_sent = None
            self.executions.pop(execution.id, None)
            return
        try:
            super().monitor_work_horse(job, queue, execution)
        finally:
            # Outside RQ's watch over the work-horse: its alarm must not cut the writes short.
            self._apply_outbox()

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            # In the work-horse, before the job's first line: the worker's word on the start.
            with gate:
                word = gate.read(1)
            if word != _GO:
                os._exit(0)  # its row refused the start, or the worker is gone: not run
        super().prepare_job_execution(job, remove_from_intermediate_queue)

    def kill_horse(self, sig: signal.Signals = signal.SIGKILL) -> None:
        # A stop request can come between the execution's start and the fork (or hand-over):
        # RQ would then kill the process group of pid 0, the worker's own. fork_work_horse()
        # kills the job's process once there is one.
        if self.horse_pid > 0:
            super().kill_horse(sig)

    def _hand_over(self, spare: _Spare, job: Job, queue: Queue, *, gated: bool = False) -> bool:
        """Give ``job`` to the spare; False if the spare is gone (then the caller forks).

        ``gated``: the spare waits for the worker's word before it runs the job (``_open_gate``).
        """
        try:
            order = _order(job, queue, self.execution, gated=gated)
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
        if gated:
            self._gate_fd = spare.order_fd
        else:
            os.close(spare.order_fd)
        os.environ["RQ_WORKER_ID"], os.environ["RQ_JOB_ID"] = self.name, job.id
        self._horse_pid = spare.pid
        self.procline(f"Handed job {job.id} to {spare.pid} at {time.time()}")
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
        self.setup_work_horse_signals()
        drop_inherited_connections()
        if self._outbox is not None:  # the running job's, inherited: not this process's
            self._outbox.close()
        with contextlib.suppress(RedisError, OSError):
            self.connection.ping()  # its own Redis connection, made now rather than at the job
        if sample is not None:
            with contextlib.suppress(Exception):
                self._warm_up(sample, sample_queue)
        orders = os.fdopen(order_fd, "rb")
        head = orders.read(4)
        payload = orders.read(struct.unpack("!I", head)[0]) if len(head) == 4 else b""
        if not payload:
            os._exit(0)  # the worker is done with it (or gone)
        order, job = self._read_order(payload)
        if order.get("gated"):
            self._gate = orders  # read in prepare_job_execution()
        else:
            orders.close()
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
        if getattr(job, "refusal", lambda: None)() is None:  # a refused job is refused by the real run
            job.func, job.args, job.kwargs  # noqa: B018 (the import and the payload, read)
        with self.death_penalty_class(job.timeout or 180, JobTimeoutException, job_id=job.id):
            self.log.debug("Worker %s: spare ready", self.name)

    def _take_order(self, order: dict[str, Any], job: Job) -> Queue:
        """Make this process the work-horse of ``job``, as the worker's order says; its queue."""
        queue = next((q for q in self.queues if q.name == order["queue"]), None)
        if queue is None:
            queue = self.queue_class(order["queue"], connection=self.connection, serializer=self.serializer)
        self.executions.clear()
        if order["execution"] is not None:
            execution = Execution(order["execution"], job.id, self.connection, worker_name=self.name)
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
        drop_inherited_connections()
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
                flush_background_work()
                connections.close_all()

    def teardown(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None and not self.is_horse:
            spare.close()
        super().teardown()

    def _apply_outbox(self) -> None:
        """Write the steps the work-horse handed back (end, error, retry) to the job's row."""
        outbox, self._outbox, self._start_sent = self._outbox, None, None
        if outbox is None:
            return
        with outbox:
            outbox.seek(0)
            lines = outbox.read().splitlines()
        outcomes.apply_lines(self.connection, lines)


def _order(job: Job, queue: Queue | None, execution: Execution | None, *, gated: bool = False) -> bytes:
    """The hand-over of ``job`` to a spare, framed for its pipe: a length, then the pickle.

    It carries the worker's copy of the job in the form RQ's own save writes to Redis, so that
    the work-horse need not fetch the job again (RQ's own forking worker hands its child the
    same copy, through fork). ``gated``: one byte follows on the pipe later, :data:`_GO` or
    :data:`_NO_GO`, and the job runs only after a ``_GO``.
    """
    order = {
        "job": job.id,
        "queue": queue.name if queue is not None else None,
        "execution": execution.id if execution is not None else None,
        "created_at": execution.created_at.timestamp() if execution is not None else None,
        "hash": _stored_form(job),
        "gated": gated,
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
