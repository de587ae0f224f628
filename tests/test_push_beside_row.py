"""The default ``.delay()`` where the row cannot be sent ahead (SQLite): the push sent to Redis,
the row written while Redis runs it, Redis's answer read last.

On PostgreSQL the row is sent ahead instead (``tests/test_sent_insert.py``); there an execute
wrapper, which Django runs around each statement, makes ``.delay()`` write its row this way, so
these tests run on both databases.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import DatabaseError, connection, connections
from django.test.utils import override_settings

from django_jobs import get_queue, records
from django_jobs.models import JobRecord
from django_jobs.pusher import flush
from django_jobs.testing import RedisServer
from tests.testapp.jobs import add

pytestmark = pytest.mark.django_db(transaction=True)

TABLE = JobRecord._meta.db_table


def carries_row_options(job_id: str) -> bool:
    job = get_queue("default").fetch_job(job_id)
    assert job is not None
    return records.ROW_OPTIONS_META in job.meta


def committed_row(job_id: str) -> tuple[str, list[Any], bool] | None:
    """The row as a connection of another thread sees it: only what is committed."""
    found: list[Any] = []

    def read() -> None:
        try:
            found.extend(JobRecord.objects.filter(pk=job_id).values_list("status", "args", "needs_push"))
        finally:
            connections.close_all()

    thread = threading.Thread(target=read)
    thread.start()
    thread.join(60)
    return found[0] if found else None


@contextlib.contextmanager
def on_row_insert(action: Callable[[], None] | None = None) -> Iterator[list[str]]:
    """Run ``action`` when a job's row is about to be inserted, on the caller's connection (an
    execute wrapper, which also keeps PostgreSQL from sending the row ahead); yields the
    statements seen."""
    seen: list[str] = []

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if sql.startswith(f"INSERT INTO {connection.ops.quote_name(TABLE)}") and not seen:
            seen.append(sql)
            if action is not None:
                action()
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):
        yield seen


def _rename(old: str, new: str) -> None:
    with connection.cursor() as cursor:
        quote = connection.ops.quote_name
        cursor.execute(f"ALTER TABLE {quote(old)} RENAME TO {quote(new)}")


@contextlib.contextmanager
def table_renamed_away() -> Iterator[None]:
    """The jobs table missing, as in a project whose migrations were not run."""
    _rename(TABLE, f"{TABLE}_away")
    try:
        yield
    finally:
        _rename(f"{TABLE}_away", TABLE)


def test_delay_returns_with_the_row_committed_and_the_job_in_redis() -> None:
    with on_row_insert() as inserts:
        handle = add.delay(1, 2)
    assert inserts  # the row was written by this call, on this connection
    assert committed_row(handle.id) == ("queued", [1, 2], False)
    assert get_queue("default").get_job_ids() == [handle.id]
    assert carries_row_options(handle.id)  # pushed ahead of its row


def test_the_push_is_sent_before_the_row_is_written() -> None:
    queue = get_queue("default")
    in_redis_at_insert: list[list[str]] = []

    def look() -> None:
        # Redis runs the push while the caller writes the row: wait for it here (the push was
        # sent before this INSERT; with the row written first it would never come).
        deadline = time.monotonic() + 30
        while not queue.get_job_ids() and time.monotonic() < deadline:
            time.sleep(0.005)
        in_redis_at_insert.append(queue.get_job_ids())

    with on_row_insert(look):
        handle = add.delay(3, 4)
    assert in_redis_at_insert == [[handle.id]]
    assert committed_row(handle.id) == ("queued", [3, 4], False)


def test_a_row_a_worker_wrote_first_keeps_its_run_and_gets_the_enqueue_side() -> None:
    queue = get_queue("default")

    def a_worker_takes_the_job() -> None:
        # As a worker does when it takes a job whose row is not there yet.
        [job_id] = queue.get_job_ids()
        queue.remove(job_id)
        job = queue.fetch_job(job_id)
        assert job is not None
        records.mark_started(job, "w-first")

    with on_row_insert(a_worker_takes_the_job):
        handle = add.apply_async(args=(7, 8), timeout=45)
    assert flush(timeout=60)  # the row writer merges the enqueue side into the worker's row
    row = JobRecord.objects.get(pk=handle.id)
    assert (row.status, row.attempts, row.worker_name) == ("started", 1, "w-first")
    assert (row.func_name, row.args, row.options["timeout"]) == (add.name, [7, 8], 45)


def test_redis_lost_after_the_send_marks_the_row_for_a_later_push(caplog: Any) -> None:
    server = RedisServer().start()
    try:
        with override_settings(RQ_QUEUES={"default": {"URL": server.url}}):
            add.delay(0, 0)  # the connection exists before the server stops answering
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGSTOP)  # the push is sent, not run

            def redis_dies() -> None:
                assert server.process is not None
                os.kill(server.process.pid, signal.SIGKILL)
                server.process.wait(60)

            with on_row_insert(redis_dies):
                handle = add.delay(5, 6)
    finally:
        server.stop()
    assert committed_row(handle.id) == ("queued", [5, 6], True)  # pushed again once Redis is back
    assert "Its row is written now, queued with needs_push set" in caplog.text


def test_a_row_that_cannot_be_written_takes_its_job_back_and_raises() -> None:
    with on_row_insert(), table_renamed_away(), pytest.raises(DatabaseError, match=TABLE):
        add.delay(1, 1)
    queue = get_queue("default")
    assert queue.get_job_ids() == []
    assert not [key for key in queue.connection.keys("rq:job:*")]  # its hash went too
    assert not JobRecord.objects.exists()


def test_a_row_that_cannot_be_written_after_a_worker_took_the_job_follows(caplog: Any) -> None:
    queue = get_queue("default")
    taken: list[str] = []

    def taken_then_table_gone() -> None:
        taken.append(queue.connection.lpop(queue.key).decode())  # a worker has the job
        _rename(TABLE, f"{TABLE}_away")

    try:
        with on_row_insert(taken_then_table_gone):
            handle = add.delay(2, 2)  # does not raise: the job is running somewhere
    finally:
        _rename(f"{TABLE}_away", TABLE)
    assert taken == [handle.id]
    assert "The job is in Redis; its row is kept in this process" in caplog.text
    assert flush(timeout=60)
    row = JobRecord.objects.get(pk=handle.id)
    assert (row.status, row.args) == ("queued", [2, 2])
