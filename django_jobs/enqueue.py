"""The one enqueue path: validate the call, build its :class:`~django_jobs.spec.JobSpec`, write
the row, push to Redis on commit.

``.delay()`` inserts the :class:`~django_jobs.models.JobRecord` in the
caller's transaction and pushes the job to Redis from
``transaction.on_commit`` on the same database alias (:func:`django_jobs.push.push`),
so a rollback leaves neither a row nor a job, and outside ``atomic()`` the push
happens at once. If Redis cannot be reached, the row stays ``queued`` with
``needs_push`` set and the caller carries on: nothing is lost.

A plain call outside any transaction sends the push and the row together
(:mod:`django_jobs.push_ahead`); ``.map()`` writes all rows in bulk and pushes
them in one pipeline (:func:`enqueue_many`).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.utils import timezone

from . import limits, records, uniqueness
from .bounds import check_delay, check_eta, check_timeout
from .conf import conf
from .payload import check_arguments, check_payload_size, to_jsonable
from .push import is_inline, pending_push, push_many_unless_canceled, push_unless_canceled
from .push_ahead import push_beside_row, push_first
from .pusher import pusher
from .queues import queue_config, uses_json
from .redaction import call_string
from .spec import JobSpec
from .status import JobStatus

if TYPE_CHECKING:
    from .decorators import JobFunction

logger = logging.getLogger("django_jobs.enqueue")

_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def new_job_id() -> str:
    """A fresh job id, made here so that the caller has it before any I/O."""
    return uuid.uuid4().hex


def due_time(label: str, countdown: float | timedelta | None, eta: datetime | None) -> datetime | None:
    """When a delayed job is due (aware), or None to run it now (no delay, or a time already past)."""
    if countdown is not None and eta is not None:
        raise TypeError(f"{label}: give countdown or eta, not both.")
    now = timezone.now()
    if countdown is not None:
        eta = now + check_delay(label, countdown)
    if eta is None:
        return None
    if not isinstance(eta, datetime):
        raise TypeError(f"{label}: eta must be a datetime, not {type(eta).__name__}.")
    if timezone.is_naive(eta):
        eta = timezone.make_aware(eta, timezone.get_default_timezone())  # documented: settings.TIME_ZONE
    check_eta(label, eta, now)
    # In UTC: PostgreSQL refuses an offset of 16 hours or more, or one with seconds, that Python allows.
    return eta.astimezone(UTC) if eta > now else None


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
    function: JobFunction[Any, Any], label: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """Check a call against the signature and the JSON rules; return the args and kwargs for the row."""
    try:
        bound = function.signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(
            f"{label}: the arguments do not fit its signature {function.signature}: {exc}."
        ) from None
    gathering = function.gathering
    if uses_json():
        check_arguments(label, bound.arguments, gathering=gathering)
        stored: tuple[list[Any], dict[str, Any]] = (list(args), dict(kwargs))
    else:  # pickled: any object travels, the row keeps a JSON text form of each
        check_arguments(label, bound.arguments, json_only=False, gathering=gathering)
        stored = (to_jsonable(list(args)), to_jsonable(dict(kwargs)))
    check_payload_size(label, stored)
    return stored


def _job_options(
    function: JobFunction[Any, Any],
    stored_args: list[Any],
    stored_kwargs: dict[str, Any],
    timeout: int | str | None,
) -> dict[str, Any]:
    """The options kept on the row: what RQ needs to run the job, and its retry policy."""
    description = function.description
    if description is None and (function.redact or conf.redact):
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
) -> str:
    """Enqueue ``function(*args, **kwargs)``; return the job's id at once.

    With ``countdown`` (seconds or a timedelta) or ``eta`` (a datetime; a
    naive one is read in ``settings.TIME_ZONE``) the row is ``scheduled``
    and the scheduler pushes it when due; a time in the past runs now.
    A unique job whose call is already waiting or running returns that job's id.
    """
    label = f"{function.name}()"
    queue_name = queue or function.queue_name or conf.default_queue
    queue_config(queue_name)  # raises UnknownQueueError listing the configured queues

    using = records.db_alias()
    stored_args, stored_kwargs = _checked_arguments(function, label, args, kwargs)
    unique_key = uniqueness.key_for(function, args, kwargs)

    chosen_id = job_id is not None
    if job_id is None:
        job_id = new_job_id()
    elif not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise ValueError(
            f"{label}: job_id {job_id!r} is invalid: use 1 to 128 characters from A-Z, a-z, 0-9, _ and -."
        )

    if timeout is not None:  # @job's own was checked at import
        check_timeout(label, timeout)
    effective_timeout = timeout if timeout is not None else function.timeout

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
    spec = JobSpec(job_id, function.name, queue_name, list(args), dict(kwargs), options, using)
    # The row keeps the arguments as stored (a JSON text form of pickled ones).
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
    plain = (
        status == JobStatus.QUEUED
        and not chosen_id  # a taken id must fail at the row's insert, before any push
        and due_at is None
        and periodic_job_id is None
        and unique_key is None
    )
    if plain and _can_push_ahead(spec):
        _push_with_row(spec, fields)
        return job_id

    create = partial(records.create, using=using, **fields)
    if unique_key is None:
        create()
    else:
        holder = uniqueness.create_or_find(create, unique_key, function.unique_for, using)
        if holder is not None:
            return holder  # the same call is already waiting or running
    if dependencies:
        records.add_dependencies(job_id, dependencies, using)
    if run_at is None:  # else the database holds it until the scheduler finds it due
        _push_on_commit(spec)
    return job_id


def _can_push_ahead(spec: JobSpec) -> bool:
    """Whether the job may go to Redis while its row is written (:mod:`django_jobs.push_ahead`):
    the default or ``"redis-first"`` push, outside any transaction, on a queue that is not
    inline, for a job without limits (a limited job's RQ meta is not the row's)."""
    return (
        conf.push in ("immediate", "redis-first")
        and limits.rq_meta(spec.func_name, spec.options) is None
        and not transaction.get_connection(spec.using).in_atomic_block
        and transaction.get_autocommit(spec.using)
        and not is_inline(spec.queue)
    )


def _push_with_row(spec: JobSpec, fields: dict[str, Any]) -> None:
    """The row and the push overlap, and both are done when ``.delay()`` returns (with
    ``"redis-first"``, the row follows from a thread)."""
    if conf.push == "redis-first":
        push_first(spec, fields)
        return
    sent = records.send_insert(using=spec.using, **fields)
    if sent is not None:  # PostgreSQL: the row's INSERT commits while the job is pushed
        push_first(spec, fields, sent=sent)
    else:  # elsewhere: the push is sent, and Redis runs it while the row is written
        push_beside_row(spec, fields)


def _push_on_commit(spec: JobSpec) -> None:
    """The outbox: push once the caller's transaction commits (at once outside ``atomic()``),
    or hand the push to the background pusher then; nothing on rollback."""
    pending = pending_push(spec.id)
    after_commit = pusher.submit if conf.push == "background" else push_unless_canceled
    transaction.on_commit(partial(after_commit, pending, spec), using=spec.using)


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
) -> list[str]:
    """Enqueue one call of ``function`` per item; return their ids, in order.

    Each item is a tuple of positional arguments or a dict of keyword
    arguments. Every item is checked as ``.delay()`` checks its call before
    anything is written; a bad one raises, naming its index. The rows are
    inserted with one bulk insert (in batches on a large list), and the jobs
    are pushed to Redis in one pipeline when the transaction commits.
    """
    queue_name = queue or function.queue_name or conf.default_queue
    queue_config(queue_name)  # raises UnknownQueueError listing the configured queues

    using = records.db_alias()
    calls: list[tuple[JobSpec, dict[str, Any]]] = []
    for index, item in enumerate(items):
        label = f"{function.name}() item {index}"
        args, kwargs = _split_item(label, item)
        stored_args, stored_kwargs = _checked_arguments(function, label, args, kwargs)
        options = _job_options(function, stored_args, stored_kwargs, function.timeout)
        spec = JobSpec(new_job_id(), function.name, queue_name, list(args), dict(kwargs), options, using)
        row = {
            "id": spec.id,
            "func_name": function.name,
            "queue": queue_name,
            "status": JobStatus.QUEUED,
            "args": stored_args,
            "kwargs": stored_kwargs,
            "options": options,
        }
        calls.append((spec, row))
    if not calls:
        return []
    if function.unique:
        # Each call must find or take its key: one by one, all or none.
        with transaction.atomic(using=using):
            return [enqueue(function, tuple(spec.args), spec.kwargs, queue=queue_name) for spec, _ in calls]

    records.create_many([row for _spec, row in calls], using)
    entries = [(pending_push(spec.id), spec) for spec, _row in calls]
    transaction.on_commit(partial(push_many_unless_canceled, entries), using=using)
    return [spec.id for spec, _row in calls]
