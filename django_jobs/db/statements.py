"""The SQL of a job's row writes, built once per database, and the inserts of new rows.

A job costs three statements: the ``INSERT`` at enqueue, the start and the end
(two ``UPDATE`` statements by primary key). They are plain SQL with their
parameters prepared once per column: building them through the ORM cost more
than running them (see docs/performance.md).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import connections, router
from django.db.models import JSONField
from django.db.models.constants import OnConflict
from django.utils import timezone

from ..conf import conf
from ..models import JobRecord
from ..status import JobStatus, status_sql


def db_alias() -> str:
    """The database alias that job rows are written to (honours routers)."""
    return router.db_for_write(JobRecord) or "default"


def create(*, using: str, **fields: Any) -> None:
    """Insert the row of a job being enqueued (``fields`` as :func:`row_values` takes them): one
    plain INSERT (the ORM's cost more than it)."""
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(*insert_statement(connection, row_values(**fields)))


def insert_statement(connection: Any, values: dict[str, Any]) -> tuple[str, list[Any]]:
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
        quote = connections[alias].ops.quote_name
        fields = [(field, field.get_default()) for field in JobRecord._meta.concrete_fields]
        columns = ", ".join(quote(str(field.column)) for field, _default in fields)
        marks = ", ".join(["%s"] * len(fields))
        _INSERTS[alias] = (
            f"INSERT INTO {quote(JobRecord._meta.db_table)} ({columns}) VALUES ({marks})",
            fields,
        )
    return _INSERTS[alias]


#: Rows per INSERT when jobs are enqueued together (SQLite may need fewer: Django lowers it).
BULK_BATCH_SIZE = 1000


#: On PostgreSQL, more rows than this go as one-row INSERTs in a pipeline (``executemany()``);
#: fewer as one multi-row INSERT, the faster of the two for a few dozen rows.
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
        if connection.vendor == "postgresql" and len(rows) > PIPELINE_ABOVE and psycopg3():
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


def psycopg3() -> bool:
    """Whether PostgreSQL is reached through psycopg 3 (psycopg2's executemany() is a loop)."""
    # Optional dependency: psycopg (or psycopg2), installed with the "postgres" extra.
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    return bool(is_psycopg3)


_COLUMNS = ("id", "status", "started_at", "ended_at", "worker_name", "attempts", "result", "error")

# The start may overwrite any status but canceled (see status.TRANSITIONS["start"]); a late write
# of a start (kept while the database was away) must not undo the end of the attempt it belongs to.
_START = (
    "UPDATE {table} SET {status} = %s, {started_at} = %s, {ended_at} = NULL, {worker_name} = %s,"
    " {attempts} = {attempts} + 1 WHERE {id} = %s AND ({ended_at} IS NULL OR {ended_at} <= %s)"
    + status_sql("start", "{status}")
)
_FINISH = (
    "UPDATE {table} SET {status} = %s, {result} = %s, {ended_at} = %s, {error} = '' WHERE {id} = %s"
    + status_sql("finish", "{status}")
)

# The start, as a statement that is its own transaction on PostgreSQL: the one-row subquery sets
# synchronous_commit off for that transaction alone (set_config(..., true) is SET LOCAL), so its
# commit does not wait for the WAL flush. The WAL is flushed in order, so the job's end, an
# ordinary commit, cannot reach the disk without the start before it.
_START_ALONE = _START.replace(
    " WHERE ", " FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit WHERE ", 1
)


def _sql(template: str) -> str:
    quote = connections[db_alias()].ops.quote_name
    return template.format(table=quote(JobRecord._meta.db_table), **{f: quote(f) for f in _COLUMNS})


def _datetime(value: datetime) -> Any:
    return connections[db_alias()].ops.adapt_datetimefield_value(value)


def start_statement(
    job_id: str, worker_name: str, at: datetime | None, *, alone: bool = False
) -> tuple[str, list[Any]]:
    """The start's ``UPDATE`` and its parameters.

    ``alone``: the statement is its own transaction (autocommit, not inside ``atomic()``, nor
    sent with another statement); on PostgreSQL it then commits asynchronously, unless
    ``DJANGO_JOBS["SYNCHRONOUS_START"]`` is set.
    """
    now = _datetime(at or timezone.now())
    asynchronous = alone and connections[db_alias()].vendor == "postgresql" and not conf.synchronous_start
    sql = _sql(_START_ALONE if asynchronous else _START)
    return sql, [JobStatus.STARTED.value, now, worker_name, job_id, now]


def finish_statement(job_id: str, result: Any, at: datetime | None) -> tuple[str, list[Any]]:
    """The end's ``UPDATE`` (the job returned ``result``) and its parameters."""
    stored = JobRecord._meta.get_field("result").get_db_prep_save(result, connections[db_alias()])
    return _sql(_FINISH), [JobStatus.FINISHED.value, stored, _datetime(at or timezone.now()), job_id]


def alone() -> bool:
    """Whether a statement run now on the jobs database is a transaction of its own."""
    connection = connections[db_alias()]
    return not connection.in_atomic_block and connection.get_autocommit()
