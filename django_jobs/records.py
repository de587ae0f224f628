"""The one writer of :class:`~django_jobs.models.JobRecord` state.

Every transition is one ``UPDATE`` by primary key, so a job costs three
statements in all: the insert at enqueue, the start and the end.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import select
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, InterfaceError, router
from django.utils import timezone

from .conf import conf
from .models import JobRecord, JobStatus

if TYPE_CHECKING:
    from rq.job import Job

logger = logging.getLogger("django_jobs.records")


def db_alias() -> str:
    """The database alias that job rows are written to (honours routers)."""
    return router.db_for_write(JobRecord) or "default"


def _update(job_id: str, **fields: Any) -> int:
    return JobRecord.objects.using(db_alias()).filter(pk=job_id).update(**fields)


def add_dependencies(job_id: str, depends_on: list[str], using: str) -> None:
    from .models import JobDependency

    JobDependency.objects.using(using).bulk_create(
        [JobDependency(job_id=job_id, depends_on_id=parent) for parent in depends_on], ignore_conflicts=True
    )


def create(*, using: str, **fields: Any) -> None:
    """Insert the row of a job being enqueued (``fields`` as :func:`row_values` takes them): one
    plain INSERT (the ORM's cost more than it)."""
    from django.db import connections

    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(*_insert_statement(connection, row_values(**fields)))


def _insert_statement(connection: Any, values: dict[str, Any]) -> tuple[str, list[Any]]:
    """The INSERT of a new job's row (``values`` from :func:`row_values`) and its parameters."""
    return _insert_sql(connection.alias)[0], _insert_params(_prepared_columns(connection), values, connection)


def _insert_params(columns: list[tuple[str, Any, Any]], values: dict[str, Any], connection: Any) -> list[Any]:
    """A row's parameters for the INSERT: each column's value prepared, or its prepared default."""
    return [
        default if name not in values else prep(values[name], connection) for name, prep, default in columns
    ]


_PREPARED: dict[str, list[tuple[str, Any, Any]]] = {}


def _prepared_columns(connection: Any) -> list[tuple[str, Any, Any]]:
    """Each column of the INSERT: its field's name, how to prepare a value for it, and its default
    prepared once (a new row leaves most columns at their defaults). A default that is computed
    (``enqueued_at``'s, the time) is prepared at the first call: a row must give that field."""
    if connection.alias not in _PREPARED:
        from django.db.models import JSONField

        def prep_or_none(field: Any) -> Any:
            if isinstance(field, JSONField):
                return field.get_db_prep_save
            # NULL is NULL for every other column: no need to go through the field for it.
            return lambda value, connection: (
                None if value is None else field.get_db_prep_save(value, connection)
            )

        _PREPARED[connection.alias] = [
            (field.attname, prep_or_none(field), field.get_db_prep_save(default, connection))
            for field, default in _insert_sql(connection.alias)[1]
        ]
    return _PREPARED[connection.alias]


def row_values(
    *,
    job_id: str,
    func_name: str,
    queue: str,
    args: list[Any],
    kwargs: dict[str, Any],
    status: str,
    options: dict[str, Any],
    scheduled_for: Any = None,
    periodic_job_id: int | None = None,
    unique_key: str | None = None,
    needs_push: bool = False,
) -> dict[str, Any]:
    """The fields of a new job's row by name, enqueued now (for :func:`create` and :func:`create_many`)."""
    return {
        "id": job_id,
        "func_name": func_name,
        "queue": queue,
        "status": status,
        "args": args,
        "kwargs": kwargs,
        "options": options,
        "enqueued_at": timezone.now(),
        "scheduled_for": scheduled_for,
        "periodic_job_id": periodic_job_id,
        "unique_key": unique_key,
        "needs_push": needs_push,
    }


_INSERTS: dict[str, tuple[str, list[tuple[Any, Any]]]] = {}


def _insert_sql(alias: str) -> tuple[str, list[tuple[Any, Any]]]:
    """The INSERT of a whole row for this database, and each column's field and default."""
    if alias not in _INSERTS:
        from django.db import connections

        quote = connections[alias].ops.quote_name
        fields = [(field, field.get_default()) for field in JobRecord._meta.concrete_fields]
        columns = ", ".join(quote(str(field.column)) for field, _default in fields)
        marks = ", ".join(["%s"] * len(fields))
        _INSERTS[alias] = (
            f"INSERT INTO {quote(JobRecord._meta.db_table)} ({columns}) VALUES ({marks})",
            fields,
        )
    return _INSERTS[alias]


def unique_holder(key: str, unique_for: float | None, using: str) -> str | None:
    """The id of the job that holds ``key`` and is not final, or None.

    A holder whose last start (else its enqueue) is more than ``unique_for``
    seconds old loses the key (it may be stuck): None is returned then.
    """
    from datetime import timedelta

    from .models import ACTIVE_STATUSES

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
    rows = JobRecord.objects.using(db_alias()).filter(
        pk=job_id, status__in=[JobStatus.QUEUED, JobStatus.DEFERRED]
    )
    options = rows.values_list("options", flat=True).first()
    if options is None:
        return False
    fields: dict[str, Any] = {"status": JobStatus.SCHEDULED, "scheduled_for": until, "needs_push": False}
    if "depends_on" in options:
        fields["options"] = {key: value for key, value in options.items() if key != "depends_on"}
    return bool(rows.update(**fields))


#: Rows per INSERT when jobs are enqueued together (SQLite may need fewer: Django lowers it).
BULK_BATCH_SIZE = 1000
#: On PostgreSQL, more rows than this go as one-row INSERTs in a pipeline (``executemany()``);
#: fewer as one multi-row INSERT, which was faster for a few dozen rows here.
PIPELINE_ABOVE = 200


def create_many(rows: list[dict[str, Any]], using: str, *, late: bool = False) -> None:
    """Insert the rows of jobs enqueued together: plain multi-row INSERTs of up to
    ``BULK_BATCH_SIZE`` rows (fewer where the database takes fewer parameters), or for
    more than ``PIPELINE_ABOVE`` rows on PostgreSQL a one-row INSERT run for every row
    with ``executemany()``.

    Each row gives its fields by name; the others get their defaults, and
    ``enqueued_at``, unless given, is now. Built as :func:`create` builds its INSERT: the
    ORM's ``bulk_create()`` cost more than the statements. With ``late``
    (rows written after their jobs were pushed), a row that exists already,
    written by a worker that took the job first, keeps its status and run;
    only what the enqueue knows (function, queue, arguments, options, enqueue
    time) is set from the late row.
    """
    from django.db import connections
    from django.db.models.constants import OnConflict

    if not rows:
        return
    connection = connections[using]
    sql, fields = _insert_sql(connection.alias)
    head, marks = sql.split(" VALUES ", 1)
    suffix = ""
    if late:
        columns_of = {field.name: str(field.column) for field in JobRecord._meta.concrete_fields}
        enqueue_side = [columns_of[name] for name in _ENQUEUE_SIDE]
        pk = [columns_of["id"]]
        on_conflict = connection.ops.on_conflict_suffix_sql([], OnConflict.UPDATE, enqueue_side, pk)
        suffix = f" {on_conflict}"
        sql = f"{head} VALUES {marks}{suffix}"
    size = min(BULK_BATCH_SIZE, connection.ops.bulk_batch_size([field for field, _ in fields], rows)) or 1
    # The rows that do not give their enqueue time share this one.
    now = JobRecord._meta.get_field("enqueued_at").get_db_prep_save(timezone.now(), connection)
    columns = [
        (name, prep, now if name == "enqueued_at" else default)
        for name, prep, default in _prepared_columns(connection)
    ]

    def prepared(values: dict[str, Any]) -> list[Any]:
        return _insert_params(columns, values, connection)

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql" and len(rows) > PIPELINE_ABOVE and _psycopg3():
            # psycopg sends a one-row INSERT for many rows in one pipeline: faster here than
            # one statement with thousands of placeholders, which it parses again each time.
            cursor.executemany(sql, [prepared(values) for values in rows])
            return
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            params = [param for values in chunk for param in prepared(values)]
            cursor.execute(f"{head} VALUES {', '.join([marks] * len(chunk))}{suffix}", params)


#: What the enqueue knows of a job (the rest of a row is its run).
_ENQUEUE_SIDE = ("func_name", "queue", "args", "kwargs", "options", "enqueued_at")


def _psycopg3() -> bool:
    """Whether PostgreSQL is reached through psycopg 3 (psycopg2's executemany() is a loop)."""
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    return bool(is_psycopg3)


def claim_due(job_ids: list[str], using: str) -> int:
    """Move due ``scheduled`` rows to ``queued``; only rows still scheduled are taken."""
    return (
        JobRecord.objects.using(using)
        .filter(pk__in=job_ids, status=JobStatus.SCHEDULED)
        .update(status=JobStatus.QUEUED, needs_push=False)
    )


#: The RQ ``meta`` key of a job pushed ahead of its row: the row's options (retry policy…).
ROW_OPTIONS_META = "django_jobs_options"


def _create_from_job(job: Job, **fields: Any) -> bool:
    """Insert the row of a job that has none: one enqueued with plain RQ, or pushed ahead of its row.

    False if the row appeared meanwhile (its enqueuing process wrote it): it is left as it is.
    """
    from django.db import IntegrityError, transaction

    from .payload import to_jsonable

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


def _execute(sql: str, params: list[Any]) -> int:
    """Run one statement on the jobs database; return the rows it changed.

    The worker's two writes per job are plain SQL, built once: building them
    through the ORM cost more than running them. On PostgreSQL outside a
    transaction, the statement goes as :class:`_Sent` sends it (its parameters
    apart, a prepared statement where the database's ``OPTIONS`` allow them),
    and its answer is read at once.
    """
    from django.db import connections

    connection = _sending_connection(db_alias())
    if connection is not None:
        return _Sent(connection, (sql, params))._rows()
    with connections[db_alias()].cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.rowcount)


