"""The forking worker's spare: the next job's process, forked before the job arrives.

Each job still runs in a process of its own, forked from the worker and
used once; these tests look at the processes themselves through /proc.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from django_jobs.models import JobRecord
from tests.processes import run_manage, start_manage, stop, wait_for
from tests.testapp.jobs import add, bump, child_processes, pid, seen_from_inside, sleep_for, worker_children

pytestmark = pytest.mark.django_db(transaction=True)


def gone(process_id: int) -> bool:
    """Whether the process has exited (reaped, or a zombie waiting for its parent)."""
    try:
        stat = Path(f"/proc/{process_id}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def spare_of(worker: subprocess.Popen[str]) -> int:
    """The idle worker's one child: its spare."""
    found = wait_for(lambda: child_processes(worker.pid))
    assert len(found) == 1, found
    return found.pop()


@pytest.mark.slow
def test_each_job_runs_in_the_spare_forked_before_it(manage: Any) -> None:
    worker = start_manage("rqworker", "default", "--name", "w-spare")
    try:
        first_spare = spare_of(worker)
        first = pid.delay()
        ran_in = first.wait(timeout=60)
        if ran_in != first_spare:  # the process was there before the job; if not, say why
            code, output = stop(worker)
            pytest.fail(f"job ran in {ran_in}, the spare was {first_spare}; the worker said:\n{output}")
        wait_for(lambda: gone(first_spare))  # used once, then it exited
        second_spare = spare_of(worker)
        assert second_spare != first_spare
        second = bump.delay()
        assert second.wait(timeout=60) == [1, second_spare]
        third = bump.delay()
        count, third_pid = third.wait(timeout=60)
        # A fresh process each time: the module state of the job before is not there.
        assert count == 1 and third_pid not in (first_spare, second_spare)
        assert JobRecord.objects.get(pk=second.id).worker_name == "w-spare"
    finally:
        code, output = stop(worker)
    assert code == 0, output


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_the_spare_ends_with_its_worker(sig: signal.Signals) -> None:
    worker = start_manage("rqworker", "default")
    try:
        spare = spare_of(worker)
        worker.send_signal(sig)
        worker.communicate(timeout=30)
        # A warm stop closes it; a killed worker's spare sees its pipe close and exits.
        wait_for(lambda: gone(spare), timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()


@pytest.mark.slow
def test_a_spare_that_died_is_replaced_and_the_job_runs() -> None:
    worker = start_manage("rqworker", "default")
    try:
        spare = spare_of(worker)
        os.kill(spare, signal.SIGKILL)
        # Dead before the job comes, so that the hand-over finds it gone (one still dying can
        # take the order into its pipe first: another case than this one).
        wait_for(lambda: gone(spare))
        handle = pid.delay()
        job_pid = handle.wait(timeout=60)
        assert job_pid not in (spare, worker.pid)
        assert gone(spare)  # reaped by the worker, not left a zombie
        assert add.delay(2, 3).wait(timeout=60) == 5
    finally:
        code, output = stop(worker)
    assert code == 0, output
    assert f"The spare work-horse {spare} of worker" in output and "is gone" in output


@pytest.mark.slow
def test_while_a_job_runs_the_next_spare_waits() -> None:
    worker = start_manage("rqworker", "default")
    try:
        spare_of(worker)
        assert worker_children.delay(1.0).wait(timeout=60) == 2  # this job's process and the spare
    finally:
        code, output = stop(worker)
    assert code == 0, output


@pytest.mark.slow
def test_prefork_can_be_turned_off(manage: Any) -> None:
    counted = worker_children.delay(1.0)
    handles = [bump.delay() for _ in range(3)]
    result = manage("rqworker", "--burst", "--worker-class", "tests.testapp.workers.ForkAtDequeue")
    assert result.returncode == 0, result.stderr
    outcomes = [JobRecord.objects.get(pk=handle.id).result for handle in handles]
    assert [count for count, _ in outcomes] == [1, 1, 1]
    assert len({job_pid for _, job_pid in outcomes}) == 3
    assert JobRecord.objects.get(pk=counted.id).result == 1  # no spare beside the job's process


@pytest.mark.slow
@pytest.mark.parametrize("worker_class", ["StopsBeforeFork", "StopsBeforeForkAtDequeue"])
def test_a_stop_before_the_job_has_a_process_stops_it(worker_class: str) -> None:
    handle = sleep_for.delay(60)
    # A session of its own: a worker that killed its own process group must not take pytest along.
    result = run_manage(
        "rqworker",
        "--burst",
        "--worker-class",
        f"tests.testapp.workers.{worker_class}",
        start_new_session=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    record = JobRecord.objects.get(pk=handle.id)
    assert record.status == "stopped", (record.status, record.error)
    assert record.attempts == 1


@pytest.mark.slow
def test_a_job_enqueued_with_plain_rq_reaches_the_spare_whole() -> None:
    from rq import Queue, Retry
    from rq.serializers import JSONSerializer

    from django_jobs import get_job
    from django_jobs.queues import get_connection

    # The worker hands the spare its own copy of the job rather than the spare fetching it:
    # every option RQ stored must arrive as it is.
    queue = Queue("default", connection=get_connection("default"), serializer=JSONSerializer)
    parent = queue.enqueue("tests.testapp.jobs.add", 1, 2)
    rq_job = queue.enqueue(
        "tests.testapp.jobs.whole_view",
        4,
        result_ttl=600,
        ttl=300,
        failure_ttl=50,
        job_timeout=30,
        meta={"a": 1.5},
        description="d",
        retry=Retry(max=2, interval=[1, 2]),
        depends_on=parent,
    )
    # whole_view is no @job function: jobs from plain RQ run when the allowlist names them.
    worker = start_manage(
        "rqworker",
        "default",
        "--name",
        "w-whole",
        options={"ALLOWED_FUNCTIONS": ["tests.testapp.jobs.whole_view"]},
    )
    try:
        spare_of(worker)
        view = get_job(rq_job.id).wait(timeout=60)
    finally:
        code, output = stop(worker)
    assert code == 0, output
    assert "could not be read" not in output  # taken as handed over, with no fetch
    assert view == {
        "args": [4],
        "meta": {"a": 1.5},
        "description": "d",
        "timeout": 30,
        "result_ttl": 600,
        "ttl": 300,
        "failure_ttl": 50,
        "retries_left": 2,
        "retry_intervals": [1, 2],
        "dependency_ids": [parent.id],
    }


@pytest.mark.slow
def test_a_job_run_by_the_spare_sees_its_own_data() -> None:
    worker = start_manage("rqworker", "default", "--name", "w-sees")
    try:
        spare_of(worker)
        handles = [seen_from_inside.delay(value) for value in range(3)]
        views = [handle.wait(timeout=60) for handle in handles]
    finally:
        code, output = stop(worker)
    assert code == 0, output
    assert "could not be read" not in output  # each took the job as handed over, with no fetch
    assert views == [
        {
            "id": handle.id,
            "args": [value],
            "timeout": 45,
            "description": "seen from inside",
            "origin": "default",
            "status": "started",
            "worker_name": "w-sees",
            "environ": handle.id,
        }
        for value, handle in enumerate(handles)
    ]


def test_the_rehearsed_pickup_changes_nothing(redis: Any, caplog: pytest.LogCaptureFixture) -> None:
    import copy
    import logging

    from rq.job import Job

    from django_jobs.queues import get_queues, resolve_serializer
    from django_jobs.worker import Worker

    # After forking the spare, the worker runs the next pickup's steps on a copy of the job
    # running now, to take its memory-page copies early. It must send nothing and keep nothing.
    handle = seen_from_inside.delay(7)
    found = get_queues(["default"])
    worker = Worker(found, connection=found[0].connection, serializer=resolve_serializer(), name="w-rehearse")
    job = Job.fetch(handle.id, connection=redis, serializer=resolve_serializer())
    keys = sorted(redis.keys("*"))
    stored = {key: redis.dump(key) for key in keys}
    row = JobRecord.objects.values().get(pk=handle.id)

    def state(obj: Any) -> dict[str, Any]:  # each attribute, containers copied
        return {k: copy.copy(v) if isinstance(v, dict | list | set) else v for k, v in vars(obj).items()}

    worker_state, job_state = state(worker), state(job)
    before = redis.info("commandstats")
    with caplog.at_level(logging.DEBUG, logger="django_jobs.worker"):
        worker._rehearse_pickup(job, found[0])
    after = redis.info("commandstats")
    assert state(worker) == worker_state
    assert state(job) == job_state

    assert "Could not rehearse" not in caplog.text  # it ran every step
    # Only the INFO that took the first count ran in between.
    assert after.pop("cmdstat_info")["calls"] == before.pop("cmdstat_info")["calls"] + 1
    assert after == before
    assert sorted(redis.keys("*")) == keys
    assert {key: redis.dump(key) for key in keys} == stored
    assert JobRecord.objects.values().get(pk=handle.id) == row
    assert (worker.executions, job.get_status(refresh=False), job.worker_name) == ({}, "queued", None)
