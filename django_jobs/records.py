"""The one writer of :class:`~django_jobs.models.JobRecord` state.

Every change of a row's status goes through a function here, and each names its
transition in :data:`django_jobs.status.TRANSITIONS`, from which its ``WHERE``
clause comes: a row in a status the transition does not start from is left as
it is. A job costs three statements in all: the insert at enqueue, the start
and the end (the SQL is in :mod:`django_jobs.db.statements`; on PostgreSQL it
may travel as :mod:`django_jobs.db.postgres` sends it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, IntegrityError, InterfaceError, connections, transaction
from django.db.models import CharField, Value
from django.utils import timezone
from rq.exceptions import NoSuchJobError

from . import retries
from .db.postgres import (
    Sent,
    SentInsert,
    close_if_lost,
    execute,
    run_together,
    send_insert,
    sending_connection,
)
from .db.statements import (
    BULK_BATCH_SIZE,
    alone,
    create,
    create_many,
    db_alias,
    finish_statement,
    row_values,
    start_statement,
)
from .models import ACTIVE_STATUSES, JobDependency, JobRecord, PendingRemoval
from .payload import to_jsonable
from .queues import get_queue
from .spec import JobSpec
from .status import JobStatus, check_target, sources, status_filter

if TYPE_CHECKING:
    from rq.job import Job

__all__ = [
    "ROW_OPTIONS_META",
    "FailedAttempt",
    "SentInsert",
    "SentStart",
    "add_dependencies",
    "claim_due",
    "clear_needs_push",
    "create",
    "create_many",
    "db_alias",
    "load",
    "mark_attempt_failed",
    "mark_canceled_many",
    "mark_dependencies_met",
    "mark_failed",
    "mark_finished",
    "mark_finished_then_started",
    "mark_push_failed",
    "mark_push_failed_many",
    "mark_requeued",
    "mark_started",
    "mark_started_by_id",
    "mark_started_late",
    "mark_waiting_for_limit",
    "row_values",
    "send_insert",
    "send_start",
    "set_meta",
    "unique_holder",
]

logger = logging.getLogger("django_jobs.records")


def _rows(transition: str, *job_ids: str, using: str | None = None) -> Any:
    """The rows of ``job_ids`` that ``transition`` may change (see ``status.TRANSITIONS``)."""
    rows = JobRecord.objects.using(using or db_alias())
    by_key = {"pk": job_ids[0]} if len(job_ids) == 1 else {"pk__in": job_ids}
    return rows.filter(**by_key, **status_filter(transition))


def add_dependencies(job_id: str, depends_on: list[str], using: str) -> None:
    JobDependency.objects.using(using).bulk_create(
        [JobDependency(job_id=job_id, depends_on_id=parent) for parent in depends_on], ignore_conflicts=True
    )


def unique_holder(key: str, unique_for: float | None, using: str) -> str | None:
    """The id of the job that holds ``key`` and is not final, or None.

    A holder whose last start (else its enqueue) is more than ``unique_for``
    seconds old loses the key (it may be stuck): None is returned then.
    """
    rows = JobRecord.objects.using(using).filter(unique_key=key, status__in=ACTIVE_STATUSES)
    row = rows.values("pk", "enqueued_at", "started_at").first()
    if row is None:
        return None
    since = row["started_at"] or row["enqueued_at"]
    if unique_for is not None and since + timedelta(seconds=unique_for) <= timezone.now():
        rows.filter(pk=row["pk"]).update(unique_key=None)
        logger.info("Job %s held unique key %s longer than unique_for; it is free again.", row["pk"], key)
        return None
    return str(row["pk"])


def mark_waiting_for_limit(job_id: str, until: datetime) -> bool:
    """A dequeued job is over its rate or concurrency limit: ``scheduled`` until ``until``.

    Not an attempt: ``attempts`` is left as it is. Its dependencies, if it
    had any, are met (it was dequeued), so the next push does not wait for
    them again. False if the row is gone or was canceled meanwhile.
    """
    rows = _rows("wait_for_limit", job_id)
    options = rows.values_list("options", flat=True).first()
    if options is None:
        return False
    fields: dict[str, Any] = {"status": JobStatus.SCHEDULED, "scheduled_for": until, "needs_push": False}
    if "depends_on" in options:
        fields["options"] = {key: value for key, value in options.items() if key != "depends_on"}
    return bool(rows.update(**fields))


def claim_due(job_ids: list[str], using: str) -> int:
    """Move due ``scheduled`` rows to ``queued``; only rows still scheduled are taken."""
    return int(_rows("promote", *job_ids, using=using).update(status=JobStatus.QUEUED, needs_push=False))


#: The RQ ``meta`` key of a job pushed ahead of its row: the row's options (retry policy…).
ROW_OPTIONS_META = "django_jobs_options"


def _create_from_job(job: Job, **fields: Any) -> bool:
    """Insert the row of a job that has none: one enqueued with plain RQ, or pushed ahead of its row.

    False if the row appeared meanwhile (its enqueuing process wrote it): it is left as it is.
    """
    try:
        args, kwargs = to_jsonable(list(job.args)), to_jsonable(dict(job.kwargs))
    except Exception:  # the payload itself may be what is broken
        args, kwargs = [], {}
    try:
        func_name = job.func_name or ""
    except Exception:  # its payload cannot be read: the failure that follows says so
        func_name = ""
    options = (job.meta or {}).get(ROW_OPTIONS_META)
    enqueued_at = getattr(job, "enqueued_at", None)
    if not isinstance(enqueued_at, datetime):
        enqueued_at = timezone.now()
    elif timezone.is_naive(enqueued_at):
        enqueued_at = enqueued_at.replace(tzinfo=UTC)  # RQ keeps UTC
    try:
        with transaction.atomic(using=db_alias()):
            JobRecord.objects.using(db_alias()).create(
                id=job.id,
                func_name=func_name,
                queue=job.origin,
                args=args,
                kwargs=kwargs,
                options=options if isinstance(options, dict) else {},
                enqueued_at=enqueued_at,
                **fields,
            )
    except IntegrityError:
        if not JobRecord.objects.using(db_alias()).filter(pk=job.id).exists():
            raise
        return False
    return True


def mark_started_by_id(job_id: str, worker_name: str, at: datetime | None = None) -> bool:
    """Set ``started``, the start time and the worker, and count the attempt; False if the job
    has no row, or if its row refuses the start (canceled: the job must not run).

    A start older than the row's last end is skipped: it is a late write of
    an attempt that already ended (written back after a database outage).
    """
    statement = start_statement(job_id, worker_name, at, alone=alone())
    return bool(_started(job_id, statement, execute(*statement)))


#: What :func:`_started` reads of a job with no row but a ``PendingRemoval`` (its row was deleted).
_DELETED = ""


def _started(job_id: str, statement: tuple[str, list[Any]], changed: int) -> bool | None:
    """After the start ``statement`` changed ``changed`` rows: True if the row is started, False
    if the job must not run (its row is canceled, or was deleted while Redis was away: a
    ``PendingRemoval`` says so), None if the job has no row (enqueued with plain RQ, or pushed
    ahead of its row). The row and the entry are read in one query."""
    if changed:
        return True
    using = db_alias()
    status = JobRecord.objects.using(using).filter(pk=job_id).order_by().values_list("status", flat=True)
    deleted = PendingRemoval.objects.using(using).filter(pk=job_id).order_by()
    found = set(status.union(deleted.values_list(Value(_DELETED, output_field=CharField())), all=True))
    row = found - {_DELETED}
    if not row:
        return False if found else None
    if row.pop() not in sources("start"):
        return False
    # A late start changes nothing again; a row its enqueuing process wrote just now is started.
    execute(*statement)
    return True


def mark_started(job: Job, worker_name: str, at: datetime | None = None) -> bool:
    """The job is running; a job without a row (enqueued with plain RQ, or pushed ahead of its
    row) gets one now. False if the job must not run: its row was canceled, or deleted while
    Redis was away (see :class:`~django_jobs.models.PendingRemoval`); the worker skips it."""
    now = at or timezone.now()
    statement = start_statement(job.id, worker_name, now, alone=alone())
    started = _started(job.id, statement, execute(*statement))
    return _start_without_row(job, worker_name, now) if started is None else started


class SentStart(Sent):
    """A job's start, sent to PostgreSQL and not yet answered (see :func:`send_start`)."""

    def __init__(self, connection: Any, job: Job, worker_name: str, at: datetime) -> None:
        self.job, self.worker_name, self.at = job, worker_name, at
        # Sent only outside a transaction (see sending_connection): a transaction of its own.
        super().__init__(connection, start_statement(job.id, worker_name, at, alone=True))

    def finish(self, ruled: Callable[[bool], Any] | None = None) -> bool:
        """Wait for the answer and complete the start as :func:`mark_started` would; False if
        the job must not run. ``ruled(True)`` is called for a job without a row (and none
        deleted) before its row is written: it may run from then on.

        Raises Django's ``DatabaseError`` if the statement failed: then nothing was written.
        """
        started = _started(self.job.id, self.statement, self._rows())
        if started is not None:
            return started
        if ruled is not None:
            ruled(True)
        return _start_without_row(self.job, self.worker_name, self.at)


