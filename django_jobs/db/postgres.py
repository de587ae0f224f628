"""The PostgreSQL wire path: statements sent ahead, prepared, or paired in one pipeline.

On PostgreSQL with psycopg 3, outside a transaction, a row write can be sent on
the connection Django holds without waiting for its answer (:class:`Sent`): the
enqueue pushes the job meanwhile, the forking worker starts the job's process.
Where the database's ``OPTIONS`` set a ``prepare_threshold``, the statements are
prepared once per session. The batch worker's end of one job and start of the
next go as one libpq pipeline that commits once (:func:`run_together`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import select
import weakref
from datetime import datetime
from typing import Any

from django.db import DatabaseError, InterfaceError, connections

from .statements import db_alias, insert_statement, psycopg3, row_values

# psycopg is imported inside the functions that use it: it is an optional dependency (the
# "postgres" extra), and nothing here runs unless the jobs database is PostgreSQL with psycopg 3.


def execute(sql: str, params: list[Any]) -> int:
    """Run one statement on the jobs database; return the rows it changed.

    The worker's two writes per job are plain SQL, built once: building them
    through the ORM cost more than running them. On PostgreSQL outside a
    transaction, the statement goes as :class:`Sent` sends it (its parameters
    apart, a prepared statement where the database's ``OPTIONS`` allow them),
    and its answer is read at once.
    """
    connection = sending_connection(db_alias())
    if connection is not None:
        return Sent(connection, (sql, params))._rows()
    with connections[db_alias()].cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.rowcount)


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


class Sent:
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


class _Together(Sent):
    """Statements run as one transaction in one round trip, outside a transaction.

    They go in a libpq pipeline that ends in one Sync. PostgreSQL runs what comes before a Sync
    as one implicit transaction and commits it at the Sync: the statements commit together (one
    WAL flush), or none does. Each is a prepared statement where the database's ``OPTIONS``
    allow them (as :class:`Sent`'s), so the server does not parse and plan them at every job,
    which it must for several statements in one plain query. Made by :func:`run_together`.
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


def run_together(connection: Any, statements: list[tuple[str, list[Any]]]) -> list[int] | None:
    """Run ``statements`` on ``connection`` (from :func:`sending_connection`) as one transaction in
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


class SentInsert(Sent):
    """A new job's row, sent to PostgreSQL and not yet answered (see :func:`send_insert`)."""

    def __init__(self, connection: Any, values: dict[str, Any]) -> None:
        self.values = values
        super().__init__(connection, insert_statement(connection, values))

    def finish(self) -> None:
        """Wait for the answer. Raises Django's ``DatabaseError`` if the row was not written
        (``IntegrityError`` if a worker that took the job wrote it first)."""
        self._rows()


def can_send(alias: str) -> bool:
    """Whether statements can be sent ahead on this database: PostgreSQL with psycopg 3."""
    return connections[alias].vendor == "postgresql" and psycopg3()


def sending_connection(alias: str) -> Any:
    """The connection to send a statement ahead on, or None where that cannot be done: not
    PostgreSQL with psycopg 3, inside a transaction, or where Django would do more than run the
    statement (a query log, an execute wrapper). Connects if need be."""
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


def close_if_lost(connection: Any) -> None:
    """After a statement could not be sent (the connection was lost while idle, found by the
    first send of a session, which prepares): close it, so that the ordinary write that
    follows connects again instead of failing on it too (outside ``atomic()``, as here)."""
    with contextlib.suppress(DatabaseError, InterfaceError):
        connection.close_if_unusable_or_obsolete()


def send_insert(*, using: str, **fields: Any) -> SentInsert | None:
    """Send a new job's row (``fields`` as :func:`create` takes them) to PostgreSQL without
    waiting for the answer; None where that cannot be done (then :func:`create` writes it).

    ``.delay()`` pushes the job meanwhile, then reads the answer (:meth:`SentInsert.finish`).
    """
    connection = sending_connection(using)
    if connection is None:
        return None
    try:
        return SentInsert(connection, row_values(**fields))
    except (DatabaseError, InterfaceError):
        close_if_lost(connection)
        return None
