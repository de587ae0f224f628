"""``manage.py rqworker``: arguments, flags and errors."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from rq.worker import Worker as RQWorker

from django_jobs.management.pool import Pool, Slot
from django_jobs.models import JobRecord
from tests.faultkit import children, start
from tests.processes import read_pid, stop, terminate, wait_for
from tests.testapp.jobs import add, hangs_first_time, sleep_for

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


def registered(redis: Any) -> dict[str, int]:
    """The workers in RQ's list of workers: name -> pid."""
    return {worker.name: worker.pid for worker in RQWorker.all(connection=redis)}


@pytest.mark.slow
def test_a_pool_worker_killed_is_replaced_at_once_under_a_new_name(tmp_path: Path, redis: Any) -> None:
    retried = hangs_first_time.delay(str(tmp_path / "calls"), str(tmp_path / "horse.pid"))
    log = tmp_path / "pool.log"
    pool = start("rqworker", "default", "--pool", "2", "--name", "pooled", output=log)
    scheduler = start("rqscheduler")
    try:
        horse = read_pid(tmp_path / "horse.pid")
        victim = wait_for(lambda: JobRecord.objects.get(pk=retried.id).worker_name)
        workers = wait_for(lambda: len(registered(redis)) == 2 and registered(redis))
        assert set(workers) == {"pooled-1", "pooled-2"}
        (survivor,) = set(workers) - {victim}
        # Killed with its work-horse, with no chance to clean up (out of memory, say).
        os.kill(workers[victim], signal.SIGKILL)
        os.kill(horse, signal.SIGKILL)
        # Its place is taken at once, under a new name; it is out of RQ's list of workers.
        wait_for(lambda: set(registered(redis)) == {survivor, f"{victim}.1"})
        # Its job is recovered as any dead worker's: retried, and run by the pool.
        wait_for(lambda: JobRecord.objects.get(pk=retried.id).status == "finished")
        handles = [sleep_for.delay(0.3) for _ in range(6)]
        rows = JobRecord.objects.filter(pk__in=[handle.id for handle in handles])
        wait_for(lambda: {row.status for row in rows.all()} == {"finished"})
    finally:
        code, _ = stop(pool)
        terminate(scheduler)
    assert code == 0  # a pool stopped after a crash exits as any stopped pool
    record = JobRecord.objects.get(pk=retried.id)
    assert (record.attempts, record.result) == (2, "recovered")
    assert f"Worker {victim} died while running this job" in record.error_history[0]["error"]
    assert f"{victim}.1" in {row.worker_name for row in rows.all()}  # the new worker works
    text = log.read_text()
    assert f"Worker {victim} was killed by SIGKILL; starting another in its place." in text
    assert "There exists an active worker" not in text
    assert registered(redis) == {}


@pytest.mark.slow
def test_sigterm_drains_a_pool_whose_worker_is_starting_again(tmp_path: Path, redis: Any) -> None:
    log = tmp_path / "pool.log"
    pool = start("rqworker", "default", "--pool", "2", "--name", "draining", output=log)
    try:
        workers = wait_for(lambda: len(registered(redis)) == 2 and registered(redis))
        os.kill(workers["draining-1"], signal.SIGKILL)
        # The pool has seen it and started another: stop the pool while that one starts.
        wait_for(lambda: set(children(pool.pid)) - set(workers.values()))
    finally:
        code, _ = stop(pool)
    assert code == 0
    assert registered(redis) == {}  # every worker the pool ran has ended
    assert "Traceback" not in log.read_text()


def test_a_pool_does_not_take_the_name_of_a_worker_alive_in_redis(redis: Any) -> None:
    """A pool started again at once (its previous run killed) leaves the old names to expire."""
    pool = Pool(["true"], 2, "web1", connection=redis, queue_names=["default"], env={})
    redis.hset("rq:worker:web1-1", "birth", "now")  # alive, as far as Redis knows
    redis.hset("rq:worker:web1-2", mapping={"birth": "now", "death": "later"})  # ended cleanly
    assert pool.name_for(Slot(1)) == "web1-1.1"
    assert pool.name_for(Slot(2)) == "web1-2"
    redis.hset("rq:worker:web1-1.1", "birth", "now")
    assert pool.name_for(Slot(1, generation=1)) == "web1-1.2"


@pytest.mark.slow
def test_with_scheduler_flag_runs_rq_scheduled_jobs(manage: Any) -> None:
    from datetime import timedelta

    from django_jobs import get_queue

    job = get_queue("default").enqueue_in(timedelta(seconds=0), "tests.testapp.jobs.add", 4, 4)
    result = manage("rqworker", "default", "--burst", "--with-scheduler")
    assert result.returncode == 0, result.stderr
    assert JobRecord.objects.get(pk=job.id).result == 8
