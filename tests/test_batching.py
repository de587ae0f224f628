"""The batch worker (``rqworker --worker-class batch``): jobs taken ahead, shared round trips.

Real Redis and database, the worker in this process (burst) or as an
``rqworker`` subprocess where it must die.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rq.job import Job

from django_jobs import actions, get_queue, recovery
from django_jobs.claims import CLAIMS_KEY, claimed_key
from django_jobs.models import JobRecord
from django_jobs.queues import get_queues, resolve_serializer
from django_jobs.worker import BatchWorker
from tests.ports import redis_away
from tests.processes import start_manage, wait_for
from tests.testapp.jobs import (
    add,
    cancels,
    explode,
    flaky,
    kills_own_worker,
    note,
    queue_length_after,
)

pytestmark = pytest.mark.django_db(transaction=True)


def batch_worker(queues: tuple[str, ...] = ("default",), **kwargs: Any) -> BatchWorker:
    found = get_queues(list(queues))
    return BatchWorker(found, connection=found[0].connection, serializer=resolve_serializer(), **kwargs)


def strings(values: list[Any]) -> list[str]:
    return [value.decode() if isinstance(value, bytes) else value for value in values]


def test_batch_worker_runs_every_job_once_and_writes_every_row(redis: Any) -> None:
    handles = [add.delay(n, n) for n in range(30)]
    worker = batch_worker(batch_size=8)

    assert worker.work(burst=True, logging_level="WARNING")

    rows = {row.pk: row for row in JobRecord.objects.all()}
    for n, handle in enumerate(handles):
        row = rows[handle.id]
        assert (row.status, row.result, row.attempts, row.worker_name) == ("finished", 2 * n, 1, worker.name)
        assert row.started_at is not None and row.ended_at is not None
        assert row.started_at <= row.ended_at
    queue = get_queue("default")
    # RQ's own bookkeeping, as RQ's worker leaves it.
    assert queue.finished_job_registry.count == 30
    assert queue.started_job_registry.count == 0
    job = Job.fetch(handles[7].id, connection=redis, serializer=resolve_serializer())
    assert job.get_status() == "finished"
    assert job.return_value() == 14
    assert int(redis.hget(worker.key, "successful_job_count")) == 30
    # Nothing is left taken ahead.
    assert not redis.exists(claimed_key(worker.name))
    assert not redis.hexists(CLAIMS_KEY, worker.name)


def test_jobs_run_in_queue_order(redis: Any) -> None:
    for n in range(12):
        note.delay("batch:order", str(n))
    batch_worker(batch_size=5).work(burst=True, logging_level="WARNING")
    assert strings(redis.lrange("batch:order", 0, -1)) == [str(n) for n in range(12)]


def test_the_worker_writes_two_statements_per_job(redis: Any) -> None:
    for n in range(6):
        add.delay(n, 1)
    worker = batch_worker(batch_size=6)
    with CaptureQueriesContext(connection) as queries:
        worker.work(burst=True, logging_level="WARNING")
    requests = [q["sql"].lstrip().upper() for q in queries.captured_queries]
    statements = [sql.lstrip() for request in requests for sql in request.split("; ")]
    control = [sql for sql in statements if sql.startswith(("BEGIN", "COMMIT"))]
    # A start and an end per job, as with every worker...
    assert len([sql for sql in statements if sql.startswith("UPDATE")]) == 12
    assert len(statements) == 12 + len(control), statements
    # ...and each end shares its commit with the next job's start: in a transaction on SQLite
    # (its log shows BEGIN), in one request on PostgreSQL.
    if connection.vendor == "sqlite":
        assert control.count("BEGIN") == 5
    else:
        assert len(requests) == 7, requests


def test_failures_and_retries_go_through_the_usual_path(redis: Any, tmp_path: Any) -> None:
    failing = explode.delay("boom")
    retried = flaky.delay(str(tmp_path / "marker"))
    fine = add.delay(1, 1)
    batch_worker(("default", "low", "emails"), batch_size=10).work(burst=True, logging_level="WARNING")
    assert JobRecord.objects.get(pk=failing.id).status == "failed"
    assert "boom" in JobRecord.objects.get(pk=failing.id).error
    row = JobRecord.objects.get(pk=retried.id)
    assert (row.status, row.attempts) == ("finished", 3)
    assert JobRecord.objects.get(pk=fine.id).status == "finished"


def test_dependent_runs_after_the_job_it_depends_on(redis: Any) -> None:
    first = note.delay("batch:deps", "first")
    second = note.apply_async(args=("batch:deps", "second"), depends_on=first)
    batch_worker(batch_size=10).work(burst=True, logging_level="WARNING")
    # The first run may end before the dependent was pushed; one more pass takes it.
    batch_worker(batch_size=10).work(burst=True, logging_level="WARNING")
    assert strings(redis.lrange("batch:deps", 0, -1)) == ["first", "second"]
    assert JobRecord.objects.get(pk=second.id).status == "finished"


def test_max_jobs_gives_back_what_was_taken_ahead_in_order(redis: Any) -> None:
    handles = [note.delay("batch:max", str(n)) for n in range(10)]
    worker = batch_worker(batch_size=10)

    worker.work(burst=True, logging_level="WARNING", max_jobs=3)

    assert strings(redis.lrange("batch:max", 0, -1)) == ["0", "1", "2"]
    queue = get_queue("default")
    assert queue.get_job_ids() == [handle.id for handle in handles[3:]]
    assert set(JobRecord.objects.filter(status="queued").values_list("pk", flat=True)) == {
        handle.id for handle in handles[3:]
    }
    assert not redis.exists(claimed_key(worker.name))


def test_a_job_canceled_while_taken_ahead_does_not_run(redis: Any) -> None:
    victim_id = "batch-victim"
    canceller = cancels.delay(victim_id)
    victim = note.apply_async(args=("batch:cancel", "ran"), job_id=victim_id)
    after = note.delay("batch:cancel", "after")

    batch_worker(batch_size=10).work(burst=True, logging_level="WARNING")

    assert JobRecord.objects.get(pk=canceller.id).status == "finished"
    row = JobRecord.objects.get(pk=victim.id)
    assert (row.status, row.attempts, row.started_at) == ("canceled", 0, None)
    assert strings(redis.lrange("batch:cancel", 0, -1)) == ["after"]
    job = Job.fetch(victim.id, connection=redis, serializer=resolve_serializer())
    assert job.get_status() == "canceled"
    queue = get_queue("default")
    assert queue.started_job_registry.count == 0
    assert JobRecord.objects.get(pk=after.id).status == "finished"


def test_jobs_canceled_or_deleted_while_redis_was_down_do_not_run(redis: Any) -> None:
    first, canceled = note.delay("batch:away", "first"), note.delay("batch:away", "canceled")
    middle, deleted = note.delay("batch:away", "middle"), note.delay("batch:away", "deleted")
    plain = get_queue("default").enqueue("tests.testapp.jobs.note", "batch:away", "plain")
    with redis_away():
        assert canceled.cancel() is True
        assert actions.delete(JobRecord.objects.filter(pk=deleted.id)).done == 1

    worker = batch_worker(batch_size=10)
    worker.work(burst=True, logging_level="WARNING")

    # Each refused start came with the end of the job before it, in one write.
    assert strings(redis.lrange("batch:away", 0, -1)) == ["first", "middle", "plain"]
    row = JobRecord.objects.get(pk=canceled.id)
    assert (row.status, row.attempts, row.started_at) == ("canceled", 0, None)
    assert not JobRecord.objects.filter(pk=deleted.id).exists()
    assert [JobRecord.objects.get(pk=job_id).status for job_id in (first.id, middle.id, plain.id)] == [
        "finished"
    ] * 3
    queue = get_queue("default")
    assert queue.count == 0 and queue.started_job_registry.count == 0
    assert (
        Job.fetch(canceled.id, connection=redis, serializer=resolve_serializer()).get_status() == "canceled"
    )
    assert not Job.exists(deleted.id, connection=redis)
    assert not redis.exists(claimed_key(worker.name))


def test_a_slow_job_gives_back_what_was_taken_ahead(redis: Any, caplog: Any) -> None:
    slow = queue_length_after.delay(0.3, "default")
    rest = [add.delay(n, 0) for n in range(4)]
    worker = batch_worker(batch_size=10)
    with caplog.at_level(logging.INFO, logger="django_jobs.worker"):
        worker.work(burst=True, logging_level="WARNING")
    # While the slow job ran, the others waited in the worker's list, not in the queue.
    assert JobRecord.objects.get(pk=slow.id).result == 0
    assert "gave back 4 job(s)" in caplog.text
    assert all(JobRecord.objects.get(pk=h.id).status == "finished" for h in rest)


def test_a_long_job_gives_back_while_it_runs(redis: Any) -> None:
    long = queue_length_after.delay(2.5, "default")
    rest = [add.delay(n, 0) for n in range(4)]
    # The heartbeat thread looks at a running job every job_monitoring_interval / 2 seconds.
    worker = batch_worker(batch_size=10, job_monitoring_interval=1)
    worker.work(burst=True, logging_level="WARNING")
    # Measured inside the long job, after it had run for 2.5 s: the others were back in the queue.
    assert JobRecord.objects.get(pk=long.id).result == 4
    assert all(JobRecord.objects.get(pk=h.id).status == "finished" for h in rest)


def test_paused_queue_gets_its_jobs_back(redis: Any, settings: Any) -> None:
    from django_jobs import pauses

    settings.DJANGO_JOBS = {**getattr(settings, "DJANGO_JOBS", {}), "PAUSE_CHECK_INTERVAL": 0}
    handles = [add.delay(n, 0) for n in range(5)]
    worker = batch_worker(batch_size=10)

    done: list[str] = []
    original = worker.execute_job

    def execute_then_pause(job: Any, queue: Any) -> None:
        original(job, queue)
        done.append(job.id)
        if len(done) == 1:
            pauses.pause("default")

    worker.execute_job = execute_then_pause  # type: ignore[method-assign]
    worker.work(burst=True, logging_level="WARNING")

    assert done == [handles[0].id]
    assert get_queue("default").get_job_ids() == [h.id for h in handles[1:]]
    assert not redis.exists(claimed_key(worker.name))


@pytest.mark.slow
def test_jobs_of_a_dead_batch_worker_go_back_to_their_queue(redis: Any) -> None:
    killer = kills_own_worker.delay()
    handles = [note.delay("batch:dead", str(n)) for n in range(6)]
    worker = start_manage(
        "rqworker",
        "default",
        "--worker-class",
        "batch",
        "--batch-size",
        "10",
        "--job-monitoring-interval",
        "1",
        "--name",
        "batch-dies",
    )
    worker.wait(timeout=60)
    assert worker.returncode == -9
    assert redis.hget(CLAIMS_KEY, "batch-dies") is not None
    taken = strings(redis.lrange(claimed_key("batch-dies"), 0, -1))
    assert taken == [handle.id for handle in handles]
    # Reconciliation counts them as held: nothing is pushed twice.
    assert recovery.reconcile(timezone.now() + timedelta(minutes=1)) == []

    # Its heartbeat key expires three beats after the last one; then the jobs go back.
    wait_for(lambda: not redis.exists("rq:worker:batch-dies"), timeout=30)
    watch = recovery.OrphanWatch(grace=0)
    recovered = watch.recover(timezone.now() + timedelta(minutes=1))
    assert set(recovered) == {killer.id, *(h.id for h in handles)}
    assert get_queue("default").get_job_ids() == [handle.id for handle in handles]
    assert not redis.exists(claimed_key("batch-dies"))
    assert not redis.hexists(CLAIMS_KEY, "batch-dies")
    assert JobRecord.objects.get(pk=killer.id).status == "failed"  # no retries: ends failed

    batch_worker(batch_size=10).work(burst=True, logging_level="WARNING")
    assert strings(redis.lrange("batch:dead", 0, -1)) == [str(n) for n in range(6)]
    assert all(JobRecord.objects.get(pk=h.id).attempts == 1 for h in handles)


@pytest.mark.slow
def test_rqworker_batch_options(manage: Any) -> None:
    handles = [add.delay(n, 1) for n in range(5)]
    result = manage("rqworker", "default", "--burst", "--batch-size", "3")
    assert result.returncode == 0, result.stderr
    assert all(JobRecord.objects.get(pk=h.id).status == "finished" for h in handles)

    for args, message in (
        (("--batch-size", "0"), "--batch-size: expected a whole number from 1 to 1,000, not '0'"),
        (("--worker-class", "simple", "--batch-size", "5"), "--batch-size applies to the batch worker only"),
    ):
        result = manage("rqworker", "default", "--burst", *args)
        assert result.returncode != 0
        assert message in result.stderr


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="batch_size must be 1 or more, not 0"):
        batch_worker(batch_size=0)


def test_batch_of_one_still_works(redis: Any) -> None:
    handles = [add.delay(n, n) for n in range(3)]
    worker = batch_worker(batch_size=1)
    worker.work(burst=True, logging_level="WARNING")
    assert [JobRecord.objects.get(pk=h.id).result for h in handles] == [0, 2, 4]
    assert not redis.hexists(CLAIMS_KEY, worker.name)


def test_jobs_enqueued_with_plain_rq_get_their_rows(redis: Any) -> None:
    queue = get_queue("default")
    jobs = [queue.enqueue("tests.testapp.jobs.add", n, 10) for n in range(3)]
    batch_worker(batch_size=5).work(burst=True, logging_level="WARNING")
    rows = [JobRecord.objects.get(pk=job.id) for job in jobs]
    assert [(row.status, row.result, row.attempts) for row in rows] == [
        ("finished", 10 + n, 1) for n in range(3)
    ]
