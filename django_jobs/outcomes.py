"""The one mapping from a step of a job's life in a worker to the write of its row.

A worker reports four steps of a job (:data:`STEPS`): it ``started``, it
``finished`` with a result, its attempt ``failed`` (then the retry policy on the
row decides what comes next), or RQ put it back itself (``error``: the job
returned ``rq.Retry``). Each step is one write through :mod:`django_jobs.records`
(:func:`write`). The same mapping serves three callers:

- the recording hooks of every worker class, in the worker's process
  (:func:`record`, which retries a write the database refuses and then keeps it
  in the spool);
- the forking worker, which writes what its work-horse handed back (:func:`apply`);
- the replay of the spool once the database answers again (:func:`replay_spool`).

A failed attempt that is retried at once is pushed again here (:func:`follow_up`).
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from typing import Any

from django.db import DatabaseError, InterfaceError
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from redis import Redis
from redis.exceptions import RedisError
from rq.job import Job

from . import records, spool
from .db.connections import refused_item, reset_database_connections
from .payload import storable, storable_text
from .push import push
from .queues import get_queue

logger = logging.getLogger("django_jobs.worker")

STARTED, FINISHED, FAILED, ERROR = "started", "finished", "failed", "error"

#: The steps a worker reports, with the fields each carries (their names in the spool too).
STEPS: dict[str, tuple[str, ...]] = {
    STARTED: ("worker_name", "at"),
    FINISHED: ("result", "at"),
    FAILED: ("error", "error_types", "stopped", "at"),
    ERROR: ("error", "status"),
}

#: Pauses between the attempts of a row write before it is kept in Redis instead.
WRITE_RETRY_DELAYS = (0.2, 0.5, 1.0)

#: Jobs of this process with outcomes waiting in the spool: their later writes
#: queue up behind them, so that a job's writes land in order.
_spooled: set[str] = set()


def _at(value: Any) -> datetime | None:
    """A step's time: a datetime in the worker, ISO text once it went through the spool or a file."""
    if value is None or isinstance(value, datetime):
        return value
    return parse_datetime(str(value))


def write(step: str, job_id: str, fields: dict[str, Any], job: Job | None = None) -> Any:
    """Write one step of a job to its row. ``job``, the RQ job, lets a start give a job without a
    row (enqueued with plain RQ) a whole one. Returns what the write returned (a
    :class:`~django_jobs.records.FailedAttempt` for ``failed``; for ``started`` with ``job``,
    False if the job must not run: its row was canceled or deleted, see :func:`refused`)."""
    at = _at(fields.get("at"))
    if step == STARTED:
        if job is not None:
            return records.mark_started(job, fields["worker_name"], at)
        return records.mark_started_late(job_id, fields["worker_name"], at)
    if step == FINISHED:
        return records.mark_finished(job_id, fields.get("result"), at)
    if step == FAILED:
        return records.mark_attempt_failed(
            job_id,
            storable_text(fields["error"]),
            error_types=fields.get("error_types"),
            stopped=bool(fields.get("stopped")),
            at=at,
        )
    if step == ERROR:
        return records.mark_failed(job_id, storable_text(fields["error"]), fields["status"])
    raise ValueError(f"Unknown step {step!r} of job {job_id}.")


#: The ``meta`` key of a row whose outcome was stored with its text escaped.
ESCAPED_NOTE = "stored_escaped"
#: The fields of a step that carry what a job made (the rest is the worker's own).
_ESCAPED = ("result", "error")


def write_storable(step: str, job_id: str, fields: dict[str, Any], job: Job | None = None) -> Any:
    """:func:`write`, and for a write the database refuses for what it holds (not for being
    unavailable, which raises): the same write with its values escaped
    (:func:`~django_jobs.payload.storable`) and a note in the row's ``meta``; failing that, the
    row failed with an error saying what could not be stored; failing that, the step is logged
    and dropped. So one outcome never stands in the way of the others."""
    try:
        return write(step, job_id, fields, job)
    except Exception as exc:
        if not refused_item(exc):
            raise
        refused = exc
    reset_database_connections()
    cause = storable_text(f"{type(refused).__name__}: {refused}".strip())
    logger.error("The database cannot store the %s of job %s (%s); storing it escaped", step, job_id, cause)
    try:
        escaped = {key: storable(value) if key in _ESCAPED else value for key, value in fields.items()}
        written = write(step, job_id, escaped, job)
        row = records.load(job_id)
        if row is not None:  # the admin shows why the row's text differs from what the job made
            note = f"The {step} outcome held values the database refused ({cause}); they were stored "
            note += "escaped (NUL as \\x00, lone surrogates as \\udxxx)."
            records.set_meta(job_id, {**row.meta, ESCAPED_NOTE: note})
        return written
    except Exception as exc:
        if not refused_item(exc):
            raise
    reset_database_connections()
    try:
        records.mark_failed(
            job_id, f"The {step} outcome of this job could not be stored in its row: {cause}."
        )
    except Exception as exc:
        if not refused_item(exc):
            raise
        logger.error(
            "The %s of job %s cannot be stored at all; dropped. Its row is left as it was.", step, job_id
        )
    return None