def _sql(template: str) -> str:
    from django.db import connections

    quote = connections[db_alias()].ops.quote_name
    return template.format(table=quote(JobRecord._meta.db_table), **{f: quote(f) for f in _COLUMNS})


_COLUMNS = ("id", "status", "started_at", "ended_at", "worker_name", "attempts", "result", "error")

_START = (
    "UPDATE {table} SET {status} = %s, {started_at} = %s, {ended_at} = NULL, {worker_name} = %s,"
    " {attempts} = {attempts} + 1 WHERE {id} = %s AND ({ended_at} IS NULL OR {ended_at} <= %s)"
)
_FINISH = "UPDATE {table} SET {status} = %s, {result} = %s, {ended_at} = %s, {error} = '' WHERE {id} = %s"


def _datetime(value: datetime) -> Any:
    from django.db import connections

    return connections[db_alias()].ops.adapt_datetimefield_value(value)


# The start, as a statement that is its own transaction on PostgreSQL: the one-row subquery sets
# synchronous_commit off for that transaction alone (set_config(..., true) is SET LOCAL), so its
# commit does not wait for the WAL flush. The WAL is flushed in order, so the job's end, an
# ordinary commit, cannot reach the disk without the start before it.
_START_ALONE = _START.replace(
    " WHERE ", " FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit WHERE ", 1
)


