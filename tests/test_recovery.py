"""Crashes, Redis losing its data and database outages, with real processes and servers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.test.utils import override_settings
from django.utils import timezone

from django_jobs import actions, get_queue, outcomes, recovery, removals, spool
from django_jobs.models import JobRecord, PendingRemoval
from django_jobs.scheduler import Scheduler
from django_jobs.testing import RedisServer, run_burst
from tests.faultkit import database_outage_for_worker, start
from tests.ports import redis_away
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


# --- jobs canceled or deleted while Redis was away --------------------------------------------------


def test_the_scheduler_loop_takes_canceled_and_deleted_jobs_out_of_redis_once_it_is_back(redis: Any) -> None:
    canceled, deleted, requeued = add.delay(1, 1), add.delay(2, 2), add.delay(3, 3)
    with redis_away():
        assert canceled.cancel() is True and requeued.cancel() is True
        assert actions.delete(JobRecord.objects.filter(pk=deleted.id)).done == 1
        # Run again at once: it waits for its push until its old job has left Redis.
        assert actions.requeue(JobRecord.objects.filter(pk=requeued.id)).done == 1
        assert Scheduler(interval=1).tick()["pushed"] == 0  # still away: nothing done, nothing lost
    assert JobRecord.objects.get(pk=requeued.id).needs_push
    queue = get_queue()
    assert queue.get_job_ids() == [canceled.id, deleted.id, requeued.id]  # back, with all three

    out = StringIO()
    call_command("rqreconcile", "--dry-run", stdout=out)
    assert "Would take 3 job(s) out of Redis" in out.getvalue()
    assert queue.count == 3

    Scheduler(interval=1).tick()
    assert queue.get_job_ids() == [requeued.id]  # pushed afresh: once
    assert queue.fetch_job(canceled.id).get_status() == "canceled"  # as a cancel with Redis up
    assert queue.fetch_job(deleted.id) is None
    assert not JobRecord.objects.get(pk=requeued.id).needs_push
    # Kept a while for a worker that took a job just before; then gone.
    assert set(PendingRemoval.objects.values_list("pk", flat=True)) == {canceled.id, deleted.id}
    assert removals.sweep() == []
    assert removals.sweep(timezone.now() + removals.GRACE + timedelta(seconds=1)) == []
    assert not PendingRemoval.objects.exists()

    assert run_burst(["default"])
    assert [status(handle.id) for handle in (canceled, requeued)] == ["canceled", "finished"]
    assert JobRecord.objects.get(pk=requeued.id).attempts == 1
    assert not JobRecord.objects.filter(pk=deleted.id).exists()


def test_the_sweep_takes_every_job_out_a_batch_at_a_time(redis: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(removals, "BATCH", 2)
    handles = [add.delay(n, n) for n in range(5)]
    with redis_away():
        assert actions.cancel(JobRecord.objects.all()).done == 5
    assert get_queue().count == 5
    assert sorted(removals.sweep()) == sorted(handle.id for handle in handles)
    assert get_queue().count == 0
    assert removals.sweep() == []  # done: the entries wait out their grace


def test_a_row_canceled_while_its_push_waits_is_never_pushed(redis: Any) -> None:
    with redis_away():
        handle = add.delay(1, 1)  # Redis is away: the row waits for its push
        assert JobRecord.objects.get(pk=handle.id).needs_push
        assert handle.cancel() is True
    _backdate(handle.id)
    assert recovery.push_pending() == [] and recovery.reconcile() == []
    assert removals.sweep() == [handle.id]  # there was nothing of it in Redis
    assert get_queue().count == 0
    record = JobRecord.objects.get(pk=handle.id)
    assert (record.status, record.needs_push) == ("canceled", False)


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
