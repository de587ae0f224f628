"""``DJANGO_JOBS["PUSH"] = "redis-first"``: the push in the caller's thread, the row from another."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import override_settings
from django.utils import timezone

from django_jobs import get_queue
from django_jobs.models import JobRecord
from django_jobs.pusher import flush, row_writer
from tests.ports import closed_port
from tests.processes import run_manage, wait_for
from tests.testapp.jobs import add, echo, enqueue_echo, five_a_second, flaky, unique_add

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def redis_first(settings: Any) -> None:
    settings.DJANGO_JOBS = {"PUSH": "redis-first"}


@pytest.mark.slow
def test_the_job_is_in_redis_when_delay_returns_and_its_row_follows() -> None:
    handles = [add.delay(n, n) for n in range(50)]
    # Pushed by .delay() itself, before any row write was waited for.
    assert sorted(get_queue("default").get_job_ids()) == sorted(h.id for h in handles)
    assert flush()
    rows = JobRecord.objects.filter(pk__in=[h.id for h in handles])
    assert set(rows.values_list("status", "func_name", "needs_push")) == {
        ("queued", "tests.testapp.jobs.add", False)
    }
    assert rows.count() == 50
    assert JobRecord.objects.get(pk=handles[7].id).args == [7, 7]
    writers = [t for t in threading.enumerate() if t.name == "django-jobs-row-writer"]
    assert len(writers) == 1
    assert run_manage("rqworker", "--burst").returncode == 0
    assert [h.result for h in handles] == [2 * n for n in range(50)]


def test_a_handle_reads_the_row_without_a_flush() -> None:
    handle = add.delay(2, 3)
    assert handle.status == "queued"
    assert handle.cancel() is True
    assert get_queue("default").count == 0
    assert JobRecord.objects.get(pk=handle.id).status == "canceled"


def test_inside_atomic_the_row_joins_the_transaction_and_the_push_waits() -> None:
    with transaction.atomic():
        kept = add.delay(1, 1)
        assert JobRecord.objects.filter(pk=kept.id).exists()  # written in this transaction
        assert row_writer.idle()
        assert get_queue("default").count == 0  # not before the commit
    with pytest.raises(RuntimeError), transaction.atomic():
        add.delay(2, 2)
        raise RuntimeError("roll back")
    assert flush()
    assert get_queue("default").get_job_ids() == [kept.id]
    assert list(JobRecord.objects.values_list("pk", flat=True)) == [kept.id]


def test_jobs_that_need_their_row_first_are_enqueued_as_before() -> None:
    chosen = add.apply_async(args=(1, 1), job_id="chosen-id")
    with pytest.raises(IntegrityError):
        add.apply_async(args=(2, 2), job_id="chosen-id")  # the id is taken: nothing is pushed
    scheduled = add.apply_async(args=(1, 2), countdown=600)
    unique = unique_add.delay(5)
    limited = five_a_second.delay()
    assert row_writer.idle()
    assert JobRecord.objects.get(pk=scheduled.id).status == "scheduled"
    assert JobRecord.objects.get(pk=unique.id).unique_key
    assert JobRecord.objects.get(pk=limited.id).status == "queued"
    assert sorted(get_queue("default").get_job_ids()) == sorted([chosen.id, unique.id, limited.id])
    assert get_queue("default").fetch_job(chosen.id).args == [1, 1]


def test_redis_down_writes_the_row_at_once_marked_for_a_later_push(caplog: Any) -> None:
    with override_settings(RQ_QUEUES={"default": {"URL": f"redis://127.0.0.1:{closed_port()}/0"}}):
        handle = add.delay(4, 4)
    assert row_writer.idle()
    row = JobRecord.objects.get(pk=handle.id)
    assert (row.status, row.needs_push, row.args) == ("queued", True, [4, 4])
    assert "Its row is written now, queued with needs_push set" in caplog.text


@pytest.mark.slow
def test_a_worker_that_takes_the_job_first_writes_the_row_and_the_late_insert_keeps_it() -> None:
    # The row writer cannot take its batch while this thread holds its lock.
    with row_writer.lock:
        handle = add.delay(20, 22)
        assert not JobRecord.objects.filter(pk=handle.id).exists()
        result = run_manage("rqworker", "--burst")
        assert result.returncode == 0, result.stderr
        row = JobRecord.objects.get(pk=handle.id)
        assert (row.status, row.result, row.attempts, row.args) == ("finished", 42, 1, [20, 22])
        assert row.enqueued_at <= row.started_at  # the time of the push, kept by RQ
    assert flush()
    row = JobRecord.objects.get(pk=handle.id)
    assert (row.status, row.result, row.attempts) == ("finished", 42, 1)  # the late insert skipped


ENQUEUE_AND_DIE = """
import os, sys
from django_jobs.pusher import row_writer
from tests.testapp.jobs import flaky
with row_writer.lock:  # the process dies before its row writer can run
    handle = flaky.delay(sys.argv[-1])
    print(handle.id, flush=True)
    os._exit(0)