def start_statement(
    job_id: str, worker_name: str, at: datetime | None, *, alone: bool = False
) -> tuple[str, list[Any]]:
    """The start's ``UPDATE`` and its parameters.

    ``alone``: the statement is its own transaction (autocommit, not inside ``atomic()``, nor
    sent with another statement); on PostgreSQL it then commits asynchronously, unless
    ``DJANGO_JOBS["SYNCHRONOUS_START"]`` is set.
    """
    from django.db import connections

    now = _datetime(at or timezone.now())
    asynchronous = alone and connections[db_alias()].vendor == "postgresql" and not conf.synchronous_start
    sql = _sql(_START_ALONE if asynchronous else _START)
    return sql, [JobStatus.STARTED.value, now, worker_name, job_id, now]


def _alone() -> bool:
    """Whether a statement run now on the jobs database is a transaction of its own."""
    from django.db import connections

    connection = connections[db_alias()]
    return not connection.in_atomic_block and connection.get_autocommit()


def _finish_statement(job_id: str, result: Any, at: datetime | None) -> tuple[str, list[Any]]:
    from django.db import connections

    stored = JobRecord._meta.get_field("result").get_db_prep_save(result, connections[db_alias()])
    return _sql(_FINISH), [JobStatus.FINISHED.value, stored, _datetime(at or timezone.now()), job_id]


def mark_started_by_id(job_id: str, worker_name: str, at: datetime | None = None) -> bool:
    """Set ``started``, the start time and the worker, and count the attempt; False if no row.

    A start older than the row's last end is skipped: it is a late write of
    an attempt that already ended (written back after a database outage).
    """
    statement = start_statement(job_id, worker_name, at, alone=_alone())
    return _started_or_missing(job_id, statement, _execute(*statement))


def _started_or_missing(job_id: str, statement: tuple[str, list[Any]], changed: int) -> bool:
    """After the start ``statement`` changed ``changed`` rows: False if the job has no row."""
    if changed:
        return True
    if not JobRecord.objects.using(db_alias()).filter(pk=job_id).exists():
        return False
    # A late start changes nothing again; a row its enqueuing process wrote just now is started.
    _execute(*statement)
    return True


