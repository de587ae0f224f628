"""Crashes, Redis losing its data and database outages, with real processes and servers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.test.utils import override_settings
from django.utils import timezone

from django_jobs import get_queue, outcomes, recovery, spool
from django_jobs.models import JobRecord
from django_jobs.testing import RedisServer
from tests.faultkit import database_outage_for_worker, start
from tests.processes import read_pid, stop, terminate, wait_for
from tests.testapp.jobs import add, hangs, hangs_first_time, sleep_for

pytestmark = pytest.mark.django_db(transaction=True)


def status(job_id: str) -> str:
    return JobRecord.objects.get(pk=job_id).status


# --- workers that die -----------------------------------------------------------------------------


@pytest.mark.slow
def test_jobs_of_killed_workers_are_retried_or_failed(tmp_path: Path) -> None:
    retried = hangs_first_time.delay(str(tmp_path / "calls"), str(tmp_path / "fork.pid"))
    failed = hangs.apply_async([str(tmp_path / "simple.pid")], queue="low")
    forking = start("rqworker", "default", "--name", "doomed-fork")
    simple = start("rqworker", "low", "--name", "doomed-simple", "--worker-class", "simple")
    scheduler = start("rqscheduler")
    survivor = None
    try:
        horse = read_pid(tmp_path / "fork.pid")
        assert read_pid(tmp_path / "simple.pid") == simple.pid  # the job runs in the worker itself
        wait_for(lambda: status(retried.id) == status(failed.id) == "started")
        # Machine lost: the worker and its work-horse die at once, with no chance to clean up.
        for pid in (forking.pid, horse, simple.pid):
            os.kill(pid, signal.SIGKILL)
        forking.wait()
        simple.wait()

        survivor = start("rqworker", "default", "low", "--name", "survivor")
        wait_for(lambda: status(retried.id) == "finished" and status(failed.id) == "failed")
    finally:
        for process in (forking, simple, survivor):
            if process is not None:
                terminate(process)
        log = stop(scheduler)[1]

    record = JobRecord.objects.get(pk=retried.id)
    assert (record.attempts, record.result, record.worker_name) == (2, "recovered", "survivor")
    assert "Worker doomed-fork died while running this job" in record.error_history[0]["error"]
    record = JobRecord.objects.get(pk=failed.id)
    assert record.attempts == 1
    assert record.error.startswith("Worker doomed-simple died while running this job")
    assert sum(int(n) for n in re.findall(r"recovered (\d+) jobs of dead workers", log)) == 2
    # RQ's started registry does not keep the dead attempts.
    assert get_queue("default").started_job_registry.count == 0
    assert get_queue("low").started_job_registry.count == 0


@pytest.mark.slow
def test_a_live_worker_is_not_taken_for_dead(tmp_path: Path) -> None:
    handle = sleep_for.delay(6)  # longer than the heartbeat TTL (3 s) and the grace (1 s)
    worker = start("rqworker", "default", "--name", "alive")
    scheduler = start("rqscheduler")
    try:
        wait_for(lambda: status(handle.id) == "finished")
    finally:
        terminate(worker)
        terminate(scheduler)
    record = JobRecord.objects.get(pk=handle.id)
    assert (record.attempts, record.error_history) == (1, [])


@pytest.mark.slow
def test_sigterm_lets_the_current_job_finish() -> None:
    handle = sleep_for.delay(3)
    worker = start("rqworker", "default", "--name", "warm-stop")
    wait_for(lambda: status(handle.id) == "started")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    record = JobRecord.objects.get(pk=handle.id)
    assert (record.status, record.result) == ("finished", 3)


@pytest.mark.slow
def test_a_job_taken_by_a_worker_that_died_before_starting_it_still_runs(manage: Any) -> None:
    handle = add.delay(2, 3)
    _backdate(handle.id)
    queue = get_queue("default")
    # A worker on several queues takes a job with (B)LPOP; this one died right after.
    assert queue.connection.lpop(queue.key).decode() == handle.id
    assert manage("rqreconcile").returncode == 0
    assert manage("rqworker", "default", "--burst").returncode == 0
    assert status(handle.id) == "finished"


# --- Redis losing its data ------------------------------------------------------------------------


def _backdate(*job_ids: str) -> None:
    """Make rows look enqueued a minute ago (reconciliation leaves pushes in flight alone)."""
    JobRecord.objects.filter(pk__in=job_ids).update(enqueued_at=timezone.now() - timedelta(minutes=1))


@pytest.mark.slow
def test_redis_restarted_empty_loses_no_job(tmp_path: Path) -> None:
    own = RedisServer().start()
    queues = {name: {"URL": own.url} for name in ("default", "high", "low", "emails")}
    env = {"REDIS_URL": own.url}
    processes: list[subprocess.Popen[str]] = []
    try:
        with override_settings(RQ_QUEUES=queues):
            queued = [add.delay(n, n) for n in range(5)]
            deferred = add.apply_async([10, 10], depends_on=queued[0])
            later = add.apply_async([0, 0], countdown=3600)
            running = hangs_first_time.delay(str(tmp_path / "calls"), str(tmp_path / "pid"))
            worker = start("rqworker", "default", "--name", "lost-with-redis", "--burst", env=env)
            # The worker takes the first job; kill it and its horse as Redis goes down.
            horse = read_pid(tmp_path / "pid")
            os.kill(worker.pid, signal.SIGKILL)
            os.kill(horse, signal.SIGKILL)
            worker.wait()
            own.stop()
            unpushed = add.delay(7, 7)  # Redis is down: the row is kept, marked for a push
            assert JobRecord.objects.get(pk=unpushed.id).needs_push
            own.start()  # same port, empty
            assert own.url == env["REDIS_URL"]
            waiting = [*queued, deferred, unpushed]
            _backdate(*(handle.id for handle in waiting))

            processes.append(start("rqscheduler", env=env))
            processes.append(start("rqworker", "default", "--name", "after-restart", env=env))

            def settled() -> bool:
                return all(status(h.id) == "finished" for h in [*waiting, running])

            wait_for(settled)
            record = JobRecord.objects.get(pk=later.id)
            assert record.status == "scheduled"  # the database holds it; nothing to repair
            assert not JobRecord.objects.get(pk=unpushed.id).needs_push
            assert JobRecord.objects.get(pk=deferred.id).result == 20
            assert JobRecord.objects.get(pk=running.id).attempts == 2
    finally:
        for process in processes:
            terminate(process)
        own.stop()


@pytest.mark.slow
def test_a_forking_worker_outlives_a_redis_outage_during_a_job(tmp_path: Path) -> None:
    own = RedisServer().start()
    queues = {name: {"URL": own.url} for name in ("default", "high", "low", "emails")}
    log_path = tmp_path / "worker.log"
    worker = None
    try:
        with override_settings(RQ_QUEUES=queues):
            # Long enough that Redis is back before the job ends, on a loaded machine too.
            handle = sleep_for.delay(10)
            worker = start(
                "rqworker", "default", "--name", "beats-through", env={"REDIS_URL": own.url}, output=log_path
            )
            wait_for(lambda: status(handle.id) == "started")
            own.stop()
            # Down until a heartbeat of the worker (one a second) has failed.
            wait_for(lambda: "Heartbeat of worker beats-through failed" in log_path.read_text())
            own.start()
            wait_for(lambda: status(handle.id) == "finished")
            assert worker.poll() is None  # still taking jobs
    finally:
        if worker is not None:
            terminate(worker)
        own.stop()
    log = log_path.read_text()
    assert "Heartbeat of worker beats-through failed (Redis unreachable)" in log
    record = JobRecord.objects.get(pk=handle.id)
    assert (record.attempts, record.result) == (1, 10)


@pytest.mark.slow
def test_rqreconcile_repairs_on_demand(manage: Any, redis: Any) -> None:
    handles = [add.delay(n, 1) for n in range(3)]
    fresh = add.delay(9, 9)
    _backdate(*(handle.id for handle in handles))
    redis.flushdb()  # Redis lost everything

    dry = manage("rqreconcile", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "Would push 3 job(s) again" in dry.stdout
    assert get_queue("default").count == 0

    result = manage("rqreconcile")
    assert result.returncode == 0, result.stderr
    assert "Pushed 3 job(s) again" in result.stdout
    assert sorted(get_queue("default").get_job_ids()) == sorted(handle.id for handle in handles)
    assert manage("rqworker", "--burst").returncode == 0
    assert [status(handle.id) for handle in handles] == ["finished"] * 3
    assert status(fresh.id) == "queued"  # enqueued seconds ago: its push may still be on its way

    again = manage("rqreconcile")
    assert "Pushed 0 job(s) again" in again.stdout  # nothing is pushed twice
    assert manage("rqreconcile", "--grace", "-1").returncode != 0


# --- the database going away ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("worker_class", ["fork", "batch"])
def test_outcomes_survive_a_database_outage(worker_class: str, tmp_path: Path) -> None:
    log_path = tmp_path / "worker.log"
    with database_outage_for_worker() as (env, outage):
        first = sleep_for.delay(1)
        second = add.delay(2, 2)
        worker = start(
            "rqworker",
            "default",
            "--name",
            "through-the-outage",
            "--worker-class",
            worker_class,
            env=env,
            output=log_path,
        )
        try:
            wait_for(lambda: status(first.id) == "started")
            with outage():
                # Both jobs end while the database cannot be written; the worker lives on,
                # trying the database again (after 1 s, then 2 s) while it is down.
                queue = get_queue("default")
                wait_for(lambda: queue.count == 0 and not queue.started_job_registry.count)
                wait_for(lambda: log_path.read_text().count("Database still unavailable") >= 2)
                assert worker.poll() is None
            wait_for(lambda: status(first.id) == status(second.id) == "finished")
            assert worker.poll() is None
        finally:
            terminate(worker)
    log = log_path.read_text()
    assert "keeping it in Redis until the database is back" in log
    assert JobRecord.objects.get(pk=first.id).result == 1
    record = JobRecord.objects.get(pk=second.id)
    assert (record.result, record.attempts, record.worker_name) == (4, 1, "through-the-outage")
    assert record.started_at is not None and record.ended_at >= record.started_at


def test_a_job_whose_outcome_waits_in_redis_is_not_pushed_again(redis: Any) -> None:
    handle = add.delay(2, 3)
    _backdate(handle.id)
    queue = get_queue("default")
    # A worker took it and ran it while the database was unavailable: RQ keeps it as finished
    # only, the row still says queued, and the start and the end wait in Redis.
    assert queue.connection.lpop(queue.key).decode() == handle.id
    queue.finished_job_registry.add(queue.fetch_job(handle.id), ttl=500)
    at = timezone.now()
    spool.save(redis, "started", job_id=handle.id, worker_name="during-the-outage", at=at)
    spool.save(redis, "finished", job_id=handle.id, result=5, at=at)

    assert recovery.reconcile() == []  # it ran: pushing it again would run it twice
    assert queue.count == 0
    assert outcomes.replay_spool(redis) == 2
    record = JobRecord.objects.get(pk=handle.id)
    assert (record.status, record.result, record.attempts) == ("finished", 5, 1)


def test_a_worker_that_died_between_rqs_start_and_the_rows_is_caught(tmp_path: Path) -> None:
    from tests.testapp.jobs import flaky

    handle = flaky.delay(str(tmp_path / "calls"))
    _backdate(handle.id)
    queue = get_queue("emails")
    # A worker took it and RQ marked it started; the worker died before the row said so.
    job = queue.fetch_job(handle.id)
    assert queue.connection.lpop(queue.key).decode() == handle.id
    with queue.connection.pipeline() as pipeline:
        job.prepare_for_execution("ghost", pipeline)
        pipeline.execute()
    queue.connection.zadd(queue.started_job_registry.key, {f"{handle.id}:run-1": time.time() + 600})
    assert status(handle.id) == "queued"

    watch = recovery.OrphanWatch(grace=0)
    assert watch.recover() == [handle.id]
    record = JobRecord.objects.get(pk=handle.id)
    assert (record.status, record.attempts) == ("queued", 1)  # flaky has retries left
    assert record.error_history[0]["error"].startswith("Worker ghost died while running this job")
    assert queue.get_job_ids() == [handle.id]  # pushed again
    assert watch.recover() == []