"""


@pytest.mark.slow
def test_a_process_that_dies_before_writing_its_rows_loses_no_job_nor_its_retries(tmp_path: Any) -> None:
    marker = tmp_path / "count"
    options = {"DJANGO_JOBS_TEST_OPTIONS": json.dumps({"PUSH": "redis-first"})}
    script = tmp_path / "enqueue_and_die.py"
    script.write_text(ENQUEUE_AND_DIE)
    died = run_manage(
        "shell",
        "-c",
        f"import sys; sys.argv.append({str(marker)!r}); exec(open({str(script)!r}).read())",
        env=options,
    )
    assert died.returncode == 0, died.stderr
    job_id = died.stdout.strip().splitlines()[-1]
    assert not JobRecord.objects.filter(pk=job_id).exists()
    assert get_queue("emails").get_job_ids() == [job_id]
    # flaky fails twice and has retry=2: the options travelled with the job.
    assert run_manage("rqworker", "emails", "--burst").returncode == 0
    row = JobRecord.objects.get(pk=job_id)
    assert (row.status, row.attempts, row.result) == ("finished", 3, "ok after 3")
    assert row.func_name == flaky.name
    assert row.options["retry_max"] == 2


def test_rows_the_database_refused_are_kept_and_written_once_it_answers(caplog: Any) -> None:
    table = connection.ops.quote_name(JobRecord._meta.db_table)
    away = connection.ops.quote_name(f"{JobRecord._meta.db_table}_away")
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} RENAME TO {away}")
    try:
        handle = add.delay(3, 4)
        wait_for(lambda: "kept in this process and written once the database answers" in caplog.text)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {away} RENAME TO {table}")
    assert flush(timeout=60)
    row = JobRecord.objects.get(pk=handle.id)
    assert (row.status, row.args) == ("queued", [3, 4])


def test_a_start_written_back_from_the_spool_makes_the_missing_row(redis: Any) -> None:
    from django_jobs import outcomes

    at = timezone.now().isoformat()
    with row_writer.lock:  # the rows are not written yet, as while the database was down
        kept = flaky.delay("/tmp/never-run")  # retry=2, on "emails"
        gone = add.delay(5, 6)
        redis.delete(f"rq:job:{gone.id}")  # and Redis no longer has this one
        for job_id in (kept.id, gone.id):
            outcomes.apply({"step": "started", "job_id": job_id, "worker_name": "w-late", "at": at})
        row = JobRecord.objects.get(pk=kept.id)  # made from the job in Redis, with its options
        assert (row.status, row.worker_name, row.attempts, row.args) == (
            "started",
            "w-late",
            1,
            ["/tmp/never-run"],
        )
        assert row.options["retry_max"] == 2
        row = JobRecord.objects.get(pk=gone.id)  # made from what the start knows
        assert (row.status, row.worker_name, row.attempts, row.func_name) == ("started", "w-late", 1, "")
    assert flush()
    # The late insert fills in what the enqueue knew, and keeps the run.
    row = JobRecord.objects.get(pk=gone.id)
    assert (row.status, row.attempts, row.func_name, row.args) == ("started", 1, add.name, [5, 6])
    assert JobRecord.objects.get(pk=kept.id).status == "started"


@pytest.mark.slow
def test_a_work_horse_writes_the_rows_of_the_jobs_it_enqueued_before_it_exits() -> None:
    options = {"DJANGO_JOBS_TEST_OPTIONS": json.dumps({"PUSH": "redis-first"})}
    parents = [enqueue_echo.delay(value) for value in range(3)]
    # The forking worker runs each job in a child that ends with os._exit(); "high" is not worked.
    result = run_manage("rqworker", "default", "--burst", env=options)
    assert result.returncode == 0, result.stderr
    children = [JobRecord.objects.get(pk=parent.id).result for parent in parents]
    rows = JobRecord.objects.filter(pk__in=children)
    assert sorted(rows.values_list("status", "func_name", "args")) == [
        ("queued", echo.name, [value]) for value in range(3)
    ]