def mark_started(job: Job, worker_name: str, at: datetime | None = None) -> None:
    """The job is running; a job without a row (enqueued with plain RQ, or pushed ahead of its
    row) gets one now."""
    now = at or timezone.now()
    if not mark_started_by_id(job.id, worker_name, now):
        _start_without_row(job, worker_name, now)


#: Per psycopg connection, the names of this module's statements prepared in its session.
_prepared_on: weakref.WeakKeyDictionary[Any, set[bytes]] = weakref.WeakKeyDictionary()

#: PostgreSQL's SQLSTATE for a prepared statement that does not exist (anymore).
_NO_SUCH_PREPARED_STATEMENT = b"26000"
#: And for one of that name that exists already (prepared by an earlier life of this session).
_PREPARED_ALREADY = b"42P05"


def _sqlstate(result: Any) -> bytes | None:
    """The SQLSTATE of a failed libpq result (None for no result)."""
    from psycopg.pq import DiagnosticField

    return None if result is None else result.error_field(DiagnosticField.SQLSTATE)


@functools.cache
def _statement_name(numbered: bytes) -> bytes:
    """The name this module prepares ``numbered`` under: the same in every process and session."""
    return b"django_jobs_" + hashlib.sha1(numbered, usedforsecurity=False).hexdigest()[:24].encode()


class _Sent:
    """One statement sent to PostgreSQL outside a transaction, its answer not read yet.

    Once sent, the statement commits on its own (autocommit), even if this process dies before
    it reads the answer. Sent on the connection Django holds, its parameters apart as text
    where each has a plain text form, else merged into the statement as psycopg's
    ``ClientCursor`` merges them.

    With its parameters apart, and where the database's ``OPTIONS`` set a ``prepare_threshold``
    (Django leaves psycopg's prepared statements off otherwise, for the sake of connection
    poolers), the statement is a prepared one: prepared in the session the first time it is
    sent there, then only executed, so the server parses and plans it once, not at every job.
    """

    prepared: bytes | None = None

    def __init__(self, connection: Any, statement: tuple[str, list[Any]]) -> None:
        from psycopg import ClientCursor

        self.connection, self.statement = connection, statement
        with connection.wrap_database_errors:
            raw = connection.connection
            self.pgconn = raw.pgconn
            sql, params = statement
            self.text_params = _text_params(params) if raw.info.encoding == "utf-8" else None
            if self.text_params is None:
                self.pgconn.send_query(ClientCursor(raw).mogrify(sql, params).encode(raw.info.encoding))
            else:
                self.numbered = _numbered(sql)
                # Django turns psycopg's prepared statements off (prepare_threshold None) unless
                # the database's OPTIONS set a prepare_threshold: then this one is prepared too.
                self.prepared = None if raw.prepare_threshold is None else self._prepare(raw, self.numbered)
                self._send()
            self._flush()

    def _send(self) -> None:
        """Send the statement with its parameters apart (as text, typed by their columns)."""
        if self.prepared is not None:
            self.pgconn.send_query_prepared(self.prepared, self.text_params)
        else:
            self.pgconn.send_query_params(self.numbered, self.text_params)

    def _prepare(self, raw: Any, numbered: bytes) -> bytes | None:
        """The name of ``numbered`` prepared in this session, preparing it if need be; None if
        it cannot be (the statement is then sent as it is, and fails or not on its own)."""
        name = _statement_name(numbered)
        names = _prepared_on.setdefault(raw, set())
        if name in names:
            return name
        self.pgconn.send_prepare(name, numbered)
        self._flush()
        _, failed = self._results()
        if failed is not None and _sqlstate(failed) != _PREPARED_ALREADY:
            return None
        names.add(name)
        return name

    def _wait(self, events: int) -> None:
        poll = select.poll()
        poll.register(self.pgconn.socket, events)
        poll.poll()

    def _flush(self) -> None:
        # The connection is non-blocking (psycopg's way): send what libpq still holds.
        while self.pgconn.flush():
            self._wait(select.POLLOUT | select.POLLIN)
            self.pgconn.consume_input()

    def _results(self) -> tuple[int | None, Any]:
        """Every result up to the end of the answer (as psycopg reads them): the rows changed
        (None if no statement completed), and the first failure."""
        from psycopg.pq import ExecStatus

        written: int | None = None
        failed = None
        while True:
            while self.pgconn.is_busy():
                self._wait(select.POLLIN)
                self.pgconn.consume_input()
            result = self.pgconn.get_result()
            if result is None:
                return written, failed
            if result.status == ExecStatus.COMMAND_OK:
                written = int(result.command_tuples or 0)
            elif failed is None:
                failed = result

    def _rows(self) -> int:
        """Wait for the answer; return the rows the statement changed.

        Raises Django's ``DatabaseError`` (a subclass, as for any statement) if the statement
        failed: then nothing was written.
        """
        import psycopg
        from psycopg.errors import error_from_result

        with self.connection.wrap_database_errors:
            written, failed = self._results()
            gone = _sqlstate(failed) == _NO_SUCH_PREPARED_STATEMENT
            if written is None and self.prepared is not None and gone:
                # Deallocated since (DEALLOCATE ALL, DISCARD ALL): nothing ran; prepare it again.
                _prepared_on.pop(self.connection.connection, None)
                self.prepared = self._prepare(self.connection.connection, self.numbered)
                self._send()
                self._flush()
                written, failed = self._results()
            if written is None:
                if failed is None:
                    raise psycopg.InterfaceError(f"no answer to the {self.statement[0].split()[0]}")
                raise error_from_result(failed, encoding=self.connection.connection.info.encoding)
        return written


