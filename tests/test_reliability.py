"""Retries held by the database, timeouts, and jobs that break in odd ways, in real workers."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rq import Retry

from django_jobs import get_queue, job
from django_jobs.models import JobRecord
from django_jobs.push import push
from django_jobs.records import create
from django_jobs.retries import retry_delay, retry_policy
from django_jobs.spec import JobSpec
from tests.testapp.jobs import (
    add,
    calls_os_exit,
    calls_sys_exit,
    echo,
    fails_once_then_waits,
    overruns,
    picky,
)

pytestmark = pytest.mark.django_db(transaction=True)


def _undecorated() -> None: ...


# --- retry policies ------------------------------------------------------------------------------


def test_exponential_backoff_doubles_up_to_its_cap() -> None:
    policy = retry_policy("f()", 10, backoff=2, backoff_max=30, jitter=False)
    assert [retry_delay(policy, n) for n in range(1, 7)] == [2, 4, 8, 16, 30, 30]


def test_jitter_spreads_each_wait_below_its_backoff() -> None:
    policy = retry_policy("f()", 5, backoff=True, backoff_max=600)
    rng = random.Random(7)
    for number in range(1, 6):
        waits = [retry_delay(policy, number, rng) for _ in range(200)]
        assert all(0 <= wait <= 2 ** (number - 1) for wait in waits)
        assert len({round(wait, 6) for wait in waits}) > 100  # spread, not one value


def test_rq_retry_intervals_repeat_their_last_value() -> None:
    policy = retry_policy("f()", Retry(max=4, interval=[5, 60]))
    assert [retry_delay(policy, n) for n in range(1, 5)] == [5, 60, 60, 60]
    assert retry_delay(retry_policy("f()", 2), 1) == 0  # no waits: at once


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retry_backoff": True}, "need retries"),
        ({"retry_on": ValueError}, "need retries"),
        ({"retry": 2, "retry_on": [ValueError, "KeyError"]}, "exception classes"),
        ({"retry": 2, "retry_backoff": -1}, "retry_backoff"),
        ({"retry": 2, "retry_backoff": True, "retry_backoff_max": 0}, "retry_backoff_max"),
        ({"retry": Retry(max=2, interval=[5]), "retry_backoff": True}, "not both"),
        ({"retry": "3"}, "retry"),
    ],
)
def test_bad_retry_options_are_clear_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        job(**options)(_undecorated)


def test_the_policy_travels_with_the_row() -> None:
    handle = picky.delay("/nonexistent", "value")
    options = JobRecord.objects.get(pk=handle.id).options
    assert options["retry_max"] == 3
    assert options["retry_on"] == ["builtins.ConnectionError"]


# --- retries in a worker -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_retry_wait_is_held_by_the_database_not_by_rq(manage: Any, tmp_path: Any) -> None:
    marker = str(tmp_path / "calls")
    handle = fails_once_then_waits.delay(marker)
    before = timezone.now()
    assert manage("rqworker", "--burst").returncode == 0

    record = JobRecord.objects.get(pk=handle.id)
    assert record.status == "scheduled" and record.attempts == 1
    assert before + timedelta(seconds=25) < record.scheduled_for < timezone.now() + timedelta(seconds=35)
    assert "first call fails" in record.error_history[0]["error"]
    queue = get_queue("default")
    # Nothing of it is left in RQ's registries: no RQ scheduler is needed.
    assert handle.id not in queue.scheduled_job_registry.get_job_ids()
    assert handle.id not in queue.failed_job_registry.get_job_ids()
    assert handle.id not in queue.get_job_ids()

    # Not due yet: the scheduler leaves it; once due, it is queued and runs.
    assert manage("rqscheduler", "--burst").returncode == 0
    assert JobRecord.objects.get(pk=handle.id).status == "scheduled"
    JobRecord.objects.filter(pk=handle.id).update(scheduled_for=timezone.now() - timedelta(seconds=1))
    assert manage("rqscheduler", "--burst").returncode == 0
    assert manage("rqworker", "--burst").returncode == 0
    record = JobRecord.objects.get(pk=handle.id)
    assert (record.status, record.attempts, record.result) == ("finished", 2, "second call")


@pytest.mark.slow
def test_retry_on_retries_only_the_named_errors(manage: Any, tmp_path: Any) -> None:
    retried = picky.delay(str(tmp_path / "a"), "connection")
    not_retried = picky.delay(str(tmp_path / "b"), "value")
    assert manage("rqworker", "--burst").returncode == 0

    record = JobRecord.objects.get(pk=retried.id)
    assert (record.status, record.attempts) == ("failed", 4)
    assert [entry["attempt"] for entry in record.error_history] == [1, 2, 3, 4]
    assert all("ConnectionError: network down" in entry["error"] for entry in record.error_history)
    assert (tmp_path / "a").read_text() == "4"

    record = JobRecord.objects.get(pk=not_retried.id)
    assert (record.status, record.attempts) == ("failed", 1)
    assert "ValueError: bad input" in record.error
    assert (tmp_path / "b").read_text() == "1"


@pytest.mark.slow
def test_a_canceled_job_is_not_retried(manage: Any, tmp_path: Any) -> None:
    handle = fails_once_then_waits.delay(str(tmp_path / "calls"))
    assert manage("rqworker", "--burst").returncode == 0
    assert handle.status == "scheduled"
    assert handle.cancel() is True
    JobRecord.objects.filter(pk=handle.id).update(scheduled_for=timezone.now())
    assert manage("rqscheduler", "--burst").returncode == 0
    assert manage("rqworker", "--burst").returncode == 0
    assert handle.status == "canceled"
    assert (tmp_path / "calls").read_text() == "1"


# --- timeouts and jobs that exit -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("worker_class", ["fork", "simple", "batch"])
def test_a_job_over_its_timeout_is_stopped_and_fails(manage: Any, worker_class: str) -> None:
    handle = overruns.delay(30)
    after = add.delay(1, 2)
    assert manage("rqworker", "--burst", "--worker-class", worker_class).returncode == 0
    record = JobRecord.objects.get(pk=handle.id)
    assert record.status == "failed"
    assert record.error.rstrip().endswith("Timed out after 1 s.")
    assert record.duration is not None and record.duration < timedelta(seconds=30)
    assert JobRecord.objects.get(pk=after.id).status == "finished"  # the worker went on


@pytest.mark.slow
@pytest.mark.parametrize("worker_class", ["fork", "simple", "batch"])
def test_sys_exit_in_a_job_fails_it_and_the_worker_goes_on(manage: Any, worker_class: str) -> None:
    handle = calls_sys_exit.delay(3)
    after = add.delay(1, 2)
    result = manage("rqworker", "--burst", "--worker-class", worker_class)
    assert result.returncode == 0, result.stderr
    record = JobRecord.objects.get(pk=handle.id)
    assert record.status == "failed"
    assert "The job called sys.exit(3)" in record.error
    assert JobRecord.objects.get(pk=after.id).status == "finished"


@pytest.mark.slow
def test_os_exit_kills_only_the_work_horse(manage: Any) -> None:
    handle = calls_os_exit.delay(4)
    after = add.delay(1, 2)
    result = manage("rqworker", "--burst", "--worker-class", "fork")
    assert result.returncode == 0, result.stderr
    record = JobRecord.objects.get(pk=handle.id)
    assert record.status == "failed"
    assert "work-horse process running the job died" in record.error
    assert "os._exit()" in record.error
    assert JobRecord.objects.get(pk=after.id).status == "finished"


# --- bad input -----------------------------------------------------------------------------------


def _old_job(func_name: str, args: list[Any], kwargs: dict[str, Any], options: dict[str, Any]) -> str:
    """A job enqueued by older code: the row and the push, without today's checks."""
    job_id = f"old-{func_name.rsplit('.', 1)[-1]}"
    create(
        job_id=job_id,
        func_name=func_name,
        queue="default",
        args=args,
        kwargs=kwargs,
        status="queued",
        options=options,
        using="default",
    )
    assert push(JobSpec(job_id, func_name, "default", args, kwargs, options, "default"))
    return job_id


