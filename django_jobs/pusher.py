"""The work ``.delay()`` hands to a thread: pushes after the row, or rows after the push.

With ``DJANGO_JOBS["PUSH"] = "background"`` the push that follows a commit
is handed to one thread per process, which pushes everything waiting in one
Redis pipeline. The caller pays for the row only, and under load many jobs
share one round trip. The outbox rule is unchanged: nothing is pushed before
the commit, and nothing after a rollback.

A push that fails marks the row ``needs_push`` (pushed again by the
scheduler loop). If the process dies with pushes still waiting, their rows
are ``queued`` rows that Redis does not have: the scheduler loop's
reconciliation pushes them (see ``recovery.py``).

With ``DJANGO_JOBS["PUSH"] = "redis-first"``, a ``.delay()`` outside any
transaction pushes the job to Redis itself, as django-rq does, and hands the
row to another thread, which inserts the rows waiting in one go. The job
carries its row's options in its RQ ``meta``, so a worker that takes it
before its row is written (or after the process died with rows still
waiting) writes a whole row itself; the late insert then keeps the worker's
status and run. Rows the database refuses are kept and tried again.
A handle's reads in the same process wait for the rows first (``settle()``).

``flush()`` waits until everything handed over is done; it runs at
interpreter exit, and ``manage.py`` commands and tests can call it.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from django.db import connections
from redis.exceptions import RedisError
from rq import Queue

from . import records
from .db.connections import refused_item, reset_database_connections
from .push import PendingPush, is_inline, push, rq_job_for
from .queues import get_queue
from .spec import JobSpec

logger = logging.getLogger("django_jobs.pusher")

#: The most jobs one pipeline carries, and the most rows one batch of inserts writes.
BATCH = 500


class Batcher:
    """One thread per process that takes what callers hand over and handles many items at a time."""

    def __init__(
        self,
        name: str,
        handle: Callable[[list[Any]], list[Any] | None],
        *,
        keep_connections: bool,
        linger: float = 0.0,
    ) -> None:
        self.name = name
        self.handle = handle
        # Keep this thread's database connection between batches (closed per CONN_MAX_AGE as a
        # request's would be), or close it after each batch.
        self.keep_connections = keep_connections
        # Seconds to wait for more items when the last batch was taken less than that ago, unless
        # the batch is full first or somebody waits in flush(): fewer, bigger batches when items
        # come one after another, and no wait for one that comes alone.
        self.linger = linger
        self._reset()
        # A child forked while this thread held the lock would wait for it forever.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self.hurry = False
        self.lock = threading.Condition()
        self.waiting: list[Any] = []
        self.busy = 0
        self.thread: threading.Thread | None = None
        self.pid = 0
        self.retry_in = 0.0  # seconds before the next try, after a batch that could not be handled

    def submit(self, *item: Any) -> None:
        with self.lock:
            if self.thread is None or self.pid != os.getpid() or not self.thread.is_alive():
                # First use, or a forked child (threads do not survive fork): start one here.
                self.pid = os.getpid()
                self.waiting, self.busy = [], 0
                self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self.thread.start()
            self.waiting.append(item)
            self.lock.notify_all()

    def idle(self) -> bool:
        """Whether nothing this process handed over is still waiting or being handled."""
        if self.pid != os.getpid():
            return True
        with self.lock:
            return not self.waiting and not self.busy

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until everything handed over is handled; False on timeout."""
        if self.pid != os.getpid():
            return True
        with self.lock:
            if self.waiting:
                self.hurry = True
                self.lock.notify_all()
            return self.lock.wait_for(lambda: not self.waiting and not self.busy, timeout)

    def _run(self) -> None:
        taken = 0.0  # when the last batch was taken
        while True:
            with self.lock:
                self.lock.wait_for(lambda: bool(self.waiting))
                if self.linger and time.monotonic() - taken < self.linger:
                    # Items keep coming: wait for more rather than handle them one by one.
                    self.lock.wait_for(lambda: self.hurry or len(self.waiting) >= BATCH, self.linger)
                taken = time.monotonic()
                self.hurry = False
                self.busy = min(len(self.waiting), BATCH)
                batch, self.waiting = self.waiting[:BATCH], self.waiting[BATCH:]
            retry: list[Any] | None = None
            try:
                if self.keep_connections:  # as at the start of a request: not a connection gone stale
                    for connection in connections.all(initialized_only=True):
                        connection.close_if_unusable_or_obsolete()
                retry = self.handle(batch)
            except Exception:  # never let the thread die
                logger.exception("%s: a batch of %d failed", self.name, len(batch))
            finally:
                for connection in connections.all(initialized_only=True):  # this thread's only
                    if self.keep_connections:
                        connection.close_if_unusable_or_obsolete()
                    else:
                        connection.close()
                with self.lock:
                    if retry:  # kept, and tried again later: 1 s, then twice as long, up to 30 s
                        self.waiting[:0] = retry
                        self.retry_in = min(max(self.retry_in * 2, 1.0), 30.0)
                    else:
                        self.retry_in = 0.0
                    self.busy = 0
                    self.lock.notify_all()
            if retry:
                with self.lock:
                    self.lock.wait_for(lambda: self.hurry, self.retry_in)