class _Together(_Sent):
    """Statements run as one transaction in one round trip, outside a transaction.

    They go in a libpq pipeline that ends in one Sync. PostgreSQL runs what comes before a Sync
    as one implicit transaction and commits it at the Sync: the statements commit together (one
    WAL flush), or none does. Each is a prepared statement where the database's ``OPTIONS``
    allow them (as :class:`_Sent`'s), so the server does not parse and plan them at every job,
    which it must for several statements in one plain query. Made by :func:`_run_together`.
    """

    def __init__(self, connection: Any, statements: list[tuple[bytes, list[bytes | None]]]) -> None:
        self.connection, self.parts = connection, statements
        self.statement = (statements[0][0].decode(), [])  # named in errors
        self.pgconn = connection.connection.pgconn
        self.names: list[bytes | None] = [None] * len(statements)

    def _prepare_all(self) -> None:
        raw = self.connection.connection
        if raw.prepare_threshold is not None:
            self.names = [self._prepare(raw, numbered) for numbered, _params in self.parts]

    def _send(self) -> None:
        self.pgconn.enter_pipeline_mode()
        for (numbered, params), name in zip(self.parts, self.names, strict=True):
            if name is not None:
                self.pgconn.send_query_prepared(name, params)
            else:
                self.pgconn.send_query_params(numbered, params)
        self.pgconn.pipeline_sync()
        self._flush()

    def _next(self) -> Any:
        while self.pgconn.is_busy():
            self._wait(select.POLLIN)
            self.pgconn.consume_input()
        return self.pgconn.get_result()

    def _answers(self) -> tuple[list[int | None], Any]:
        """Each statement's rows changed (None if it did not complete), and the first failure;
        the pipeline is left and the connection is as psycopg expects it afterwards."""
        import psycopg
        from psycopg.pq import ConnStatus, ExecStatus

        counts: list[int | None] = []
        failed = None
        for _part in self.parts:
            written: int | None = None
            while (result := self._next()) is not None:
                if result.status == ExecStatus.COMMAND_OK:
                    written = int(result.command_tuples or 0)
                elif result.status != ExecStatus.PIPELINE_ABORTED and failed is None:
                    failed = result  # the ones after it were not run (PIPELINE_ABORTED)
            counts.append(written)
        # Then the Sync's answer; before it, the failure of the commit itself, if it failed.
        nothing = 0
        while (result := self._next()) is None or result.status != ExecStatus.PIPELINE_SYNC:
            if result is None:
                nothing += 1
                if self.pgconn.status == ConnStatus.BAD or nothing > 2:
                    raise psycopg.OperationalError("the connection was lost before the commit's answer")
                continue
            nothing = 0
            if result.status == ExecStatus.FATAL_ERROR:
                failed = failed or result
                counts = [None] * len(counts)  # nothing was committed
        self.pgconn.exit_pipeline_mode()
        return counts, failed

    def run(self) -> list[int]:
        """Send the statements, wait for the answer; return the rows each changed.

        Raises Django's ``DatabaseError`` if one failed: then none was written.
        """
        from psycopg.errors import error_from_result

        with self.connection.wrap_database_errors:
            try:
                self._prepare_all()
                self._send()
                counts, failed = self._answers()
                if any(name is not None for name in self.names) and (
                    _sqlstate(failed) == _NO_SUCH_PREPARED_STATEMENT
                ):
                    # Deallocated since (DEALLOCATE ALL, DISCARD ALL): nothing ran; prepare again.
                    _prepared_on.pop(self.connection.connection, None)
                    self._prepare_all()
                    self._send()
                    counts, failed = self._answers()
            except BaseException:
                # Left in the middle of a pipeline, the connection is of no further use.
                with contextlib.suppress(Exception):
                    self.connection.close()
                raise
            if failed is not None:
                raise error_from_result(failed, encoding=self.connection.connection.info.encoding)
        return [written or 0 for written in counts]


