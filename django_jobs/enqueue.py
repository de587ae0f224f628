"""The one enqueue path: validate, write the row, push to Redis on commit.

``.delay()`` inserts the :class:`~django_jobs.models.JobRecord` in the
caller's transaction and pushes the job to Redis from
``transaction.on_commit`` on the same database alias, so a rollback leaves
neither a row nor a job, and outside ``atomic()`` the push happens at once.
If Redis cannot be reached, the row stays ``queued`` with ``needs_push`` set
and the caller carries on: nothing is lost.
"""

from __future__ import annotations

import logging
import re
import uuid
import weakref
from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.utils import timezone
from redis.exceptions import RedisError

from . import records
from .models import JobStatus
from .payload import check_arguments, to_jsonable
from .queues import default_result_ttl, get_queue, queue_config, uses_json

if TYPE_CHECKING:
    from .decorators import JobFunction
    from .handles import JobHandle

logger = logging.getLogger("django_jobs.enqueue")

_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def new_job_id() -> str:
    """A fresh job id, made here so that the caller has it before any I/O."""
    return uuid.uuid4().hex


def due_time(label: str, countdown: float | timedelta | None, eta: datetime | None) -> datetime | None:
    """When a delayed job is due (aware), or None to run it now (no delay, or a time already past)."""
    if countdown is not None and eta is not None:
        raise TypeError(f"{label}: give countdown or eta, not both.")
    now = timezone.now()
    if countdown is not None:
        if isinstance(countdown, bool) or not isinstance(countdown, int | float | timedelta):
            raise TypeError(
                f"{label}: countdown must be seconds or a timedelta, not {type(countdown).__name__}."
            )
        delay = countdown if isinstance(countdown, timedelta) else timedelta(seconds=countdown)
        eta = now + delay
    if eta is None:
        return None
    if not isinstance(eta, datetime):
        raise TypeError(f"{label}: eta must be a datetime, not {type(eta).__name__}.")
    if timezone.is_naive(eta):
        eta = timezone.make_aware(eta, timezone.get_default_timezone())  # documented: settings.TIME_ZONE
    return eta if eta > now else None


def check_timeout(label: str, timeout: Any) -> None:
    """Raise ``ValueError`` now for a timeout RQ would reject only when pushing."""
    from rq.exceptions import TimeoutFormatError
    from rq.utils import parse_timeout

    try:
        parse_timeout(timeout)
    except (TimeoutFormatError, TypeError, ValueError):
        raise ValueError(
            f"{label}: timeout {timeout!r} is invalid: give seconds as an int, or a string such as "
            "'90', '30s', '15m', '2h' or '1d'."
        ) from None


#: Ids canceled in this process before their on-commit push ran.
class _PendingPush:
    """A push waiting for its transaction to commit; dropped with it on rollback."""

    __slots__ = ("__weakref__", "canceled")

    def __init__(self) -> None:
        self.canceled = False


# Weak: an entry lives as long as Django keeps the on-commit callback.
_pending: weakref.WeakValueDictionary[str, _PendingPush] = weakref.WeakValueDictionary()


def forget_push(job_id: str) -> None:
    """Make this job's push, if it is still waiting for a commit, a no-op (it was canceled first)."""
    pending = _pending.get(job_id)
    if pending is not None:
        pending.canceled = True


def _push_unless_canceled(pending: _PendingPush, *args: Any) -> None:
    if not pending.canceled:
        push(*args)


def _dependency_ids(depends_on: Any) -> list[str]:
    if depends_on is None:
        return []
    if isinstance(depends_on, str) or not isinstance(depends_on, Iterable):
        depends_on = [depends_on]
    ids = []
    for item in depends_on:
        job_id = item if isinstance(item, str) else getattr(item, "id", None)
        if not isinstance(job_id, str):
            raise TypeError(f"depends_on takes job handles or job ids, not {type(item).__name__}.")
        ids.append(job_id)
    return ids


def _retry_options(retry: Any) -> dict[str, Any]:
    if retry is None or retry == 0:
        return {}
    if isinstance(retry, int):
        return {"retry_max": retry}
    intervals = list(getattr(retry, "intervals", None) or [0])
    return {"retry_max": int(retry.max), "retry_intervals": intervals}


