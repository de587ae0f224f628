"""Background pushes: ``.delay()`` returns once the row is committed; a thread pushes to Redis.

With ``DJANGO_JOBS["PUSH"] = "background"`` the push that follows a commit
is handed to one thread per process, which pushes everything waiting in one
Redis pipeline. The caller pays for the row only, and under load many jobs
share one round trip. The outbox rule is unchanged: nothing is pushed before
the commit, and nothing after a rollback.

A push that fails marks the row ``needs_push`` (pushed again by the
scheduler loop). If the process dies with pushes still waiting, their rows
are ``queued`` rows that Redis does not have: the scheduler loop's
reconciliation pushes them (see ``recovery.py``). ``flush()`` waits until
everything handed over is pushed; it runs at interpreter exit, and
``manage.py`` commands and tests can call it.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections import defaultdict
from typing import Any

from django.db import connections
from redis.exceptions import RedisError

logger = logging.getLogger("django_jobs.pusher")

#: The most jobs one pipeline carries.
BATCH = 500

#: One push: (pending marker, job_id, func_name, queue_name, args, kwargs, options, using).
Push = tuple[Any, str, str, str, list[Any], dict[str, Any], dict[str, Any], str]


class Pusher:
    """A thread that pushes committed jobs to Redis, many per round trip."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.waiting: list[Push] = []
        self.busy = 0
        self.thread: threading.Thread | None = None
        self.pid = 0

    def submit(self, *push: Any) -> None:
        with self.lock:
            if self.thread is None or self.pid != os.getpid() or not self.thread.is_alive():
                # First use, or a forked child (threads do not survive fork): start one here.
                self.pid = os.getpid()
                self.waiting, self.busy = [], 0
                self.thread = threading.Thread(target=self._run, name="django-jobs-pusher", daemon=True)
                self.thread.start()
            self.waiting.append(push)
            self.lock.notify_all()

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every job handed over is pushed (or its row marked); False on timeout."""
        with self.lock:
            if self.pid != os.getpid():
                return True
            return self.lock.wait_for(lambda: not self.waiting and not self.busy, timeout)

    def _run(self) -> None:
        while True:
            with self.lock:
                self.lock.wait_for(lambda: bool(self.waiting))
                batch, self.waiting = self.waiting[:BATCH], self.waiting[BATCH:]
                self.busy = len(batch)
            try:
                push_batch(batch)
            except Exception:  # never let the thread die: the rows stay for reconciliation
                logger.exception("Background push of %d jobs failed", len(batch))
            finally:
                connections.close_all()  # only this thread's, if a push had to write a row
                with self.lock:
                    self.busy = 0
                    self.lock.notify_all()


def push_batch(batch: list[Push]) -> None:
    """Push jobs in one pipeline per Redis connection; the odd ones (dependencies, inline) one by one."""
    from .enqueue import _create_rq_job, push
    from .queues import get_queue, queue_config
    from .records import mark_push_failed_many

    groups: dict[int, list[tuple[Any, Push]]] = defaultdict(list)
    for item in batch:
        pending, job_id, func_name, queue_name, args, kwargs, options, using = item
        if pending.canceled:
            continue
        if options.get("depends_on") or queue_config(queue_name).get("ASYNC", True) is False:
            push(job_id, func_name, queue_name, args, kwargs, options, using)
            continue
        rq_queue = get_queue(queue_name)
        groups[id(rq_queue.connection)].append((rq_queue, item))
    for group in groups.values():
        connection = group[0][0].connection
        try:
            with connection.pipeline() as pipeline:
                for rq_queue, (_p, job_id, func_name, _q, args, kwargs, options, _u) in group:
                    rq_job = _create_rq_job(rq_queue, job_id, func_name, args, kwargs, options)
                    rq_queue.enqueue_job(rq_job, pipeline=pipeline, at_front=bool(options.get("at_front")))
                pipeline.execute()
        except (RedisError, OSError) as exc:
            by_alias: dict[str, list[str]] = defaultdict(list)
            for _queue, item in group:
                by_alias[item[7]].append(item[1])
            logger.warning(
                "Could not push %d jobs to Redis: %s. The rows are kept as queued with needs_push "
                "set, to be pushed again once Redis is back.",
                len(group),
                exc,
            )
            for using, job_ids in by_alias.items():
                mark_push_failed_many(job_ids, using)


pusher = Pusher()


def flush(timeout: float | None = 10.0) -> bool:
    """Wait for this process's background pushes; return False if some are still waiting."""
    return pusher.flush(timeout)


atexit.register(flush)