def _run_together(connection: Any, statements: list[tuple[str, list[Any]]]) -> list[int] | None:
    """Run ``statements`` on ``connection`` (from :func:`_sending_connection`) as one transaction in
    one round trip (see :class:`_Together`); return the rows each changed, or None where that
    cannot be done: a parameter without a plain text form, or a libpq without pipeline mode
    (before 14). The caller then runs them another way.

    Raises Django's ``DatabaseError`` if one failed: then none was written.
    """
    raw = connection.connection
    if not _pipelines():
        return None
    parts = []
    for sql, params in statements:
        text = _text_params(params) if raw.info.encoding == "utf-8" else None
        if text is None:
            return None
        parts.append((_numbered(sql), text))
    return _Together(connection, parts).run()


@functools.cache
def _pipelines() -> bool:
    """Whether psycopg's libpq has pipeline mode (libpq 14 and later)."""
    from psycopg import Pipeline

    return bool(Pipeline.is_supported())


@functools.cache
def _numbered(sql: str) -> bytes:
    """``sql`` with PostgreSQL's numbered placeholders (this module's statements have no
    literal ``%``)."""
    parts = sql.split("%s")
    return (parts[0] + "".join(f"${index}{part}" for index, part in enumerate(parts[1:], 1))).encode()


def _text_params(params: list[Any]) -> list[bytes | None] | None:
    """The parameters in PostgreSQL's text form, or None if one of them has no plain one here
    (then the statement is sent with its parameters merged in, as psycopg's client cursor does)."""
    from psycopg.types.json import Jsonb

    values: list[bytes | None] = []
    for value in params:
        if value is None:
            values.append(None)
        elif isinstance(value, str):
            values.append(value.encode())
        elif isinstance(value, bool):
            values.append(b"t" if value else b"f")
        elif isinstance(value, int):
            values.append(str(value).encode())
        elif isinstance(value, datetime) and value.tzinfo is not None:
            values.append(value.isoformat().encode())
        elif type(value) is Jsonb and value.dumps is not None:
            dumped = value.dumps(value.obj)
            values.append(dumped.encode() if isinstance(dumped, str) else dumped)
        else:
            return None
    return values


class SentStart(_Sent):
    """A job's start, sent to PostgreSQL and not yet answered (see :func:`send_start`)."""

    def __init__(self, connection: Any, job: Job, worker_name: str, at: datetime) -> None:
        self.job, self.worker_name, self.at = job, worker_name, at
        # Sent only outside a transaction (see _sending_connection): a transaction of its own.
        super().__init__(connection, start_statement(job.id, worker_name, at, alone=True))

    def finish(self) -> None:
        """Wait for the answer and complete the start as :func:`mark_started` would.

        Raises Django's ``DatabaseError`` if the statement failed: then nothing was written.
        """
        if not _started_or_missing(self.job.id, self.statement, self._rows()):
            _start_without_row(self.job, self.worker_name, self.at)


class SentInsert(_Sent):
    """A new job's row, sent to PostgreSQL and not yet answered (see :func:`send_insert`)."""

    def __init__(self, connection: Any, values: dict[str, Any]) -> None:
        self.values = values
        super().__init__(connection, _insert_statement(connection, values))

    def finish(self) -> None:
        """Wait for the answer. Raises Django's ``DatabaseError`` if the row was not written
        (``IntegrityError`` if a worker that took the job wrote it first)."""
        self._rows()


def can_send(alias: str) -> bool:
    """Whether statements can be sent ahead on this database: PostgreSQL with psycopg 3."""
    from django.db import connections

    return connections[alias].vendor == "postgresql" and _psycopg3()


def _sending_connection(alias: str) -> Any:
    """The connection to send a statement ahead on, or None where that cannot be done: not
    PostgreSQL with psycopg 3, inside a transaction, or where Django would do more than run the
    statement (a query log, an execute wrapper). Connects if need be."""
    from django.db import connections

    connection = connections[alias]
    if (
        not can_send(alias)
        or connection.in_atomic_block
        or connection.queries_logged
        or connection.execute_wrappers
    ):
        return None
    try:
        return connection if connection.get_autocommit() else None
    except (DatabaseError, InterfaceError):
        return None  # the ordinary write then tries again, and fails or not as it would have