def send_start(job: Job, worker_name: str, at: datetime) -> SentStart | None:
    """Send the start of ``job`` to PostgreSQL without waiting for the answer; None where that
    cannot be done (then :func:`mark_started` writes it).

    The forking worker starts the job's process meanwhile, then reads the answer
    (:meth:`SentStart.finish`).
    """
    connection = sending_connection(db_alias())
    if connection is None:
        return None
    try:
        return SentStart(connection, job, worker_name, at)
    except (DatabaseError, InterfaceError):
        close_if_lost(connection)
        return None  # mark_started() then tries again, and the spool keeps it if it must


def _start_without_row(job: Job, worker_name: str, at: datetime) -> bool:
    created = _create_from_job(
        job, attempts=1, status=JobStatus.STARTED, started_at=at, ended_at=None, worker_name=worker_name
    )
    # Else its enqueuing process wrote the row in between: start that one.
    return created or mark_started_by_id(job.id, worker_name, at)


def mark_started_late(job_id: str, worker_name: str, at: datetime | None) -> None:
    """A start written back from the spool; a job without a row (pushed ahead of its row while
    the database was down) gets one now, from Redis while Redis still has the job, else with
    what the start knows (the late insert of its enqueuing process fills in the rest). A row
    canceled or deleted meanwhile is left so."""
    now = at or timezone.now()
    statement = start_statement(job_id, worker_name, now, alone=alone())
    if _started(job_id, statement, execute(*statement)) is not None:
        return
    queue = get_queue(None)
    try:
        job = queue.job_class.fetch(job_id, connection=queue.connection, serializer=queue.serializer)
    except NoSuchJobError:
        job = None
    if job is not None:
        _start_without_row(job, worker_name, now)
        return
    JobRecord.objects.using(db_alias()).get_or_create(
        pk=job_id,
        defaults={
            "status": JobStatus.STARTED,
            "attempts": 1,
            "enqueued_at": now,
            "started_at": now,
            "worker_name": worker_name,
        },
    )


