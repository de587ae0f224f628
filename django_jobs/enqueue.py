"""The one enqueue path: validate, write the row, push to Redis on commit.

``.delay()`` inserts the :class:`~django_jobs.models.JobRecord` in the
caller's transaction and pushes the job to Redis from
``transaction.on_commit`` on the same database alias, so a rollback leaves
neither a row nor a job, and outside ``atomic()`` the push happens at once.
If Redis cannot be reached, the row stays ``queued`` with ``needs_push`` set
and the caller carries on: nothing is lost.

On PostgreSQL (psycopg 3), outside ``atomic()``, the row's ``INSERT`` is
sent and commits while the job is pushed; its answer is read before
``.delay()`` returns (:func:`push_first` with a :class:`records.SentInsert`).
Elsewhere (SQLite) the push is sent and Redis runs it while the row is
written; Redis's answer is read last (:func:`push_beside_row`).
With ``DJANGO_JOBS["PUSH"] = "redis-first"``, a plain ``.delay()`` outside
any transaction pushes first and its row follows from a thread
(:func:`push_first`); inside ``atomic()`` it is as above.
"""

from __future__ import annotations

import logging
import re
import uuid
import weakref
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, IntegrityError, InterfaceError, connections, transaction
from django.utils import timezone
from redis.exceptions import RedisError

from . import limits, records, uniqueness
from .models import JobStatus
from .payload import check_arguments, check_payload_size, check_storable_on_postgresql, to_jsonable
from .pusher import pusher
from .queues import default_result_ttl, get_queue, queue_config, uses_json
from .redis_send import SentPipeline

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


def _checked_arguments(
    function: JobFunction[Any, Any], label: str, args: tuple[Any, ...], kwargs: dict[str, Any], using: str
) -> tuple[list[Any], dict[str, Any]]:
    """Check a call against the signature and the JSON rules; return the args and kwargs for the row."""
    try:
        bound = function.signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(
            f"{label}: the arguments do not fit its signature {function.signature}: {exc}."
        ) from None
    if uses_json():
        check_arguments(label, bound.arguments)
        stored: tuple[list[Any], dict[str, Any]] = (list(args), dict(kwargs))
    else:
        stored = (to_jsonable(list(args)), to_jsonable(dict(kwargs)))
    check_payload_size(label, stored)
    if connections[using].vendor == "postgresql":  # which would refuse the row
        check_storable_on_postgresql(label, {"args": stored[0], "kwargs": stored[1]})
    return stored


def _job_options(
    function: JobFunction[Any, Any],
    stored_args: list[Any],
    stored_kwargs: dict[str, Any],
    timeout: int | str | None,
) -> dict[str, Any]:
    """The options kept on the row: what RQ needs to run the job, and its retry policy."""
    from .conf import conf

    description = function.description
    if description is None and (function.redact or conf.redact):
        from .redaction import call_string

        # RQ logs the description; by default it is the call with its arguments.
        description = call_string(function.name, stored_args, stored_kwargs)

    options: dict[str, Any] = {}
    for key, value in (
        ("timeout", timeout),
        ("result_ttl", function.result_ttl),
        ("ttl", function.ttl),
        ("failure_ttl", function.failure_ttl),
        ("description", description),
    ):
        if value is not None:
            options[key] = value
    options.update(function.retry_policy)
    options.update(function.limit_options)
    return options


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

    using = records.db_alias()
    stored_args, stored_kwargs = _checked_arguments(function, label, args, kwargs, using)
    unique_key = uniqueness.key_for(function, args, kwargs)

    chosen_id = job_id is not None
    if job_id is None:
        job_id = new_job_id()
    elif not isinstance(job_id, str) or not _JOB_ID.match(job_id):
        raise ValueError(
            f"job_id {job_id!r} is invalid: use 1 to 128 characters from A-Z, a-z, 0-9, _ and -."
        )

    effective_timeout = timeout if timeout is not None else function.timeout
    if effective_timeout is not None:
        check_timeout(label, effective_timeout)

    options = _job_options(function, stored_args, stored_kwargs, effective_timeout)
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
    mode = conf.push
    fields: dict[str, Any] = {
        "job_id": job_id,
        "func_name": function.name,
        "queue": queue_name,
        "args": stored_args,
        "kwargs": stored_kwargs,
        "status": status,
        "options": options,
        "scheduled_for": run_at or due_at,
        "periodic_job_id": periodic_job_id,
        "unique_key": unique_key,
    }
    if (
        mode in ("immediate", "redis-first")
        and not chosen_id  # a taken id must fail at the row's insert, before any push
        and run_at is None
        and due_at is None
        and periodic_job_id is None
        and unique_key is None
        and not dependencies
        and limits.rq_meta(function.name, options) is None
        and not transaction.get_connection(using).in_atomic_block
        and transaction.get_autocommit(using)
        and queue_config(queue_name).get("ASYNC", True) is not False
    ):
        if mode == "redis-first":
            push_first(fields, args, kwargs, using)
            return JobHandle(job_id)
        # The default push: the row and the push overlap, and both are done when .delay()
        # returns. On PostgreSQL the row's INSERT is sent and commits while the job is pushed;
        # elsewhere the push is sent and Redis runs it while the row is written.
        sent = records.send_insert(using=using, **fields)
        if sent is not None:
            push_first(fields, args, kwargs, using, sent=sent)
        else:
            push_beside_row(fields, args, kwargs, using)
        return JobHandle(job_id)
    create = partial(records.create, using=using, **fields)
    if unique_key is None:
        create()
    else:
        holder = uniqueness.create_or_find(create, unique_key, function.unique_for, using)
        if holder is not None:
            return JobHandle(holder)  # the same call is already waiting or running
    if dependencies:
        records.add_dependencies(job_id, dependencies, using)
    if run_at is not None:
        return JobHandle(job_id)  # the database holds it until the scheduler finds it due
    pending = _pending[job_id] = _PendingPush()
    after_commit = pusher.submit if mode == "background" else _push_unless_canceled
    payload = (function.name, queue_name, list(args), dict(kwargs), options, using)
    transaction.on_commit(partial(after_commit, pending, job_id, *payload), using=using)
    return JobHandle(job_id)