@pytest.mark.slow
def test_arguments_that_no_longer_fit_fail_clearly_without_retries(manage: Any) -> None:
    job_id = _old_job("tests.testapp.jobs.add", [1], {"c": 2}, {"retry_max": 3})
    after = add.delay(1, 2)
    assert manage("rqworker", "--burst").returncode == 0
    record = JobRecord.objects.get(pk=job_id)
    assert (record.status, record.attempts) == ("failed", 1)  # retrying cannot help
    assert "do not fit tests.testapp.jobs.add(a, b): missing a required argument: 'b'" in record.error
    assert "Make the function accept the old arguments" in record.error
    assert JobRecord.objects.get(pk=after.id).status == "finished"


@pytest.mark.slow
def test_a_removed_function_fails_clearly(manage: Any) -> None:
    job_id = _old_job("tests.testapp.jobs.was_removed", [], {}, {})
    assert manage("rqworker", "--burst").returncode == 0
    record = JobRecord.objects.get(pk=job_id)
    assert record.status == "failed"
    assert "The job function 'tests.testapp.jobs.was_removed' is not registered" in record.error
    assert "renamed, moved or removed after the job was enqueued" in record.error


@pytest.mark.slow
def test_a_malformed_payload_in_redis_is_replaced_from_the_row(manage: Any, redis: Any) -> None:
    handle = echo.delay({"keep": "me"})
    redis.hset(f"rq:job:{handle.id}", "data", b"\x00\x01 not a payload")
    after = echo.delay("next")
    result = manage("rqworker", "high", "--burst")
    assert result.returncode == 0, result.stderr
    # Nothing is lost: the row keeps the arguments, and the job ran from them.
    record = JobRecord.objects.get(pk=handle.id)
    assert (record.status, record.result) == ("finished", {"keep": "me"})
    assert "The job's payload in Redis could not be read" in record.error_history[0]["error"]
    assert JobRecord.objects.get(pk=after.id).status == "finished"


