"""The push of a plain ``.delay()`` outside ``atomic()``: the job and its row on their way together.

``enqueue`` takes this path for a job that runs now, on a queue that is not
inline, outside any transaction; the row's ``fields`` are those
:func:`records.create <django_jobs.records.create>` takes, the job is ``spec``.

- On PostgreSQL (psycopg 3) the row's ``INSERT`` is sent ahead
  (:func:`records.send_insert <django_jobs.records.send_insert>`) and commits
  while the job is pushed; its answer is read before ``.delay()`` returns
  (:func:`push_first` with ``sent``).
- Elsewhere (SQLite) the push is sent and Redis runs it while the row is
  written; Redis's answer is read last (:func:`push_beside_row`).
- With ``DJANGO_JOBS["PUSH"] = "redis-first"`` the job is pushed first and its
  row follows from this process's row writer (:func:`push_first` without ``sent``).

The job carries its row's options in its RQ meta, so a worker that takes it
before its row is committed writes the whole row itself.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import DatabaseError, IntegrityError, InterfaceError, connections
from redis.exceptions import RedisError
from rq import Queue
from rq.job import Job

from . import records
from .push import enqueue_in_one_trip, rq_job_for
from .pusher import row_writer
from .queues import get_queue
from .redis_send import SentPipeline
from .spec import JobSpec

logger = logging.getLogger("django_jobs.enqueue")


def push_first(spec: JobSpec, fields: dict[str, Any], *, sent: records.SentInsert | None = None) -> None:
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
    row = sent.values if sent is not None else records.row_values(**fields)
    try:
        rq_queue = get_queue(spec.queue)
        enqueue_in_one_trip(rq_queue, _row_carrying_job(rq_queue, spec), spec.at_front)
    except Exception as exc:
        _push_failed(exc, spec, fields, sent is not None and _sent_row_written(sent, spec.id))
        return
    if sent is None or not _sent_row_written(sent, spec.id):
        row_writer.submit(spec.using, row)


def push_beside_row(spec: JobSpec, fields: dict[str, Any]) -> None:
    """The default push where the row cannot be sent ahead (SQLite): the push is sent to Redis,
    the row is written and committed while Redis runs the push, and Redis's answer is read last
    (:class:`~django_jobs.redis_send.SentPipeline`). The caller waits for the longer of the two,
    not for both, and the row is committed when ``.delay()`` returns.

    The job carries its row's options, as with :func:`push_first`. If the row cannot be written,
    the job is taken back out of its queue and the database's error raised, as if the row had
    been written first; a worker that took the job already writes the row itself.
    """
    using = spec.using
    try:
        rq_queue = get_queue(spec.queue)
        rq_job = _row_carrying_job(rq_queue, spec)
        with rq_queue.connection.pipeline() as pipeline:
            rq_queue.enqueue_job(rq_job, pipeline=pipeline, at_front=spec.at_front)
            sent_push = SentPipeline(pipeline)
    except Exception as exc:
        _push_failed(exc, spec, fields, row_written=False)
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
        _row_not_written(spec.id, exc, connections[using])
        row_writer.submit(using, records.row_values(**fields))
        return
    except BaseException:
        sent_push.abandon()
        raise
    try:
        sent_push.finish()
    except Exception as exc:
        _push_failed(exc, spec, fields, row_written)
        return
    if not row_written:
        row_writer.submit(using, records.row_values(**fields))


def _row_carrying_job(rq_queue: Queue, spec: JobSpec) -> Job:
    """The RQ job of a row not committed yet: it carries the row's options in its meta, so that
    a worker that takes it first can write the whole row."""
    return rq_job_for(rq_queue, spec, meta={records.ROW_OPTIONS_META: spec.options})


def _withdrawn(rq_queue: Queue, rq_job: Job) -> bool:
    """Take a job no worker has taken yet back out of its queue; whether it was there."""
    try:
        if not rq_queue.connection.lrem(rq_queue.key, 1, rq_job.id):
            return False
        rq_queue.connection.delete(rq_job.key)
    except RedisError:
        return False
    return True


def _push_failed(exc: Exception, spec: JobSpec, fields: dict[str, Any], row_written: bool) -> None:
    """Redis did not take a job pushed ahead of its row: the row is kept ``needs_push``."""
    job_id, using = spec.id, spec.using
    logger.warning(
        "Could not push job %s (%s) to Redis queue %r: %s. Its row is written now, queued with "
        "needs_push set, to be pushed again once Redis is back.",
        job_id,
        spec.func_name,
        spec.queue,
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