def mark_finished(job_id: str, result: Any, at: datetime | None = None) -> None:
    """The job returned ``result``."""
    execute(*finish_statement(job_id, result, at))


def mark_finished_then_started(
    finished: tuple[str, Any, datetime], job: Job, worker_name: str, at: datetime
) -> bool:
    """One job's end (``finished``: its id, result and end time) and the next job's start, together;
    False if the next job must not run (as :func:`mark_started`).

    On PostgreSQL the two ``UPDATE`` statements travel in one request and commit together: one
    round trip where two autocommit statements take two, and a transaction block three. Outside
    a transaction they go in one libpq pipeline (:func:`~django_jobs.db.postgres.run_together`),
    as prepared statements where the database's ``OPTIONS`` allow them; inside one, or where Django would do
    more than run them (a query log, an execute wrapper), as one two-statement query through
    Django's cursor (with Django's default client-side parameter binding). Elsewhere they share a
    transaction.
    """
    finish, start = finish_statement(*finished), start_statement(job.id, worker_name, at)
    sending = sending_connection(db_alias())
    counts = None if sending is None else run_together(sending, [finish, start])
    # A start that changed no row: no row (enqueued with plain RQ), a canceled row, or a late start.
    if counts is not None:
        return bool(counts[1]) or mark_started(job, worker_name, at)
    connection = connections[db_alias()]
    in_one_request = (
        connection.vendor == "postgresql"
        and not connection.settings_dict.get("OPTIONS", {}).get("server_side_binding")
        and not connection.in_atomic_block
    )
    if not in_one_request:
        with transaction.atomic(using=connection.alias):
            mark_finished(*finished)
            return mark_started(job, worker_name, at)
    (finish_sql, finish_params), (start_sql, start_params) = finish, start
    with connection.cursor() as cursor:
        cursor.execute(f"{finish_sql}; {start_sql}", [*finish_params, *start_params])
        cursor.nextset()
        started = cursor.rowcount
    return bool(started) or mark_started(job, worker_name, at)


