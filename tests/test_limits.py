"""Unique jobs, rate limits and concurrency limits, with real workers, a real scheduler and Redis."""

from __future__ import annotations

import itertools
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connections, transaction
from django.utils import timezone
from rq import Worker

from django_jobs import actions, get_queue, job
from django_jobs.models import JobRecord
from tests.processes import start_manage, terminate, wait_for
from tests.testapp.jobs import (
    five_a_second,
    holds_the_slot,
    one_at_a_time,
    sync_account,
    twice_a_minute,
    unique_add,
    unique_briefly,
)

pytestmark = pytest.mark.django_db(transaction=True)


def not_a_job(value: int) -> int:
    """Decorated inside the tests, to check the options @job refuses."""
    return value


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Any]:
    """Start workers and schedulers with ``processes(command, *args)``; all are stopped at the end."""
    started: list[subprocess.Popen[str]] = []

    def run(command: str, *args: str) -> subprocess.Popen[str]:
        # Output to a file, not a pipe: a chatty process never blocks on it.
        process = start_manage(command, *args, output=tmp_path / f"{command}-{len(started)}.log")
        started.append(process)
        return process

    yield run
    for process in started:
        terminate(process)


def start_workers(processes: Any, redis: Any, count: int, *args: str) -> None:
    """Start ``count`` workers and wait until all listen, so that they take the jobs together."""
    for number in range(count):
        processes("rqworker", *args, "--name", f"limits-{number}")
    wait_for(lambda: len(Worker.all(connection=redis)) == count)


def finished(handles: list[Any]) -> bool:
    ids = [handle.id for handle in handles]
    return JobRecord.objects.filter(pk__in=ids, status="finished").count() == len(ids)


# -- unique jobs ----------------------------------------------------------------------


def test_a_duplicate_delay_returns_the_waiting_job() -> None:
    first = unique_add.delay(1, 2)
    assert unique_add.delay(1, 2) == first
    assert unique_add.delay(1, b=2) == first  # the same call, however the arguments are passed
    assert unique_add.delay(a=1, b=2).id == first.id
    other = unique_add.delay(1)
    assert other != first
    assert unique_add.delay(1, 0) == other  # b defaults to 0: the same call as unique_add(1)
    assert JobRecord.objects.count() == 2
    assert get_queue().count == 2  # nothing was pushed twice


def test_a_rollback_releases_the_key() -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        rolled_back = unique_add.delay(5, 5)
        assert unique_add.delay(5, 5) == rolled_back  # the same transaction sees its own job
        raise RuntimeError
    assert not JobRecord.objects.filter(pk=rolled_back.id).exists()
    again = unique_add.delay(5, 5)
    assert again != rolled_back
    assert again.status == "queued"


@pytest.mark.slow
def test_a_finished_job_frees_the_key_for_a_new_one(manage: Any) -> None:
    first = unique_add.delay(3, 4)
    assert manage("rqworker", "default", "--burst").returncode == 0
    assert first.status == "finished"
    second = unique_add.delay(3, 4)
    assert second != first
    assert second.status == "queued"
    assert unique_add.delay(3, 4) == second


def test_a_holder_older_than_unique_for_does_not_block() -> None:
    stuck = unique_briefly.delay("report")
    assert unique_briefly.delay("report") == stuck
    wait_for(lambda: unique_briefly.delay("report") != stuck, timeout=10)  # unique_for=1
    fresh = JobRecord.objects.exclude(pk=stuck.id).get(func_name=unique_briefly.name)
    assert JobRecord.objects.get(pk=stuck.id).status == "queued"  # still there, no longer holding the key
    assert unique_briefly.delay("report").id == fresh.id  # the new job holds it now


def test_unique_key_says_which_calls_are_the_same() -> None:
    first = sync_account.delay(7)
    assert sync_account.delay(7, full=True) == first  # the key is the account alone
    assert sync_account.delay(8) != first
    assert JobRecord.objects.get(pk=first.id).unique_key == "tests.testapp.jobs.sync_account:account-7"


def test_concurrent_enqueues_make_one_job() -> None:
    """The second .delay() cannot see the first one's uncommitted row: the constraint decides."""
    inserted = threading.Event()
    handles: dict[str, Any] = {}

    def first() -> None:
        try:
            with transaction.atomic():
                handles["first"] = unique_add.delay(40, 2)
                inserted.set()
                time.sleep(0.5)  # the second enqueue runs into this uncommitted row meanwhile
        finally:
            inserted.set()
            connections.close_all()

    def second() -> None:
        try:
            inserted.wait(10)
            handles["second"] = unique_add.delay(40, 2)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert handles["second"] == handles["first"]
    assert JobRecord.objects.filter(func_name=unique_add.name).count() == 1


def test_requeueing_an_old_unique_job_does_not_clash_with_the_new_one() -> None:
    old = unique_add.delay(9, 9)
    JobRecord.objects.filter(pk=old.id).update(status="failed")  # as if it had failed
    new = unique_add.delay(9, 9)
    assert new != old
    outcome = actions.requeue(JobRecord.objects.filter(pk=old.id))
    assert outcome.done == 1
    assert {old.status, new.status} == {"queued"}
    assert unique_add.delay(9, 9) == new


def test_a_unique_key_function_must_return_a_str() -> None:
    bad = job(unique_key=lambda value: value)(not_a_job)
    with pytest.raises(TypeError, match="unique_key function returned 3; it must return a non-empty str"):
        bad.delay(3)
    assert JobRecord.objects.count() == 0