def _split_item(label: str, item: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(item, tuple):
        return item, {}
    if isinstance(item, Mapping):
        return (), dict(item)
    raise TypeError(
        f"{label} is a {type(item).__name__}: give each item as a tuple of positional arguments, "
        "such as (1, 2) or (user.pk,), or as a dict of keyword arguments, such as {'user_id': user.pk}."
    )


def enqueue_many(
    function: JobFunction[Any, Any],
    items: Iterable[tuple[Any, ...] | Mapping[str, Any]],
    *,
    queue: str | None = None,
) -> list[JobHandle[Any]]:
    """Enqueue one call of ``function`` per item; return their handles, in order.

    Each item is a tuple of positional arguments or a dict of keyword
    arguments. Every item is checked as ``.delay()`` checks its call before
    anything is written; a bad one raises, naming its index. The rows are
    inserted with one bulk insert (in batches on a large list), and the jobs
    are pushed to Redis in one pipeline when the transaction commits.
    """
    from .conf import conf
    from .handles import JobHandle

    queue_name = queue or function.queue_name or conf.default_queue
    queue_config(queue_name)  # raises UnknownQueueError listing the configured queues
    if function.timeout is not None:
        check_timeout(f"{function.name}()", function.timeout)

    using = records.db_alias()
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any], list[Any], dict[str, Any], dict[str, Any]]] = []
    for index, item in enumerate(items):
        label = f"{function.name}() item {index}"
        args, kwargs = _split_item(label, item)
        stored_args, stored_kwargs = _checked_arguments(function, label, args, kwargs, using)
        options = _job_options(function, stored_args, stored_kwargs, function.timeout)
        calls.append((new_job_id(), args, kwargs, stored_args, stored_kwargs, options))
    if not calls:
        return []
    if function.unique:
        # Each call must find or take its key: one by one, all or none.
        with transaction.atomic(using=using):
            return [enqueue(function, call[1], call[2], queue=queue_name) for call in calls]

    records.create_many(
        [
            {
                "id": job_id,
                "func_name": function.name,
                "queue": queue_name,
                "status": JobStatus.QUEUED,
                "args": stored_args,
                "kwargs": stored_kwargs,
                "options": options,
            }
            for job_id, _args, _kwargs, stored_args, stored_kwargs, options in calls
        ],
        using,
    )
    pushes = []
    for job_id, args, kwargs, _stored_args, _stored_kwargs, options in calls:
        pending = _pending[job_id] = _PendingPush()
        pushes.append((pending, job_id, list(args), dict(kwargs), options))
    transaction.on_commit(partial(push_many, function.name, queue_name, pushes, using), using=using)
    return [JobHandle(call[0]) for call in calls]


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


def _create_rq_job(
    rq_queue: Any,
    job_id: str,
    func_name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    options: dict[str, Any],
    meta: dict[str, Any] | None = None,
) -> Any:
    return rq_queue.create_job(
        func_name,
        args=args,
        kwargs=kwargs,
        job_id=job_id,
        timeout=options.get("timeout"),
        result_ttl=options.get("result_ttl", default_result_ttl(rq_queue.name)),
        ttl=options.get("ttl"),
        failure_ttl=options.get("failure_ttl"),
        description=options.get("description"),
        depends_on=options.get("depends_on"),
        meta=meta if meta is not None else limits.rq_meta(func_name, options),
    )