@pytest.mark.slow
def test_a_payload_damaged_again_ends_failed(manage: Any, redis: Any) -> None:
    from django_jobs.worker import JobsJob

    # Push a damaged payload twice: the second time the job fails, with the reason.
    handle = echo.delay("x")
    for _ in range(2):
        redis.hset(f"rq:job:{handle.id}", "data", b"garbage")
        assert manage("rqworker", "high", "--burst", "--max-jobs", "1").returncode == 0
        if JobRecord.objects.get(pk=handle.id).status == "failed":
            break
        assert JobsJob.exists(handle.id, connection=redis)
    record = JobRecord.objects.get(pk=handle.id)
    assert record.status == "failed", record.error_history
    assert len(record.error_history) == 2
    assert "could not be read" in record.error


@pytest.mark.slow
def test_an_unknown_queue_on_the_command_line_is_refused(manage: Any) -> None:
    result = manage("rqworker", "default", "nope", "--burst")
    assert result.returncode != 0
    assert "nope" in result.stderr and "default" in result.stderr


def test_a_huge_argument_is_refused_at_enqueue_and_nothing_is_written(settings: Any) -> None:
    settings.DJANGO_JOBS = {"MAX_PAYLOAD_BYTES": 10_000}
    with pytest.raises(ValueError, match=r"tests.testapp.jobs.echo\(\): the arguments take 20,00\d bytes"):
        echo.delay("x" * 20_000)
    assert not JobRecord.objects.exists()
    assert get_queue("high").count == 0
    echo.delay("x" * 9_000)  # under the limit


def test_max_payload_bytes_is_checked(settings: Any) -> None:
    from django_jobs.checks import check_options

    settings.DJANGO_JOBS = {"MAX_PAYLOAD_BYTES": "1MB"}
    messages = check_options()
    assert [m.id for m in messages] == ["django_jobs.E004"]
    assert "MAX_PAYLOAD_BYTES" in messages[0].msg
    settings.DJANGO_JOBS = {"MAX_PAYLOAD_BYTES": None}
    assert check_options() == []
