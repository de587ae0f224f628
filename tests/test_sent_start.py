"""The forking worker's start on PostgreSQL: sent before the job gets its process, answer read after."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import DatabaseError, connection, connections, transaction
from django.utils import timezone
from rq import Queue
from rq.job import Job

from django_jobs import records
from django_jobs.models import JobRecord
from django_jobs.queues import get_connection, resolve_serializer
from tests.processes import run_manage, wait_for
from tests.testapp.jobs import add

pytestmark = pytest.mark.django_db(transaction=True)

postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the start is sent ahead on PostgreSQL only"
)


def rq_job(job_id: str) -> Job:
    return Job.fetch(job_id, connection=get_connection("default"), serializer=resolve_serializer())


def other_session(autocommit: bool = True) -> Any:
    """Another database session (a fresh psycopg connection, not this test's)."""
    import psycopg

    settings = connection.settings_dict
    return psycopg.connect(
        dbname=settings["NAME"],
        user=settings["USER"],
        password=settings["PASSWORD"] or None,
        host=settings["HOST"],
        port=settings["PORT"] or None,
        autocommit=autocommit,
    )


@contextmanager
def row_locked(job_id: str) -> Iterator[None]:
    """The job's row locked by another session until the block ends."""
    with other_session(autocommit=False) as locker:
        locker.execute(f"SELECT id FROM {JobRecord._meta.db_table} WHERE id = %s FOR UPDATE", [job_id])
        yield
        locker.rollback()


def row_seen_elsewhere(job_id: str) -> tuple[str, int, str]:
    """The row as another database session sees it."""
    with other_session() as other, other.cursor() as cursor:
        cursor.execute(
            f"SELECT status, attempts, worker_name FROM {JobRecord._meta.db_table} WHERE id = %s", [job_id]
        )
        found = cursor.fetchone()
    assert found is not None
    return found[0], found[1], found[2]


@postgresql_only
def test_the_sent_start_commits_even_if_its_answer_is_never_read() -> None:
    handle = add.delay(1, 2)
    sent = records.send_start(rq_job(handle.id), "w-sent", timezone.now())
    assert sent is not None
    # As if the worker died right after sending: its connection closes, nothing is read.
    connection.close()
    assert wait_for(lambda: row_seen_elsewhere(handle.id) == ("started", 1, "w-sent"), timeout=30)


@pytest.mark.slow
@postgresql_only
def test_the_sent_start_commits_when_the_sending_process_is_killed() -> None:
    handle = add.delay(1, 2)
    code = (
        "import os, signal\n"
        "from django.utils import timezone\n"
        "from rq.job import Job\n"
        "from django_jobs import records\n"
        "from django_jobs.queues import get_connection, resolve_serializer\n"
        f"job = Job.fetch({handle.id!r}, connection=get_connection('default'),\n"
        "                serializer=resolve_serializer())\n"
        "assert records.send_start(job, 'w-killed', timezone.now()) is not None\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = run_manage("shell", "-c", code)
    assert result.returncode == -9, result.stderr  # killed, the answer never read
    assert wait_for(lambda: row_seen_elsewhere(handle.id) == ("started", 1, "w-killed"), timeout=30)


@postgresql_only
def test_sending_the_start_does_not_wait_for_the_statement() -> None:
    handle = add.delay(1, 2)
    job = rq_job(handle.id)
    table = JobRecord._meta.db_table
    with row_locked(handle.id):
        sent: list[Any] = []
        sender = threading.Thread(target=lambda: sent.append(records.send_start(job, "w", timezone.now())))
        sender.start()
        sender.join(60)  # a bound, not a speed: with the row locked, a blocking send never returns
        assert not sender.is_alive() and sent[0] is not None
        with other_session() as watcher:
            waiting = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
                [f"UPDATE {connection.ops.quote_name(table)}%"],
            ).fetchone()
        assert waiting == (1,)  # the UPDATE is at the server, waiting for the lock
    sender = threading.Thread(target=sent[0].finish)
    sender.start()
    sender.join(60)
    assert JobRecord.objects.get(pk=handle.id).attempts == 1


@postgresql_only
def test_a_connection_lost_before_the_answer_is_marked_broken_and_the_start_written_again() -> None:
    from django_jobs.db.connections import reset_database_connections

    handle = add.delay(1, 2)
    job = rq_job(handle.id)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    with row_locked(handle.id):
        sent = records.send_start(job, "w", timezone.now())
        assert sent is not None
        with other_session() as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [backend])
        with pytest.raises(DatabaseError):
            sent.finish()
    assert connection.errors_occurred  # so the worker's reset replaces the connection
    reset_database_connections()
    records.mark_started(job, "w")  # what the worker falls back to
    row = JobRecord.objects.get(pk=handle.id)
    assert (row.status, row.attempts) == ("started", 1)


@postgresql_only
def test_the_answer_completes_the_start() -> None:
    handle = add.delay(1, 2)
    sent = records.send_start(rq_job(handle.id), "w-sent", timezone.now())
    assert sent is not None
    sent.finish()
    row = JobRecord.objects.get(pk=handle.id)
    assert (row.status, row.attempts, row.worker_name) == ("started", 1, "w-sent")
    assert row.started_at is not None
    # The connection is free again for Django's own statements.
    assert JobRecord.objects.filter(status="started").count() == 1


@postgresql_only
def test_a_job_without_a_row_gets_one_when_the_answer_is_read() -> None:
    queue = Queue("default", connection=get_connection("default"), serializer=resolve_serializer())
    plain = queue.enqueue("tests.testapp.jobs.add", 2, 3)
    sent = records.send_start(rq_job(plain.id), "w-sent", timezone.now())
    assert sent is not None
    sent.finish()
    row = JobRecord.objects.get(pk=plain.id)
    assert (row.status, row.attempts, row.worker_name, row.args) == ("started", 1, "w-sent", [2, 3])


@postgresql_only
def test_a_refused_start_raises_when_its_answer_is_read_and_writes_nothing() -> None:
    handle = add.delay(1, 2)
    job = rq_job(handle.id)
    table = connection.ops.quote_name(JobRecord._meta.db_table)
    away = connection.ops.quote_name(f"{JobRecord._meta.db_table}_away")
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} RENAME TO {away}")
    try:
        sent = records.send_start(job, "w-sent", timezone.now())
        assert sent is not None
        with pytest.raises(DatabaseError, match="does not exist"):
            sent.finish()
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {away} RENAME TO {table}")
    row = JobRecord.objects.get(pk=handle.id)
    assert (row.status, row.attempts) == ("queued", 0)
    # And the ordinary write, which the worker falls back to, still works on that connection.
    records.mark_started(job, "w-sent")
    assert JobRecord.objects.get(pk=handle.id).attempts == 1


def test_the_start_is_written_the_ordinary_way_where_it_cannot_be_sent() -> None:
    handle = add.delay(1, 2)
    job = rq_job(handle.id)
    with transaction.atomic():
        assert records.send_start(job, "w", timezone.now()) is None  # inside a transaction
    with connections["default"].execute_wrapper(lambda execute, *args: execute(*args)):
        assert records.send_start(job, "w", timezone.now()) is None  # an execute wrapper would miss it
    connection.force_debug_cursor = True
    try:
        assert records.send_start(job, "w", timezone.now()) is None  # the query log would miss it
    finally:
        connection.force_debug_cursor = False
    if connection.vendor != "postgresql":
        assert records.send_start(job, "w", timezone.now()) is None
    assert JobRecord.objects.get(pk=handle.id).attempts == 0