#: The exception RQ raises for a job whose payload in Redis cannot be read, and what the row says.
DAMAGED_PAYLOAD_ERROR = "rq.exceptions.DeserializationError"
PAYLOAD_DAMAGED = "The job's payload in Redis could not be read"


@dataclass(frozen=True)
class FailedAttempt:
    """What became of a failed attempt: the row's new status, and the job to push again if it
    is retried (``spec``; None when it is not, or when the row is gone or was canceled)."""

    status: str
    delay: float = 0.0
    spec: JobSpec | None = None

    @property
    def push_now(self) -> bool:
        """Retried at once: push it now (a later retry waits for the scheduler loop)."""
        return self.status == JobStatus.QUEUED and self.spec is not None

    @property
    def retrying(self) -> bool:
        return self.status in (JobStatus.QUEUED, JobStatus.SCHEDULED) and self.spec is not None


def mark_attempt_failed(
    job_id: str,
    error: str,
    *,
    error_types: list[str] | None = None,
    stopped: bool = False,
    at: datetime | None = None,
) -> FailedAttempt:
    """Record a failed attempt and decide, from the row's retry policy, what comes next.

    ``error`` becomes the last error and joins the history. The row then ends
    ``failed`` (or ``stopped``), or waits for its retry: ``queued`` to be
    pushed at once, or ``scheduled`` with ``scheduled_for`` for the scheduler
    loop to push when due (the database holds the wait, not Redis).
    """
    now = at or timezone.now()
    using = db_alias()
    fields = ("attempts", "error_history", "options", "func_name", "queue", "args", "kwargs", "status")
    row = JobRecord.objects.using(using).filter(pk=job_id).values(*fields).first()
    if row is None:
        return FailedAttempt(JobStatus.FAILED)
    attempts = row["attempts"]
    update: dict[str, Any] = {"ended_at": now}
    if row["status"] != JobStatus.STARTED:
        # It failed before it could start (e.g. its payload was unreadable): still an attempt.
        attempts = update["attempts"] = attempts + 1
    history = [*(row["error_history"] or []), {"attempt": attempts, "at": now.isoformat(), "error": error}]
    options = row["options"] or {}
    update.update(error=error, error_history=history)
    spec = JobSpec.from_row({**row, "pk": job_id}, using)
    outcome = FailedAttempt(JobStatus.STOPPED if stopped else JobStatus.FAILED)
    damaged = error_types is not None and DAMAGED_PAYLOAD_ERROR in error_types
    if damaged and not any(PAYLOAD_DAMAGED in entry["error"] for entry in history[:-1]):
        # Redis holds a payload that cannot be read; the row holds a good one: push that, once.
        outcome = FailedAttempt(JobStatus.QUEUED, 0.0, spec)
    elif not stopped and retries.retries_left(options, attempts) and retries.retryable(options, error_types):
        delay = retries.retry_delay(options, attempts)
        if delay > 0:
            outcome = FailedAttempt(JobStatus.SCHEDULED, delay, spec)
            update["scheduled_for"] = now + timedelta(seconds=delay)
        else:
            outcome = FailedAttempt(JobStatus.QUEUED, 0.0, spec)
    check_target("fail", outcome.status)
    if not _rows("fail", job_id, using=using).update(status=outcome.status, **update):
        return FailedAttempt(JobStatus.CANCELED)  # canceled (or finished) meanwhile: left so
    return outcome