def _enqueue_in_one_trip(rq_queue: Any, rq_job: Any, options: dict[str, Any]) -> Any:
    """RQ's enqueue of a job without dependencies, in one round trip to Redis."""
    with rq_queue.connection.pipeline() as pipeline:
        rq_job = rq_queue.enqueue_job(rq_job, pipeline=pipeline, at_front=bool(options.get("at_front")))
        pipeline.execute()
    return rq_job


def push_first(
    fields: dict[str, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    using: str,
    *,
    sent: records.SentInsert | None = None,
) -> None:
    """Push a job whose row (``fields``, as :func:`records.create` takes them) is not committed
    yet: one round trip to Redis in the caller's thread, as django-rq's ``.delay()``.

    - ``DJANGO_JOBS["PUSH"] = "redis-first"`` (no ``sent``): the row then goes to this process's
      row writer, which inserts rows many at a time.
    - The default push on PostgreSQL: the row's ``INSERT`` was ``sent`` ahead and
      commits while the job is pushed; its answer is read last, so the row is committed when
      ``.delay()`` returns. Should the database fail in between, the job is in Redis already and
      its row goes to the row writer.

    The job carries its row's options, so a worker that takes it before the row is there writes
    the whole row. If Redis cannot be reached, the row is written now, ``queued`` with
    ``needs_push`` set.
    """
    from .pusher import row_writer

    row = sent.values if sent is not None else records.row_values(**fields)
    try:
        rq_queue = get_queue(fields["queue"])
        _enqueue_in_one_trip(rq_queue, _row_carrying_job(rq_queue, fields, args, kwargs), fields["options"])
    except Exception as exc:
        _push_failed(exc, fields, using, sent is not None and _sent_row_written(sent, fields["job_id"]))
        return
    if sent is None or not _sent_row_written(sent, fields["job_id"]):
        row_writer.submit(using, row)


def push_beside_row(
    fields: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any], using: str
) -> None:
    """The default push where the row cannot be sent ahead (SQLite): the push is sent to Redis,
    the row is written and committed while Redis runs the push, and Redis's answer is read last
    (:class:`~django_jobs.redis_send.SentPipeline`). The caller waits for the longer of the two,
    not for both, and the row is committed when ``.delay()`` returns.

    The job carries its row's options, as with :func:`push_first`. If the row cannot be written,
    the job is taken back out of its queue and the database's error raised, as if the row had
    been written first; a worker that took the job already writes the row itself.
    """
    from .pusher import row_writer

    job_id = fields["job_id"]
    try:
        rq_queue = get_queue(fields["queue"])
        rq_job = _row_carrying_job(rq_queue, fields, args, kwargs)
        with rq_queue.connection.pipeline() as pipeline:
            rq_queue.enqueue_job(rq_job, pipeline=pipeline, at_front=bool(fields["options"].get("at_front")))
            sent_push = SentPipeline(pipeline)
    except Exception as exc:
        _push_failed(exc, fields, using, row_written=False)
        return
    try:
        records.create(using=using, **fields)
        row_written = True
    except IntegrityError:
        row_written = False  # a worker took the job while the row was written, and wrote it first
    except (DatabaseError, InterfaceError) as exc:
        try:
            sent_push.finish()
        except Exception:
            raise exc from None  # the database's error: whether Redis took the job is not known
        if _withdrawn(rq_queue, rq_job):
            raise
        _row_not_written(job_id, exc, connections[using])
        row_writer.submit(using, records.row_values(**fields))
        return
    except BaseException:
        sent_push.abandon()
        raise
    try:
        sent_push.finish()
    except Exception as exc:
        _push_failed(exc, fields, using, row_written)
        return
    if not row_written:
        row_writer.submit(using, records.row_values(**fields))