def test_map_of_a_unique_job_returns_the_existing_ones() -> None:
    waiting = unique_add.delay(1, 1)
    handles = unique_add.map([(1, 1), (2, 2), {"a": 2, "b": 2}])
    assert handles[0] == waiting
    assert handles[1] == handles[2] != waiting
    assert JobRecord.objects.count() == 2


# -- bad options ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"rate_limit": "10/minute"}, ValueError, r"'10/minute' is not a rate limit: write 'N/s', 'N/m'"),
        ({"rate_limit": "0/s"}, ValueError, "with N >= 1"),
        ({"rate_limit": 10}, ValueError, "for example '10/m'"),
        (
            {"concurrency": 0},
            ValueError,
            r"concurrency=…\) on tests.test_limits.not_a_job\(\): give the most",
        ),
        ({"concurrency": True}, ValueError, "as an int >= 1"),
        ({"concurrency": "2"}, ValueError, "not '2'"),
        ({"unique": "yes"}, TypeError, "is True or False"),
        ({"unique_key": "account"}, TypeError, "takes a function of the job's arguments"),
        ({"unique": True, "unique_for": 0}, ValueError, r"takes seconds > 0 \(for example unique_for=3600\)"),
        ({"unique_for": 60}, ValueError, "only applies to unique jobs: add unique=True"),
    ],
)
def test_bad_options_are_refused_when_decorating(options: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        job(**options)(not_a_job)


def test_limits_are_kept_on_the_row() -> None:
    handle = five_a_second.delay()
    assert JobRecord.objects.get(pk=handle.id).options["rate_limit"] == "5/s"
    handle = one_at_a_time.delay("unused", 0)
    assert JobRecord.objects.get(pk=handle.id).options["concurrency"] == 1


# -- concurrency and rate limits across worker processes ------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("worker_class", ["fork", "simple"])
def test_concurrency_one_over_three_workers_never_overlaps(
    redis: Any, processes: Any, worker_class: str
) -> None:
    processes("rqscheduler", "--interval", "0.2", "--lock-ttl", "2")
    start_workers(processes, redis, 3, "default", "--worker-class", worker_class)
    handles = [one_at_a_time.delay("runs", 0.3) for _ in range(6)]
    wait_for(lambda: finished(handles), timeout=90)
    runs = sorted(tuple(map(float, entry.split())) for entry in redis.lrange("runs", 0, -1))
    assert len(runs) == 6
    for (_start, end), (next_start, _end) in itertools.pairwise(runs):
        assert next_start >= end, f"two runs overlapped: {runs}"
    rows = JobRecord.objects.filter(pk__in=[handle.id for handle in handles])
    assert {row.attempts for row in rows} == {1}  # waiting for the slot is not an attempt
    assert any(row.scheduled_for for row in rows)  # some did wait: three workers took them at once


@pytest.mark.slow
def test_a_dead_work_horse_frees_its_slot(manage: Any) -> None:
    dies = holds_the_slot.delay(True)
    runs = holds_the_slot.delay(False)
    assert manage("rqworker", "default", "--burst").returncode == 0
    assert dies.status == "failed"
    assert runs.status == "finished"  # not kept waiting for the dead one's slot
    assert JobRecord.objects.get(pk=runs.id).scheduled_for is None


@pytest.mark.slow
def test_rate_limit_over_two_workers(redis: Any, processes: Any) -> None:
    processes("rqscheduler", "--interval", "0.2", "--lock-ttl", "2")
    start_workers(processes, redis, 2, "high", "default")
    handles = [five_a_second.delay() for _ in range(15)]
    wait_for(lambda: finished(handles), timeout=90)
    rows = JobRecord.objects.filter(pk__in=[handle.id for handle in handles])
    assert {row.attempts for row in rows} == {1}
    starts = sorted(row.started_at.timestamp() for row in rows)
    # The limit is applied when a worker takes the job; the row's start time is taken a
    # few milliseconds later (after the fork), so allow that much on each window.
    margin = 0.15
    for first, sixth in zip(starts, starts[5:], strict=False):
        assert sixth - first >= 1 - margin, f"more than 5 starts within a second: {starts}"
    assert starts[-1] - starts[0] >= 2 - margin  # 15 starts at 5 a second span two seconds at least


@pytest.mark.slow
def test_jobs_over_the_limit_wait_in_the_database_one_slot_each(redis: Any, manage: Any) -> None:
    before = timezone.now()
    handles = [twice_a_minute.delay() for _ in range(5)]
    assert manage("rqworker", "default", "--burst").returncode == 0
    rows = JobRecord.objects.filter(pk__in=[handle.id for handle in handles])
    assert sorted(row.status for row in rows) == ["finished"] * 2 + ["scheduled"] * 3  # waiting, not dropped
    waiting = sorted(rows.filter(status="scheduled"), key=lambda row: row.scheduled_for)
    assert {row.attempts for row in waiting} == {0}
    assert get_queue().count == 0
    assert not any(redis.exists(f"rq:job:{row.id}") for row in waiting)  # the database holds them now
    # Each waits for its own slot: two a minute after the first starts, one a minute later.
    waits = [(row.scheduled_for - before).total_seconds() for row in waiting]
    assert 59 < waits[0] <= waits[1] < 90
    assert 119 < waits[2] < 150