def enqueue(
    function: JobFunction[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    queue: str | None = None,
    job_id: str | None = None,
    depends_on: Any = None,
    at_front: bool = False,
    timeout: int | str | None = None,
    countdown: float | timedelta | None = None,
    eta: datetime | None = None,
    periodic_job_id: int | None = None,
    due_at: datetime | None = None,
) -> JobHandle[Any]:
    """Enqueue ``function(*args, **kwargs)``; return its handle at once.

    With ``countdown`` (seconds or a timedelta) or ``eta`` (a datetime; a
    naive one is read in ``settings.TIME_ZONE``) the row is ``scheduled``
    and the scheduler pushes it when due; a time in the past runs now.
    """
    from .conf import conf
    from .handles import JobHandle

    label = f"{function.name}()"
    queue_name = queue or function.queue_name or conf.default_queue
    queue_config(queue_name)  # raises UnknownQueueError listing the configured queues

    try:
        bound = function.signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(
            f"{label}: the arguments do not fit its signature {function.signature}: {exc}."
        ) from None
    if uses_json():
        check_arguments(label, bound.arguments)
        stored_args, stored_kwargs = list(args), dict(kwargs)
    else:
        stored_args, stored_kwargs = to_jsonable(list(args)), to_jsonable(dict(kwargs))

    if job_id is None:
        job_id = new_job_id()
    elif not isinstance(job_id, str) or not _JOB_ID.match(job_id):
        raise ValueError(
            f"job_id {job_id!r} is invalid: use 1 to 128 characters from A-Z, a-z, 0-9, _ and -."
        )

    effective_timeout = timeout if timeout is not None else function.timeout
    if effective_timeout is not None:
        check_timeout(label, effective_timeout)

    description = function.description
    if description is None and (function.redact or conf.redact):
        from .redaction import call_string

        # RQ logs the description; by default it is the call with its arguments.
        description = call_string(function.name, stored_args, stored_kwargs)

    options: dict[str, Any] = {}
    for key, value in (
        ("timeout", effective_timeout),
        ("result_ttl", function.result_ttl),
        ("ttl", function.ttl),
        ("failure_ttl", function.failure_ttl),
        ("description", description),
    ):
        if value is not None:
            options[key] = value
    options.update(_retry_options(function.retry))
    dependencies = _dependency_ids(depends_on)
    if dependencies:
        options["depends_on"] = dependencies
    if at_front:
        options["at_front"] = True

    run_at = due_time(label, countdown, eta)
    if run_at is not None:
        status = JobStatus.SCHEDULED
    else:
        status = JobStatus.DEFERRED if dependencies else JobStatus.QUEUED
    using = records.db_alias()
    records.create(
        job_id=job_id,
        func_name=function.name,
        queue=queue_name,
        args=stored_args,
        kwargs=stored_kwargs,
        status=status,
        options=options,
        using=using,
        scheduled_for=run_at or due_at,
        periodic_job_id=periodic_job_id,
    )
    if dependencies:
        records.add_dependencies(job_id, dependencies, using)
    if run_at is not None:
        return JobHandle(job_id)  # the database holds it until the scheduler finds it due
    pending = _pending[job_id] = _PendingPush()
    transaction.on_commit(
        partial(
            _push_unless_canceled,
            pending,
            job_id,
            function.name,
            queue_name,
            list(args),
            dict(kwargs),
            options,
            using,
        ),
        using=using,
    )
    return JobHandle(job_id)


def run_inline(rq_queue: Any, rq_job: Any) -> None:
    """Run a job now, in this process, for a queue with ``"ASYNC": False`` (django-rq's test mode).

    It goes through the same worker code as in production, so the row ends
    ``finished`` or ``failed`` exactly as a worker would leave it; the
    caller's database connection is left alone.
    """
    from .worker import SimpleWorker, run_job_in_process

    rq_job.origin = rq_queue.name
    rq_job.save()
    worker = SimpleWorker([rq_queue], connection=rq_queue.connection, serializer=rq_queue.serializer)
    run_job_in_process(worker, rq_job, rq_queue)


def push(
    job_id: str,
    func_name: str,
    queue_name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    options: dict[str, Any],
    using: str,
) -> bool:
    """Put a job whose row exists into its RQ queue; return whether Redis took it.

    Also the way back for a row that must be pushed again (``needs_push``, or
    Redis lost its data): everything it needs is stored on the row.
    """
    from rq import Retry
    from rq.job import JobStatus as RQJobStatus

    retry = None
    if options.get("retry_max"):
        retry = Retry(max=options["retry_max"], interval=options.get("retry_intervals", 0))
    try:
        rq_queue = get_queue(queue_name)
        rq_job = rq_queue.create_job(
            func_name,
            args=args,
            kwargs=kwargs,
            job_id=job_id,
            timeout=options.get("timeout"),
            result_ttl=options.get("result_ttl", default_result_ttl(queue_name)),
            ttl=options.get("ttl"),
            failure_ttl=options.get("failure_ttl"),
            description=options.get("description"),
            depends_on=options.get("depends_on"),
            retry=retry,
        )
        if queue_config(queue_name).get("ASYNC", True) is False:
            run_inline(rq_queue, rq_job)
            return True
        if options.get("depends_on"):
            # Dependencies are checked under WATCH: RQ needs its own round trips.
            rq_job = rq_queue.enqueue_job(rq_job, at_front=bool(options.get("at_front")))
        else:
            # Everything in one round trip to Redis.
            with rq_queue.connection.pipeline() as pipeline:
                rq_job = rq_queue.enqueue_job(
                    rq_job, pipeline=pipeline, at_front=bool(options.get("at_front"))
                )
                pipeline.execute()
    except (RedisError, OSError) as exc:
        logger.warning(
            "Could not push job %s (%s) to Redis queue %r: %s. The row is kept as queued "
            "with needs_push set, to be pushed again once Redis is back.",
            job_id,
            func_name,
            queue_name,
            exc,
        )
        records.mark_push_failed(job_id, using)
        return False
    except Exception:
        # Never lose the job to an unexpected error after the caller's commit.
        logger.exception(
            "Could not push job %s (%s); the row is kept with needs_push set.", job_id, func_name
        )
        records.mark_push_failed(job_id, using)
        return False
    if options.get("depends_on") and rq_job.get_status(refresh=False) != RQJobStatus.DEFERRED:
        # Its dependencies had already finished: RQ queued it straight away.
        records.mark_status(job_id, JobStatus.QUEUED)
    return True