def _row_carrying_job(
    rq_queue: Any, fields: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """The RQ job of a row not committed yet: it carries the row's options in its meta, so that
    a worker that takes it first can write the whole row."""
    options = fields["options"]
    meta = {records.ROW_OPTIONS_META: options}
    return _create_rq_job(
        rq_queue, fields["job_id"], fields["func_name"], list(args), dict(kwargs), options, meta
    )


def _withdrawn(rq_queue: Any, rq_job: Any) -> bool:
    """Take a job no worker has taken yet back out of its queue; whether it was there."""
    try:
        if not rq_queue.connection.lrem(rq_queue.key, 1, rq_job.id):
            return False
        rq_queue.connection.delete(rq_job.key)
    except RedisError:
        return False
    return True


def _push_failed(exc: Exception, fields: dict[str, Any], using: str, row_written: bool) -> None:
    """Redis did not take a job pushed ahead of its row: the row is kept ``needs_push``."""
    job_id = fields["job_id"]
    logger.warning(
        "Could not push job %s (%s) to Redis queue %r: %s. Its row is written now, queued with "
        "needs_push set, to be pushed again once Redis is back.",
        job_id,
        fields["func_name"],
        fields["queue"],
        exc,
        exc_info=not isinstance(exc, RedisError | OSError),
    )
    if row_written:
        records.mark_push_failed(job_id, using)
        return
    try:
        records.create(using=using, **fields, needs_push=True)
    except IntegrityError:
        # Redis had taken the job after all (the error came with its answer), and a worker
        # that took it wrote the row first.
        logger.warning("Job %s has a row already: it was pushed after all.", job_id)


def _sent_row_written(sent: records.SentInsert, job_id: str) -> bool:
    """Read the answer to a row's ``INSERT`` sent ahead: whether it wrote the row."""
    try:
        sent.finish()
    except IntegrityError:
        # A worker took the job before the row was committed and wrote the row itself.
        return False
    except (DatabaseError, InterfaceError) as exc:
        _row_not_written(job_id, exc, sent.connection)
        return False
    return True


def _row_not_written(job_id: str, exc: Exception, connection: Any) -> None:
    logger.warning(
        "Could not write the row of job %s: %s. The job is in Redis; its row is kept in this "
        "process and written once the database answers (a worker that takes the job first "
        "writes it itself).",
        job_id,
        exc,
    )
    # .delay() does not raise here: a lost connection is closed so that the caller's next
    # query opens a new one (outside atomic(), as here, Django would otherwise keep it).
    connection.close_if_unusable_or_obsolete()


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
    from rq.job import JobStatus as RQJobStatus

    try:
        rq_queue = get_queue(queue_name)
        rq_job = _create_rq_job(rq_queue, job_id, func_name, args, kwargs, options)
        if queue_config(queue_name).get("ASYNC", True) is False:
            run_inline(rq_queue, rq_job)
            return True
        if options.get("depends_on"):
            # Dependencies are checked under WATCH: RQ needs its own round trips.
            rq_job = rq_queue.enqueue_job(rq_job, at_front=bool(options.get("at_front")))
        else:
            rq_job = _enqueue_in_one_trip(rq_queue, rq_job, options)
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


def push_many(
    func_name: str,
    queue_name: str,
    pushes: list[tuple[_PendingPush, str, list[Any], dict[str, Any], dict[str, Any]]],
    using: str,
) -> int:
    """Put jobs whose rows exist into one RQ queue in one pipeline; return how many Redis took.

    Jobs canceled before the commit are left out. If Redis fails, every row
    of the batch is marked ``needs_push`` (the pipeline is a transaction:
    Redis took all of them or none).
    """
    pushes = [entry for entry in pushes if not entry[0].canceled]
    if not pushes:
        return 0
    if queue_config(queue_name).get("ASYNC", True) is False:
        # Run inline, one by one, exactly as .delay() does.
        return sum(
            push(job_id, func_name, queue_name, args, kwargs, options, using)
            for _pending_push, job_id, args, kwargs, options in pushes
        )
    job_ids = [entry[1] for entry in pushes]
    try:
        from rq import Queue

        rq_queue = get_queue(queue_name)
        result_ttl = default_result_ttl(queue_name)
        with rq_queue.connection.pipeline() as pipeline:
            rq_queue.enqueue_many(
                [
                    Queue.prepare_data(
                        func_name,
                        args=args,
                        kwargs=kwargs,
                        job_id=job_id,
                        timeout=options.get("timeout"),
                        result_ttl=options.get("result_ttl", result_ttl),
                        ttl=options.get("ttl"),
                        failure_ttl=options.get("failure_ttl"),
                        description=options.get("description"),
                        meta=limits.rq_meta(func_name, options),
                    )
                    for _pending_push, job_id, args, kwargs, options in pushes
                ],
                pipeline=pipeline,
            )
            pipeline.execute()
    except (RedisError, OSError) as exc:
        logger.warning(
            "Could not push %d jobs (%s) to Redis queue %r: %s. The rows are kept as queued "
            "with needs_push set, to be pushed again once Redis is back.",
            len(job_ids),
            func_name,
            queue_name,
            exc,
        )
        records.mark_push_failed_many(job_ids, using)
        return 0
    except Exception:
        # Never lose the jobs to an unexpected error after the caller's commit.
        logger.exception(
            "Could not push %d jobs (%s); the rows are kept with needs_push set.", len(job_ids), func_name
        )
        records.mark_push_failed_many(job_ids, using)
        return 0
    return len(job_ids)
