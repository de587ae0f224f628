"""Put a job whose row exists into its RQ queue: ``push(spec)``.

Every way a job reaches Redis after its row is written comes here with a
:class:`~django_jobs.spec.JobSpec`: ``.delay()`` after the commit, a retry, the
scheduler's promotion of a due job, recovery, the admin's requeue and the
background pusher. If Redis cannot be reached, the row is marked
``needs_push`` and the scheduler loop pushes it again later: nothing is lost.

A queue with ``"ASYNC": False`` (django-rq's test mode) runs the job at once, in
this process, with django_jobs' ``SimpleWorker`` (:func:`run_inline`).
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from django.utils.module_loading import import_string
from redis.exceptions import RedisError
from rq import Queue
from rq.job import Job
from rq.job import JobStatus as RQJobStatus

from . import limits, records
from .queues import default_result_ttl, get_queue, queue_config
from .spec import JobSpec

logger = logging.getLogger("django_jobs.enqueue")

#: The worker that runs jobs of an ``"ASYNC": False`` queue in the enqueuing process. Named, not
#: imported: the worker package sits above this module (its jobs push their retries here).
INLINE_WORKER = "django_jobs.worker.SimpleWorker"


class PendingPush:
    """A push waiting for its transaction to commit; dropped with it on rollback."""

    __slots__ = ("__weakref__", "canceled")

    def __init__(self) -> None:
        self.canceled = False


# Weak: an entry lives as long as Django keeps the on-commit callback that holds it.
_pending: weakref.WeakValueDictionary[str, PendingPush] = weakref.WeakValueDictionary()


def pending_push(job_id: str) -> PendingPush:
    """A marker for the push of ``job_id`` that waits for a commit (see :func:`forget_push`)."""
    pending = _pending[job_id] = PendingPush()
    return pending


def forget_push(job_id: str) -> None:
    """Make this job's push, if it is still waiting for a commit, a no-op (it was canceled first)."""
    pending = _pending.get(job_id)
    if pending is not None:
        pending.canceled = True


def push_unless_canceled(pending: PendingPush, spec: JobSpec) -> None:
    """The on-commit push of one job."""
    if not pending.canceled:
        push(spec)


def is_inline(queue_name: str) -> bool:
    """Whether the queue runs its jobs at once, in the enqueuing process (``"ASYNC": False``)."""
    return queue_config(queue_name).get("ASYNC", True) is False


def rq_job_for(rq_queue: Queue, spec: JobSpec, meta: dict[str, Any] | None = None) -> Job:
    """The RQ job of ``spec`` (not saved yet), with the options its row keeps."""
    options = spec.options
    job: Job = rq_queue.create_job(
        spec.func_name,
        args=spec.args,
        kwargs=spec.kwargs,
        job_id=spec.id,
        timeout=options.get("timeout"),
        result_ttl=options.get("result_ttl", default_result_ttl(rq_queue.name)),
        ttl=options.get("ttl"),
        failure_ttl=options.get("failure_ttl"),
        description=options.get("description"),
        depends_on=options.get("depends_on"),
        meta=meta if meta is not None else limits.rq_meta(spec.func_name, options),
    )
    return job


def enqueue_in_one_trip(rq_queue: Queue, rq_job: Job, at_front: bool) -> Job:
    """RQ's enqueue of a job without dependencies, in one round trip to Redis."""
    with rq_queue.connection.pipeline() as pipeline:
        rq_job = rq_queue.enqueue_job(rq_job, pipeline=pipeline, at_front=at_front)
        pipeline.execute()
    return rq_job


def run_inline(rq_queue: Queue, rq_job: Job) -> None:
    """Run a job now, in this process, for a queue with ``"ASYNC": False`` (django-rq's test mode).

    It goes through the same worker code as in production, so the row ends
    ``finished`` or ``failed`` exactly as a worker would leave it; the
    caller's database connection is left alone.
    """
    rq_job.origin = rq_queue.name
    rq_job.save()
    worker_class = import_string(INLINE_WORKER)
    worker = worker_class([rq_queue], connection=rq_queue.connection, serializer=rq_queue.serializer)
    worker.run_in_process(rq_job, rq_queue)


