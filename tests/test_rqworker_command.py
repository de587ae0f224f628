"""``manage.py rqworker``: arguments, flags and errors."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management import CommandError, call_command

from django_jobs.models import JobRecord
from tests.testapp.jobs import add, sleep_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_unknown_queue_is_a_command_error_listing_valid_ones() -> None:
    with pytest.raises(CommandError) as info:
        call_command("rqworker", "high", "reprots", "--burst")
    assert "'reprots'" in str(info.value)
    assert "default, high, low, emails" in str(info.value)


@pytest.mark.slow
def test_unknown_queue_from_the_shell(manage: Any) -> None:
    result = manage("rqworker", "nope", "--burst")
    assert result.returncode == 1
    assert (
        "CommandError: Unknown queue 'nope'. Configured queues: default, high, low, emails" in result.stderr
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--worker-class", "no.such.Worker"], "cannot be imported"),
        (["--worker-class", "rq.SimpleWorker"], "does not record jobs"),
        (["--worker-class", "django_jobs.models.JobRecord"], "is not an RQ worker class"),
        (["--max-jobs", "0"], "--max-jobs: expected a whole number of at least 1, not '0'"),
        (["--pool", "0"], "--pool: expected a whole number from 1 to 1,000, not '0'"),
    ],
)
def test_bad_flags_are_command_errors(flags: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("rqworker", "--burst", *flags)


def test_unreachable_redis_is_a_command_error(settings: Any) -> None:
    settings.RQ_QUEUES = {"default": {"URL": "redis://127.0.0.1:1/0"}}
    with pytest.raises(CommandError, match="Cannot reach Redis for queue 'default'"):
        call_command("rqworker", "--burst")


@pytest.mark.slow
def test_max_jobs_and_name(manage: Any) -> None:
    handles = [add.delay(i, i) for i in range(3)]
    result = manage("rqworker", "--burst", "--max-jobs", "2", "--name", "named-worker")
    assert result.returncode == 0, result.stderr
    statuses = [JobRecord.objects.get(pk=h.id).status for h in handles]
    assert statuses == ["finished", "finished", "queued"]
    assert JobRecord.objects.get(pk=handles[0].id).worker_name == "named-worker"


@pytest.mark.slow
def test_simple_worker_class_from_the_command_line(manage: Any) -> None:
    handles = [add.delay(1, 2) for _ in range(3)]
    result = manage("rqworker", "default", "--burst", "--worker-class", "simple")
    assert result.returncode == 0, result.stderr
    assert [JobRecord.objects.get(pk=h.id).result for h in handles] == [3, 3, 3]


@pytest.mark.slow
def test_pool_runs_several_worker_processes(manage: Any) -> None:
    handles = [sleep_for.delay(0.5) for _ in range(8)]
    result = manage("rqworker", "default", "--burst", "--pool", "2", "--name", "pooled")
    assert result.returncode == 0, result.stderr
    records = JobRecord.objects.filter(pk__in=[h.id for h in handles])
    assert {r.status for r in records} == {"finished"}
    assert {r.worker_name for r in records} == {"pooled-1", "pooled-2"}


@pytest.mark.slow
def test_with_scheduler_flag_runs_rq_scheduled_jobs(manage: Any) -> None:
    from datetime import timedelta

    from django_jobs import get_queue

    job = get_queue("default").enqueue_in(timedelta(seconds=0), "tests.testapp.jobs.add", 4, 4)
    result = manage("rqworker", "default", "--burst", "--with-scheduler")
    assert result.returncode == 0, result.stderr
    assert JobRecord.objects.get(pk=job.id).result == 8
