"""The job's life in real workers: forking ``rqworker`` subprocesses and an in-process SimpleWorker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from django_jobs import JobFailed, JobWaitTimeout, actions, get_queue
from django_jobs.models import JobRecord, PendingRemoval
from django_jobs.push import push
from django_jobs.records import create
from django_jobs.spec import JobSpec
from django_jobs.testing import run_burst
from tests.ports import redis_away
from tests.processes import start_manage, stop, wait_for
from tests.testapp.jobs import (
    add,
    count_rows,
    echo,
    explode,
    fault_poison,
    flaky,
    note,
    pid,
    returns_object,
    sleep_for,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.slow
def test_forking_worker_records_start_and_finish(manage: Any) -> None:
    handle = add.delay(2, 3)
    result = manage("rqworker", "default", "--burst", "--name", "w-finish")
    assert result.returncode == 0, result.stderr
    record = JobRecord.objects.get(pk=handle.id)
    assert record.status == "finished"
    assert record.result == 5
    assert record.attempts == 1
    assert record.worker_name == "w-finish"
    assert record.enqueued_at <= record.started_at <= record.ended_at
    assert record.error == ""
    assert handle.status == "finished" and handle.result == 5


@pytest.mark.slow
def test_each_job_runs_in_a_forked_horse(manage: Any) -> None:
    first, second = pid.delay(), pid.delay()
    assert manage("rqworker", "--burst").returncode == 0
    pids = {JobRecord.objects.get(pk=first.id).result, JobRecord.objects.get(pk=second.id).result}
    assert len(pids) == 2  # one fresh process per job


@pytest.mark.slow
def test_failure_keeps_type_message_and_full_traceback(manage: Any) -> None:
    handle = explode.delay("card declined")
    assert manage("rqworker", "low", "--burst").returncode == 0
    record = JobRecord.objects.get(pk=handle.id)
    assert record.status == "failed"
    assert record.attempts == 1
    assert record.ended_at is not None
    assert record.result is None
    assert "Traceback (most recent call last)" in record.error
    assert 'tests/testapp/jobs.py", line' in record.error
    assert record.error.strip().endswith("ValueError: card declined")
    with pytest.raises(JobFailed, match="ValueError: card declined"):
        handle.wait(timeout=1)


@pytest.mark.slow
def test_queues_are_served_in_the_given_priority_order(manage: Any) -> None:
    low_first = add.delay(1, 1)  # default queue, enqueued first
    high_later = echo.delay("urgent")  # high queue, enqueued second
    assert manage("rqworker", "high", "default", "--burst").returncode == 0
    high = JobRecord.objects.get(pk=high_later.id)
    low = JobRecord.objects.get(pk=low_first.id)
    assert high.status == low.status == "finished"
    assert high.started_at < low.started_at


@pytest.mark.slow
def test_missing_function_fails_clearly_and_the_worker_goes_on(manage: Any) -> None:
    create(
        job_id="gone-function",
        func_name="tests.testapp.jobs.renamed_long_ago",
        queue="default",
        args=[1],
        kwargs={},
        status="queued",
        options={},
        using="default",
    )
    push(JobSpec("gone-function", "tests.testapp.jobs.renamed_long_ago", "default", [1], {}, {}, "default"))
    create(
        job_id="gone-module",
        func_name="tests.no_such_module.job",
        queue="default",
        args=[],
        kwargs={},
        status="queued",
        options={},
        using="default",
    )
    push(JobSpec("gone-module", "tests.no_such_module.job", "default", [], {}, {}, "default"))
    after = add.delay(1, 2)
    result = manage("rqworker", "default", "--burst")
    assert result.returncode == 0, result.stderr
    for job_id in ("gone-function", "gone-module"):
        record = JobRecord.objects.get(pk=job_id)
        assert record.status == "failed"
        # No @job function by that name in the worker: refused before any import is tried.
        assert "JobFunctionNotAllowed: The job function" in record.error
        assert "is not registered" in record.error and "renamed, moved or removed" in record.error
    assert JobRecord.objects.get(pk=after.id).status == "finished"


@pytest.mark.slow
@pytest.mark.parametrize("worker_class", ["fork", "simple", "batch"])
def test_error_text_no_database_stores_is_kept_escaped_and_the_worker_goes_on(
    manage: Any, tmp_path: Path, worker_class: str
) -> None:
    poison = fault_poison.delay(str(tmp_path / "runs.log"), "poison")  # raises "… bad\x00value \ud800"
    after = add.delay(1, 2)
    result = manage("rqworker", "default", "--burst", "--worker-class", worker_class)
    assert result.returncode == 0, result.stderr
    record = JobRecord.objects.get(pk=poison.id)
    assert record.status == "failed"
    assert record.error.strip().endswith("ValueError: poison bad\\x00value \\ud800")
    # RQ's copy, which RQ writes to Redis as UTF-8, is escaped the same way.
    assert get_queue("default").fetch_job(poison.id).latest_result().exc_string == record.error
    assert JobRecord.objects.get(pk=after.id).status == "finished"


@pytest.mark.slow
def test_non_json_result_fails_with_a_clear_error(manage: Any) -> None:
    handle = returns_object.delay()
    assert manage("rqworker", "--burst").returncode == 0
    record = JobRecord.objects.get(pk=handle.id)
    assert record.status == "failed"
    assert "returned a value that is not JSON serializable" in record.error


@pytest.mark.slow
def test_job_uses_the_database_inside_the_horse(manage: Any) -> None:
    add.delay(1, 1)
    handle = count_rows.delay()
    assert manage("rqworker", "--burst").returncode == 0
    assert JobRecord.objects.get(pk=handle.id).result == 2


@pytest.mark.slow
def test_retry_counts_attempts_and_ends_finished(manage: Any, tmp_path: Any) -> None:
    marker = str(tmp_path / "count")
    handle = flaky.delay(marker)
    result = manage("rqworker", "emails", "--burst")
    assert result.returncode == 0, result.stderr
    record = JobRecord.objects.get(pk=handle.id)
    assert record.status == "finished"
    assert record.attempts == 3
    assert record.result == "ok after 3"


@pytest.mark.slow
def test_retries_exhausted_ends_failed_with_the_last_error(manage: Any, tmp_path: Any) -> None:
    marker = tmp_path / "count"
    marker.write_text("-5")  # needs 8 calls to succeed; 1 try + 2 retries are not enough
    handle = flaky.delay(str(marker))
    assert manage("rqworker", "emails", "--burst").returncode == 0
    record = JobRecord.objects.get(pk=handle.id)
    assert record.status == "failed"
    assert record.attempts == 3
    assert "RuntimeError: attempt -2 fails" in record.error


@pytest.mark.slow
def test_stop_a_started_job() -> None:
    handle = sleep_for.delay(60)
    worker = start_manage("rqworker", "default", "--name", "w-stop")
    try:
        wait_for(lambda: handle.status == "started")
        assert handle.stop() is True
        wait_for(lambda: handle.status == "stopped")
        record = JobRecord.objects.get(pk=handle.id)
        assert record.ended_at is not None
        assert "stopped" in record.error.lower()
        after = add.delay(2, 2)  # the worker survives and goes on
        assert after.wait(timeout=60) == 4
    finally:
        stop(worker)


@pytest.mark.slow
def test_cancel_a_queued_job(manage: Any) -> None:
    handle = add.delay(1, 1)
    assert handle.cancel() is True
    assert handle.status == "canceled"
    assert manage("rqworker", "--burst").returncode == 0
    record = JobRecord.objects.get(pk=handle.id)
    assert record.status == "canceled"
    assert record.attempts == 0
    assert handle.cancel() is False  # already final


def test_cancel_with_redis_down_returns_and_the_job_never_runs(redis: Any) -> None:
    handle, kept = note.delay("runs", "canceled"), note.delay("runs", "kept")
    with redis_away():
        assert handle.cancel() is True
        assert handle.status == "canceled"
        assert handle.cancel() is False  # already final
    assert get_queue().get_job_ids() == [handle.id, kept.id]  # Redis is back, with the job
    assert run_burst(["default"])
    assert redis.lrange("runs", 0, -1) == [b"kept"]
    record = JobRecord.objects.get(pk=handle.id)
    assert (record.status, record.attempts, record.started_at) == ("canceled", 0, None)
    assert get_queue().get_job_ids() == [] and get_queue().started_job_registry.get_job_ids() == []
    assert get_queue().fetch_job(handle.id).get_status() == "canceled"


@pytest.mark.slow
def test_a_forking_worker_skips_jobs_canceled_or_deleted_while_redis_was_down(
    manage: Any, redis: Any
) -> None:
    canceled, kept = note.delay("runs", "canceled"), note.delay("runs", "kept")
    deleted = note.delay("runs", "deleted")
    plain = get_queue().enqueue("tests.testapp.jobs.note", "runs", "plain")  # no row of ours
    with redis_away():
        assert canceled.cancel() is True
        assert actions.delete(JobRecord.objects.filter(pk=deleted.id)).done == 1
    assert set(PendingRemoval.objects.values_list("pk", flat=True)) == {canceled.id, deleted.id}
    assert manage("rqworker", "--burst").returncode == 0
    assert redis.lrange("runs", 0, -1) == [b"kept", b"plain"]
    record = JobRecord.objects.get(pk=canceled.id)
    assert (record.status, record.attempts, record.started_at) == ("canceled", 0, None)
    assert not JobRecord.objects.filter(pk=deleted.id).exists()
    assert [JobRecord.objects.get(pk=job_id).status for job_id in (kept.id, plain.id)] == ["finished"] * 2
    queue = get_queue()
    assert queue.get_job_ids() == [] and queue.started_job_registry.get_job_ids() == []
    assert queue.fetch_job(canceled.id).get_status() == "canceled"
    assert queue.fetch_job(deleted.id) is None


@pytest.mark.slow
def test_wait_returns_the_result_from_a_running_worker() -> None:
    worker = start_manage("rqworker", "default", "high")
    try:
        assert add.delay(20, 22).wait(timeout=60) == 42
        assert echo.delay({"nested": [1, "two"]}).wait(timeout=60) == {"nested": [1, "two"]}
    finally:
        assert stop(worker)[0] == 0


def test_wait_times_out_without_a_worker() -> None:
    handle = add.delay(1, 1)
    with pytest.raises(JobWaitTimeout, match="rqworker") as info:
        handle.wait(timeout=0.2)
    assert isinstance(info.value, TimeoutError)
    assert info.value.status == "queued"


def test_simple_worker_in_process() -> None:
    ok, bad = add.delay(3, 4), explode.delay("nope")
    assert run_burst(["default", "low"]) is True
    assert ok.wait(timeout=1) == 7
    assert JobRecord.objects.get(pk=bad.id).status == "failed"
    assert JobRecord.objects.get(pk=ok.id).worker_name


def test_job_enqueued_with_plain_rq_still_gets_a_row() -> None:
    job = get_queue("default").enqueue("tests.testapp.jobs.add", 5, 6)
    run_burst(["default"])
    record = JobRecord.objects.get(pk=job.id)
    assert (record.status, record.result, record.args, record.func_name) == (
        "finished",
        11,
        [5, 6],
        "tests.testapp.jobs.add",
    )


@pytest.mark.slow
def test_dependent_job_runs_after_its_dependency(manage: Any) -> None:
    first = add.delay(1, 1)
    second = add.apply_async((2, 2), depends_on=first)
    assert second.status == "deferred"
    assert manage("rqworker", "--burst").returncode == 0
    a, b = JobRecord.objects.get(pk=first.id), JobRecord.objects.get(pk=second.id)
    assert a.status == b.status == "finished"
    assert a.ended_at <= b.started_at


def _kill_database_connections() -> None:
    """Terminate every server connection to the test database but this test's, as a restart would."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            [connection.settings_dict["NAME"]],
        )