def push_batch(batch: list[tuple[PendingPush, JobSpec]]) -> None:
    """Push jobs in one pipeline per Redis connection; the odd ones (dependencies, inline) one by one."""
    groups: dict[int, list[tuple[Queue, JobSpec]]] = defaultdict(list)
    for pending, spec in batch:
        if pending.canceled:
            continue
        if spec.depends_on or is_inline(spec.queue):
            push(spec)
            continue
        rq_queue = get_queue(spec.queue)
        groups[id(rq_queue.connection)].append((rq_queue, spec))
    for group in groups.values():
        connection = group[0][0].connection
        try:
            with connection.pipeline() as pipeline:
                for rq_queue, spec in group:
                    rq_job = rq_job_for(rq_queue, spec)
                    rq_queue.enqueue_job(rq_job, pipeline=pipeline, at_front=spec.at_front)
                pipeline.execute()
        except (RedisError, OSError) as exc:
            by_alias: dict[str, list[str]] = defaultdict(list)
            for _queue, spec in group:
                by_alias[spec.using].append(spec.id)
            logger.warning(
                "Could not push %d jobs to Redis: %s. The rows are kept as queued with needs_push "
                "set, to be pushed again once Redis is back.",
                len(group),
                exc,
            )
            for using, job_ids in by_alias.items():
                records.mark_push_failed_many(job_ids, using)


def write_rows(batch: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """Insert rows of jobs already in Redis, many per statement; return those to try again.

    A row a worker wrote first keeps its status and run (see ``create_many``).
    """
    by_alias: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for using, row in batch:
        by_alias[using].append(row)
    retry: list[tuple[str, dict[str, Any]]] = []
    for using, rows in by_alias.items():
        try:
            records.create_many(rows, using, late=True)
        except Exception as exc:
            if refused_item(exc):  # a row of them, not the database: the others must not wait on it
                reset_database_connections()
                retry.extend(_write_one_by_one(using, rows) if len(rows) > 1 else _refused(using, rows, exc))
                continue
            # The jobs are in Redis and run meanwhile: a worker writes the row of each one it
            # takes (or spools its start while the database is down).
            logger.warning(
                "Could not write the rows of %d jobs already in Redis to database %r: %s. They are "
                "kept in this process and written once the database answers.",
                len(rows),
                using,
                exc,
            )
            retry.extend((using, row) for row in rows)
    return retry


def _write_one_by_one(using: str, rows: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Write rows one at a time after their batch was refused for what one of them holds; return
    the ones to try again (the database went away meanwhile)."""
    retry: list[tuple[str, dict[str, Any]]] = []
    for row in rows:
        retry.extend(write_rows([(using, row)]))
    return retry


def _refused(
    using: str, rows: list[dict[str, Any]], error: BaseException
) -> list[tuple[str, dict[str, Any]]]:
    """Give up on a row the database refuses for what it holds: trying again cannot help. Its job
    is in Redis: the worker that takes it writes a row from the job itself, escaped where needed."""
    for row in rows:
        logger.error(
            "The database %r refuses the row of job %s (%s: %s); not trying again. The worker that "
            "runs the job writes its row.",
            using,
            row.get("id"),
            type(error).__name__,
            error,
        )
    return []


#: Seconds the row writer waits for more rows while they keep coming (.delay() in a loop):
#: rows written a moment later, many per statement.
ROW_WRITE_LINGER = 0.02

#: Pushes after the commit, with ``PUSH = "background"``: a push that fails marks its row.
pusher = Batcher("django-jobs-pusher", push_batch, keep_connections=False)
#: Rows after the push, with ``PUSH = "redis-first"``.
row_writer = Batcher("django-jobs-row-writer", write_rows, keep_connections=True, linger=ROW_WRITE_LINGER)


def flush(timeout: float | None = 10.0) -> bool:
    """Wait for this process's background pushes and row writes; False if some are still waiting."""
    pushed = pusher.flush(timeout)
    return row_writer.flush(timeout) and pushed


def settle(timeout: float = 5.0) -> None:
    """Write the rows this process has pushed ahead of them, so that a read sees them.

    The wait is bounded: on SQLite the writer cannot write while the caller's own transaction
    holds the database's write lock, and a database that is down keeps the rows waiting.
    """
    if not row_writer.idle():
        row_writer.flush(timeout=timeout)


atexit.register(flush)
