"""On PostgreSQL, the worker's write of a job's start, a transaction of its own, commits without
waiting for its WAL flush; every other write, and a start inside a transaction, waits as before."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone
from rq.job import Job

from django_jobs import records
from django_jobs.models import JobRecord
from django_jobs.queues import get_connection, resolve_serializer
from tests.testapp.jobs import add

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="synchronous_commit is PostgreSQL's"),
]


def synchronous_commit() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return str(cursor.fetchone()[0])


@contextmanager
def statements() -> Iterator[list[str]]:
    """The SQL this test's connection runs through Django's cursor while the block runs."""
    seen: list[str] = []

    def record(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        yield seen


def asynchronous(sql: str) -> bool:
    return "set_config('synchronous_commit', 'off', true)" in sql


def rq_job(job_id: str) -> Job:
    return Job.fetch(job_id, connection=get_connection("default"), serializer=resolve_serializer())


def test_a_start_of_its_own_commits_asynchronously_and_leaves_the_session_as_it_was() -> None:
    handle = add.delay(1, 2)
    assert synchronous_commit() == "on"
    with statements() as seen:
        assert records.mark_started_by_id(handle.id, "w-async")
    starts = [sql for sql in seen if sql.startswith("UPDATE")]
    assert len(starts) == 1 and asynchronous(starts[0])
    # set_config(..., true) is SET LOCAL: it ended with the statement's own transaction.
    assert synchronous_commit() == "on"
    row = JobRecord.objects.get(pk=handle.id)
    assert (row.status, row.attempts, row.worker_name) == ("started", 1, "w-async")


def test_the_asynchronous_start_turns_synchronous_commit_off_for_its_transaction_only() -> None:
    handle = add.delay(1, 2)
    sql, params = records.start_statement(handle.id, "w", timezone.now(), alone=True)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            assert cursor.rowcount == 1
        assert synchronous_commit() == "off"  # what the statement's own commit then runs with
    assert synchronous_commit() == "on"
    assert JobRecord.objects.get(pk=handle.id).status == "started"


def test_a_start_inside_a_transaction_keeps_that_transaction_synchronous() -> None:
    handle = add.delay(1, 2)
    with transaction.atomic(), statements() as seen:
        assert records.mark_started_by_id(handle.id, "w-inside")
        assert synchronous_commit() == "on"
    assert seen and not any(asynchronous(sql) for sql in seen)
    assert JobRecord.objects.get(pk=handle.id).worker_name == "w-inside"


def test_the_batch_workers_end_and_start_share_an_ordinary_commit() -> None:
    first, second = add.delay(1, 2), add.delay(3, 4)
    records.mark_started_by_id(first.id, "w-batch")
    with statements() as seen:
        records.mark_finished_then_started(
            (first.id, 3, timezone.now()), rq_job(second.id), "w-batch", timezone.now()
        )
    # The end and the next start travel in one request, one transaction: the end keeps its flush.
    assert seen and not any(asynchronous(sql) for sql in seen)
    assert synchronous_commit() == "on"
    assert JobRecord.objects.get(pk=first.id).status == "finished"
    assert JobRecord.objects.get(pk=second.id).status == "started"


def test_synchronous_start_setting_makes_the_start_wait_for_its_flush(settings: Any) -> None:
    settings.DJANGO_JOBS = {"SYNCHRONOUS_START": True}
    handle = add.delay(1, 2)
    with statements() as seen:
        assert records.mark_started_by_id(handle.id, "w-sync")
    assert seen and not any(asynchronous(sql) for sql in seen)
    assert JobRecord.objects.get(pk=handle.id).status == "started"


def test_the_forking_workers_sent_start_commits_asynchronously() -> None:
    handle = add.delay(1, 2)
    sent = records.send_start(rq_job(handle.id), "w-sent", timezone.now())
    assert sent is not None
    assert asynchronous(sent.statement[0])
    sent.finish()
    assert synchronous_commit() == "on"
    row = JobRecord.objects.get(pk=handle.id)
    assert (row.status, row.attempts, row.worker_name) == ("started", 1, "w-sent")


def test_a_start_alone_that_finds_no_row_writes_the_row_from_the_job() -> None:
    # A job pushed by plain RQ (no row): the start finds nothing and the row is created instead.
    from rq import Queue

    job = Queue("default", connection=get_connection("default"), serializer=resolve_serializer()).enqueue(
        "tests.testapp.jobs.add", 5, 6
    )
    assert not JobRecord.objects.filter(pk=job.id).exists()
    records.mark_started(job, "w-norow")
    row = JobRecord.objects.get(pk=job.id)
    assert (row.status, row.worker_name) == ("started", "w-norow")
    assert synchronous_commit() == "on"