def _close_if_lost(connection: Any) -> None:
    """After a statement could not be sent (the connection was lost while idle, found by the
    first send of a session, which prepares): close it, so that the ordinary write that
    follows connects again instead of failing on it too (outside ``atomic()``, as here)."""
    with contextlib.suppress(DatabaseError, InterfaceError):
        connection.close_if_unusable_or_obsolete()


def send_start(job: Job, worker_name: str, at: datetime) -> SentStart | None:
    """Send the start of ``job`` to PostgreSQL without waiting for the answer; None where that
    cannot be done (then :func:`mark_started` writes it).

    The forking worker starts the job's process meanwhile, then reads the answer
    (:meth:`SentStart.finish`).
    """
    connection = _sending_connection(db_alias())
    if connection is None:
        return None
    try:
        return SentStart(connection, job, worker_name, at)
    except (DatabaseError, InterfaceError):
        _close_if_lost(connection)
        return None  # mark_started() then tries again, and the spool keeps it if it must


def send_insert(*, using: str, **fields: Any) -> SentInsert | None:
    """Send a new job's row (``fields`` as :func:`create` takes them) to PostgreSQL without
    waiting for the answer; None where that cannot be done (then :func:`create` writes it).

    ``.delay()`` pushes the job meanwhile, then reads the answer (:meth:`SentInsert.finish`).
    """
    connection = _sending_connection(using)
    if connection is None:
        return None
    try:
        return SentInsert(connection, row_values(**fields))
    except (DatabaseError, InterfaceError):
        _close_if_lost(connection)
        return None


def _start_without_row(job: Job, worker_name: str, at: datetime) -> None:
    created = _create_from_job(
        job, attempts=1, status=JobStatus.STARTED, started_at=at, ended_at=None, worker_name=worker_name
    )
    if not created:
        # Its enqueuing process wrote the row in between: start that one.
        mark_started_by_id(job.id, worker_name, at)


def mark_started_late(job_id: str, worker_name: str, at: datetime | None) -> None:
    """A start written back from the spool; a job without a row (pushed ahead of its row while
    the database was down) gets one now, from Redis while Redis still has the job, else with
    what the start knows (the late insert of its enqueuing process fills in the rest)."""
    from rq.exceptions import NoSuchJobError

    from .queues import get_queue

    now = at or timezone.now()
    if mark_started_by_id(job_id, worker_name, now):
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
    _execute(*_finish_statement(job_id, result, at))


def mark_finished_then_started(
    finished: tuple[str, Any, datetime], job: Job, worker_name: str, at: datetime
) -> None:
    """One job's end (``finished``: its id, result and end time) and the next job's start, together.

    On PostgreSQL the two ``UPDATE`` statements travel in one request and commit together: one
    round trip where two autocommit statements take two, and a transaction block three. Outside
    a transaction they go in one libpq pipeline (see :class:`_Together`), as prepared
    statements where the database's ``OPTIONS`` allow them; inside one, or where Django would do
    more than run them (a query log, an execute wrapper), as one two-statement query through
    Django's cursor (with Django's default client-side parameter binding). Elsewhere they share a
    transaction.
    """
    from django.db import connections, transaction

    finish, start = _finish_statement(*finished), start_statement(job.id, worker_name, at)
    sending = _sending_connection(db_alias())
    counts = None if sending is None else _run_together(sending, [finish, start])
    if counts is not None:
        if not counts[1]:
            mark_started(job, worker_name, at)  # no row (enqueued with plain RQ), or a late start
        return
    connection = connections[db_alias()]
    in_one_request = (
        connection.vendor == "postgresql"
        and not connection.settings_dict.get("OPTIONS", {}).get("server_side_binding")
        and not connection.in_atomic_block
    )
    if not in_one_request:
        with transaction.atomic(using=connection.alias):
            mark_finished(*finished)
            mark_started(job, worker_name, at)
        return
    (finish_sql, finish_params), (start_sql, start_params) = finish, start
    with connection.cursor() as cursor:
        cursor.execute(f"{finish_sql}; {start_sql}", [*finish_params, *start_params])
        cursor.nextset()
        started = cursor.rowcount
    if not started:
        mark_started(job, worker_name, at)  # no row (enqueued with plain RQ), or a late start


#: The exception RQ raises for a job whose payload in Redis cannot be read, and what the row says.
DAMAGED_PAYLOAD_ERROR = "rq.exceptions.DeserializationError"
PAYLOAD_DAMAGED = "The job's payload in Redis could not be read"