def refused(written: Any) -> bool:
    """Whether a written start (what :func:`record` returned for ``started``) says the job must not
    run: its row was canceled, or deleted while Redis was away. A start kept in the spool (the
    database is away) cannot tell: the job runs."""
    return written is False


def follow_up(job_id: str, written: Any) -> None:
    """After a failed attempt that will be retried: push it now, or leave it to the scheduler loop.

    The database holds the retry, so RQ's failed registry must not list the job meanwhile.
    """
    if not isinstance(written, records.FailedAttempt) or not written.retrying or written.spec is None:
        return
    try:
        get_queue(written.spec.queue).failed_job_registry.remove(job_id)
    except (RedisError, OSError):
        logger.warning("Could not take job %s out of RQ's failed registry", job_id)
    if written.push_now:
        push(written.spec)


def record(connection: Redis, step: str, job_id: str, fields: dict[str, Any], job: Job | None = None) -> Any:
    """Write one step of a job from a worker; if the database stays unavailable, keep it in Redis.

    The write is tried again after short pauses (the database may be restarting). Then the
    step goes to the spool, which workers and the scheduler write back once the database
    answers; the worker never dies of a database error. A job with a step in the spool has its
    later steps queued behind it there. Returns what the write returned, or None when the step
    was kept; a retry due now is pushed.
    """
    if job_id not in _spooled:
        for pause in (*WRITE_RETRY_DELAYS, None):
            try:
                written = write_storable(step, job_id, fields, job)
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
            else:
                follow_up(job_id, written)
                return written
    if spool.save(connection, step, job_id=job_id, **fields):
        _spooled.add(job_id)
    if step != STARTED:
        _spooled.discard(job_id)  # the job has no later writes
    return None


def record_end_and_start(
    connection: Redis,
    ended: Job,
    ended_fields: dict[str, Any],
    starting: Job,
    starting_fields: dict[str, Any],
) -> Any:
    """A batch worker's end of one job and start of the next, as one write where the database
    allows it (:func:`records.mark_finished_then_started <django_jobs.records.mark_finished_then_started>`);
    else, or while a step of either job waits in the spool, as the two steps one after the other.
    Returns what the start's write returned (see :func:`refused`)."""
    if not is_spooled(ended.id) and not is_spooled(starting.id):
        try:
            return records.mark_finished_then_started(
                (ended.id, ended_fields.get("result"), _at(ended_fields["at"]) or timezone.now()),
                starting,
                starting_fields["worker_name"],
                _at(starting_fields["at"]) or timezone.now(),
            )
        except (DatabaseError, InterfaceError):
            pass  # one by one now, each with its retries and the spool
    record(connection, FINISHED, ended.id, ended_fields, ended)
    return record(connection, STARTED, starting.id, starting_fields, starting)


def is_spooled(job_id: str) -> bool:
    """Whether this process keeps a step of the job in the spool (its next writes wait there)."""
    return job_id in _spooled


def encode(step: str, job_id: str, fields: dict[str, Any]) -> str:
    """One step as a line of JSON, as the spool and a work-horse's outbox keep it."""
    return spool.encode(step, job_id=job_id, **fields)


def apply(item: dict[str, Any]) -> Any:
    """Write a step read back from the spool or a work-horse's outbox (``encode()``'s form)."""
    fields = {key: value for key, value in item.items() if key not in ("step", "job_id")}
    written = write_storable(item["step"], item["job_id"], fields)
    follow_up(item["job_id"], written)
    return written


def apply_lines(connection: Redis, lines: list[bytes]) -> None:
    """Write the steps a work-horse handed back, each as :func:`record` writes a worker's own."""
    for line in lines:
        item = json.loads(line)
        fields = {key: value for key, value in item.items() if key not in ("step", "job_id")}
        try:
            record(connection, item["step"], item["job_id"], fields)
        except Exception:  # never lose the worker over one write; the scheduler repairs the row
            logger.exception("Could not record %s of job %s", item["step"], item["job_id"])


def replay_spool(connection: Redis) -> int:
    """Write back the steps kept in Redis during a database outage, oldest first; how many."""
    return spool.drain(connection, apply)


def pending(connection: Redis) -> int:
    """How many steps wait in the spool."""
    return spool.pending(connection)