@pytest.mark.slow
@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL to kill server connections")
@pytest.mark.parametrize("worker_class", ["fork", "simple"])
def test_database_restart_between_jobs_causes_no_error(worker_class: str) -> None:
    # Persistent connections in the worker: the hardest case, a connection kept across jobs.
    worker = start_manage(
        "rqworker", "default", "--worker-class", worker_class, env={"DJANGO_JOBS_TEST_CONN_MAX_AGE": "600"}
    )
    try:
        assert add.delay(1, 1).wait(timeout=60) == 2
        _kill_database_connections()
        second = add.delay(2, 2)
        assert second.wait(timeout=60) == 4
        assert JobRecord.objects.get(pk=second.id).attempts == 1
    finally:
        output = stop(worker)[1]
    assert "Could not record" not in output
    assert "Traceback" not in output


def test_async_false_queue_runs_the_job_at_enqueue(redis_url: str) -> None:
    from django.test.utils import override_settings

    with override_settings(
        RQ_QUEUES={"default": {"URL": redis_url, "ASYNC": False}, "low": {"URL": redis_url}}
    ):
        handle = add.delay(2, 2)
        assert handle.status == "finished"
        assert handle.result == 4
        assert JobRecord.objects.get(pk=handle.id).attempts == 1
        failing = explode.apply_async(("inline",), queue="default")
        record = JobRecord.objects.get(pk=failing.id)
        assert record.status == "failed"
        assert "ValueError: inline" in record.error
        assert get_queue("default").count == 0  # nothing left for a worker


@pytest.mark.django_db(transaction=False)
def test_async_false_inside_a_test_transaction(
    redis_url: str, django_capture_on_commit_callbacks: Any
) -> None:
    from django.test.utils import override_settings

    with override_settings(RQ_QUEUES={"default": {"URL": redis_url, "ASYNC": False}}):
        with django_capture_on_commit_callbacks(execute=True):
            handle = add.delay(5, 5)
        assert handle.result == 10
        assert JobRecord.objects.filter(pk=handle.id, status="finished").exists()


@pytest.mark.slow
def test_job_returning_rq_retry_is_run_again_then_fails(manage: Any) -> None:
    from tests.testapp.jobs import asks_for_retry

    handle = asks_for_retry.delay()
    assert manage("rqworker", "--burst").returncode == 0
    record = JobRecord.objects.get(pk=handle.id)
    assert (record.status, record.attempts) == ("failed", 2)
    assert "rq.Retry" in record.error and "No retries left" in record.error