def mark_failed(job_id: str, error: str, status: str = JobStatus.FAILED) -> None:
    """The job ended without a result (or RQ put it back, ``status`` queued or scheduled), with
    the error text, and no retry of ours."""
    check_target("fail", status)
    now = timezone.now()
    row = JobRecord.objects.using(db_alias()).filter(pk=job_id).values("attempts", "error_history").first()
    history = list(row["error_history"] or []) if row else []
    history.append({"attempt": row["attempts"] if row else 0, "at": now.isoformat(), "error": error})
    _rows("fail", job_id).update(status=status, error=error, error_history=history, ended_at=now)


def mark_requeued(job_ids: list[str]) -> set[str]:
    """Make final jobs wait again, as a new attempt of the same rows (errors are kept); return
    the ids of the rows requeued (not those that moved on meanwhile, e.g. requeued by another).

    A unique job run again this way gives up its key: a newer job may hold it.
    """
    if not job_ids:
        return set()
    using = db_alias()
    with transaction.atomic(using=using):
        # Locked on PostgreSQL until the update; SQLite lets one writer in at a time anyway.
        requeued = set(_rows("requeue", *job_ids).select_for_update().values_list("pk", flat=True))
        if requeued:
            JobRecord.objects.using(using).filter(pk__in=requeued).update(
                status=JobStatus.QUEUED,
                result=None,
                started_at=None,
                ended_at=None,
                needs_push=False,
                unique_key=None,
            )
    return requeued


def mark_canceled_many(job_ids: list[str]) -> int:
    """Cancel jobs that have not started; a row that started meanwhile is left as it is. A
    canceled row needs no push: one that waited for its push (``needs_push``) waits no more."""
    if not job_ids:
        return 0
    now = timezone.now()
    return int(_rows("cancel", *job_ids).update(status=JobStatus.CANCELED, ended_at=now, needs_push=False))


def set_meta(job_id: str, meta: dict[str, Any]) -> None:
    """Replace the job's ``meta`` (progress and user data)."""
    JobRecord.objects.using(db_alias()).filter(pk=job_id).update(meta=meta)


def mark_dependencies_met(job_id: str) -> None:
    """A deferred job was pushed after its dependencies had all finished: RQ queued it at once."""
    _rows("dependencies_met", job_id).update(status=JobStatus.QUEUED)


def mark_push_failed(job_id: str, using: str) -> None:
    """Remember that the push to Redis failed, so that reconciliation can push the row again."""
    JobRecord.objects.using(using).filter(pk=job_id).update(needs_push=True)


def mark_push_failed_many(job_ids: list[str], using: str) -> None:
    """Remember that the push of these jobs failed (see :func:`mark_push_failed`)."""
    for start in range(0, len(job_ids), BULK_BATCH_SIZE):
        chunk = job_ids[start : start + BULK_BATCH_SIZE]
        JobRecord.objects.using(using).filter(pk__in=chunk).update(needs_push=True)


def clear_needs_push(job_id: str) -> None:
    """The row's job is in Redis again."""
    JobRecord.objects.using(db_alias()).filter(pk=job_id, needs_push=True).update(needs_push=False)


def load(job_id: str) -> JobRecord | None:
    """Return the job's row, read fresh, or None."""
    return JobRecord.objects.using(db_alias()).filter(pk=job_id).first()