@dataclass
class Outcome:
    """What became of a failed attempt, and what is needed to push the job again."""

    status: str
    delay: float = 0.0
    row: dict[str, Any] | None = None

    @property
    def push_now(self) -> bool:
        return self.status == JobStatus.QUEUED and self.row is not None

    @property
    def retrying(self) -> bool:
        return self.status in (JobStatus.QUEUED, JobStatus.SCHEDULED) and self.row is not None


def mark_attempt_failed(
    job_id: str,
    error: str,
    *,
    error_types: list[str] | None = None,
    stopped: bool = False,
    at: datetime | None = None,
) -> Outcome:
    """Record a failed attempt and decide, from the row's retry policy, what comes next.

    ``error`` becomes the last error and joins the history. The row then ends
    ``failed`` (or ``stopped``), or waits for its retry: ``queued`` to be
    pushed at once, or ``scheduled`` with ``scheduled_for`` for the scheduler
    loop to push when due (the database holds the wait, not Redis).
    """
    from datetime import timedelta

    from . import retries

    now = at or timezone.now()
    using = db_alias()
    fields = ("attempts", "error_history", "options", "func_name", "queue", "args", "kwargs", "status")
    row = JobRecord.objects.using(using).filter(pk=job_id).values(*fields).first()
    if row is None:
        return Outcome(JobStatus.FAILED)
    attempts = row["attempts"]
    update: dict[str, Any] = {"ended_at": now}
    if row["status"] != JobStatus.STARTED:
        # It failed before it could start (e.g. its payload was unreadable): still an attempt.
        attempts = update["attempts"] = attempts + 1
    history = list(row["error_history"] or [])
    history.append({"attempt": attempts, "at": now.isoformat(), "error": error})
    options = row["options"] or {}
    update.update(error=error, error_history=history)
    outcome = Outcome(JobStatus.STOPPED if stopped else JobStatus.FAILED)
    damaged = error_types is not None and DAMAGED_PAYLOAD_ERROR in error_types
    if damaged and not any(PAYLOAD_DAMAGED in entry["error"] for entry in history[:-1]):
        # Redis holds a payload that cannot be read; the row holds a good one: push that, once.
        outcome = Outcome(JobStatus.QUEUED, 0.0, row)
    elif not stopped and retries.retries_left(options, attempts) and retries.retryable(options, error_types):
        delay = retries.retry_delay(options, attempts)
        if delay > 0:
            outcome = Outcome(JobStatus.SCHEDULED, delay, row)
            update["scheduled_for"] = now + timedelta(seconds=delay)
        else:
            outcome = Outcome(JobStatus.QUEUED, 0.0, row)
    # Only a row that is still running this attempt is changed (not one canceled meanwhile).
    changed = (
        JobRecord.objects.using(using)
        .filter(pk=job_id)
        .exclude(status__in=[JobStatus.CANCELED, JobStatus.FINISHED])
        .update(status=outcome.status, **update)
    )
    if not changed:
        return Outcome(JobStatus.CANCELED)
    return outcome


def mark_failed(job_id: str, error: str, status: str = JobStatus.FAILED) -> None:
    """The job ended without a result: ``failed`` (or ``stopped``), with the error text; no retry."""
    now = timezone.now()
    row = JobRecord.objects.using(db_alias()).filter(pk=job_id).values("attempts", "error_history").first()
    history = list(row["error_history"] or []) if row else []
    history.append({"attempt": row["attempts"] if row else 0, "at": now.isoformat(), "error": error})
    _update(job_id, status=status, error=error, error_history=history, ended_at=now)


def mark_requeued(job_ids: list[str]) -> int:
    """Make final jobs wait again, as a new attempt of the same rows (errors are kept).

    A unique job run again this way gives up its key: a newer job may hold it.
    """
    return (
        JobRecord.objects.using(db_alias())
        .filter(pk__in=job_ids)
        .update(
            status=JobStatus.QUEUED,
            result=None,
            started_at=None,
            ended_at=None,
            needs_push=False,
            unique_key=None,
        )
    )


def mark_canceled_many(job_ids: list[str]) -> int:
    return (
        JobRecord.objects.using(db_alias())
        .filter(pk__in=job_ids)
        .update(status=JobStatus.CANCELED, ended_at=timezone.now())
    )


def set_meta(job_id: str, meta: dict[str, Any]) -> None:
    """Replace the job's ``meta`` (progress and user data)."""
    _update(job_id, meta=meta)


def mark_canceled(job_id: str) -> None:
    _update(job_id, status=JobStatus.CANCELED, ended_at=timezone.now())


def mark_status(job_id: str, status: str) -> None:
    _update(job_id, status=status)


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