def push(spec: JobSpec) -> bool:
    """Put a job whose row exists into its RQ queue; return whether Redis took it.

    Also the way back for a row that must be pushed again (``needs_push``, a retry, Redis lost
    its data): everything it needs is stored on the row.
    """
    try:
        rq_queue = get_queue(spec.queue)
        rq_job = rq_job_for(rq_queue, spec)
        if is_inline(spec.queue):
            run_inline(rq_queue, rq_job)
            return True
        if spec.depends_on:
            # Dependencies are checked under WATCH: RQ needs its own round trips.
            rq_job = rq_queue.enqueue_job(rq_job, at_front=spec.at_front)
        else:
            rq_job = enqueue_in_one_trip(rq_queue, rq_job, spec.at_front)
    except (RedisError, OSError) as exc:
        logger.warning(
            "Could not push job %s (%s) to Redis queue %r: %s. The row is kept as queued "
            "with needs_push set, to be pushed again once Redis is back.",
            spec.id,
            spec.func_name,
            spec.queue,
            exc,
        )
        records.mark_push_failed(spec.id, spec.using)
        return False
    except Exception:
        # Never lose the job to an unexpected error after the caller's commit.
        logger.exception(
            "Could not push job %s (%s); the row is kept with needs_push set.", spec.id, spec.func_name
        )
        records.mark_push_failed(spec.id, spec.using)
        return False
    if spec.depends_on and rq_job.get_status(refresh=False) != RQJobStatus.DEFERRED:
        records.mark_dependencies_met(spec.id)  # they had finished already: RQ queued it at once
    return True


def push_many(specs: list[JobSpec]) -> int:
    """Put jobs of one queue whose rows exist into it in one pipeline; return how many Redis took.

    If Redis fails, every row of the batch is marked ``needs_push`` (the pipeline is a
    transaction: Redis took all of them or none).
    """
    if not specs:
        return 0
    queue_name, using = specs[0].queue, specs[0].using
    if is_inline(queue_name):
        return sum(push(spec) for spec in specs)  # run one by one, exactly as .delay() does
    job_ids = [spec.id for spec in specs]
    try:
        rq_queue = get_queue(queue_name)
        result_ttl = default_result_ttl(queue_name)
        with rq_queue.connection.pipeline() as pipeline:
            rq_queue.enqueue_many(
                [
                    Queue.prepare_data(
                        spec.func_name,
                        args=spec.args,
                        kwargs=spec.kwargs,
                        job_id=spec.id,
                        timeout=spec.options.get("timeout"),
                        result_ttl=spec.options.get("result_ttl", result_ttl),
                        ttl=spec.options.get("ttl"),
                        failure_ttl=spec.options.get("failure_ttl"),
                        description=spec.options.get("description"),
                        meta=limits.rq_meta(spec.func_name, spec.options),
                    )
                    for spec in specs
                ],
                pipeline=pipeline,
            )
            pipeline.execute()
    except (RedisError, OSError) as exc:
        logger.warning(
            "Could not push %d jobs (%s) to Redis queue %r: %s. The rows are kept as queued "
            "with needs_push set, to be pushed again once Redis is back.",
            len(job_ids),
            specs[0].func_name,
            queue_name,
            exc,
        )
        records.mark_push_failed_many(job_ids, using)
        return 0
    except Exception:
        # Never lose the jobs to an unexpected error after the caller's commit.
        logger.exception(
            "Could not push %d jobs (%s); the rows are kept with needs_push set.",
            len(job_ids),
            specs[0].func_name,
        )
        records.mark_push_failed_many(job_ids, using)
        return 0
    return len(job_ids)


def push_many_unless_canceled(entries: list[tuple[PendingPush, JobSpec]]) -> int:
    """The on-commit push of jobs enqueued together (``.map()``): those canceled first are left out."""
    return push_many([spec for pending, spec in entries if not pending.canceled])
