"""The status-transition table, walked: every row write changes a row exactly when the table says
its transition may start from the row's status, and leaves it in a status the table allows."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db.models import Q
from django.utils import timezone

from django_jobs import actions, get_queue, records
from django_jobs.models import JobRecord, PendingRemoval
from django_jobs.status import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    INITIAL_STATUSES,
    TONE,
    TRANSITIONS,
    JobStatus,
    may_move,
    sources,
    status_filter,
    status_sql,
)

pytestmark = pytest.mark.django_db


def new_row(status: str) -> str:
    job_id = f"walk-{status}"
    JobRecord.objects.create(
        id=job_id, func_name="tests.testapp.jobs.add", queue="default", status=status, args=[1, 2]
    )
    return job_id


#: The write of each transition, applied to one row.
WRITES: dict[str, Callable[[str], Any]] = {
    "start": lambda job_id: records.mark_started_by_id(job_id, "w-walk"),
    "finish": lambda job_id: records.mark_finished(job_id, 3),
    "fail": lambda job_id: records.mark_attempt_failed(job_id, "boom"),
    "promote": lambda job_id: records.claim_due([job_id], "default"),
    "wait_for_limit": lambda job_id: records.mark_waiting_for_limit(job_id, timezone.now() + timedelta(1)),
    "dependencies_met": records.mark_dependencies_met,
    "requeue": lambda job_id: records.mark_requeued([job_id]),
    "cancel": lambda job_id: records.mark_canceled_many([job_id]),
}


def test_every_transition_has_its_write_here() -> None:
    assert set(WRITES) == set(TRANSITIONS)


@pytest.mark.parametrize("transition", sorted(TRANSITIONS))
@pytest.mark.parametrize("status", [status.value for status in JobStatus])
def test_a_write_changes_a_row_only_from_the_statuses_its_transition_starts_from(
    transition: str, status: str
) -> None:
    job_id = new_row(status)
    WRITES[transition](job_id)
    after = JobRecord.objects.get(pk=job_id).status
    if status in sources(transition):
        assert after in TRANSITIONS[transition].targets
        assert may_move(status, after) or after == status
    else:
        assert after == status, f"{transition} moved a {status} row to {after}"


def test_a_failed_attempt_that_is_retried_waits_in_a_status_the_table_allows() -> None:
    job_id = new_row(JobStatus.STARTED)
    JobRecord.objects.filter(pk=job_id).update(options={"retry_max": 2, "retry_intervals": [60]})
    attempt = records.mark_attempt_failed(job_id, "boom")
    assert attempt.status == JobStatus.SCHEDULED
    assert attempt.spec is not None and attempt.spec.args == [1, 2]
    assert JobRecord.objects.get(pk=job_id).status == JobStatus.SCHEDULED


def test_a_write_cannot_leave_a_status_outside_its_transition() -> None:
    job_id = new_row(JobStatus.STARTED)
    with pytest.raises(ValueError, match="'fail' write cannot leave a job 'finished'"):
        records.mark_failed(job_id, "boom", JobStatus.FINISHED)
    assert JobRecord.objects.get(pk=job_id).status == JobStatus.STARTED


def test_the_statuses_are_partitioned_and_each_has_a_tone() -> None:
    assert set(ACTIVE_STATUSES) | set(FINAL_STATUSES) == set(JobStatus)
    assert not set(ACTIVE_STATUSES) & set(FINAL_STATUSES)
    assert set(TONE) == set(JobStatus)
    assert set(ACTIVE_STATUSES) >= INITIAL_STATUSES


def test_every_status_is_reachable_and_every_active_one_can_end() -> None:
    reachable = set(INITIAL_STATUSES)
    for step in TRANSITIONS.values():
        reachable |= step.targets
    assert reachable == set(JobStatus)
    for status in ACTIVE_STATUSES:
        assert any(may_move(status, final) for final in FINAL_STATUSES), status


def test_the_admin_actions_take_their_statuses_from_the_table() -> None:
    assert set(actions.REQUEUEABLE) == {JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}
    assert set(actions.CANCELABLE) == {JobStatus.SCHEDULED, JobStatus.QUEUED, JobStatus.DEFERRED}
    assert all(may_move(status, JobStatus.QUEUED) for status in actions.REQUEUEABLE)


def test_the_where_clause_comes_from_the_table() -> None:
    assert status_filter("finish") == {}  # any status may finish
    assert status_filter("start") == {"status__in": [s for s in JobStatus if s != JobStatus.CANCELED]}
    assert status_filter("cancel") == {"status__in": ["scheduled", "queued", "deferred"]}
    assert status_sql("finish", "status") == ""
    assert status_sql("promote", '"status"') == " AND \"status\" IN ('scheduled')"


def test_the_unique_constraint_holds_keys_in_the_active_statuses() -> None:
    (constraint,) = JobRecord._meta.constraints
    assert constraint.condition == Q(status__in=ACTIVE_STATUSES)  # type: ignore[attr-defined]


def test_requeue_and_cancel_say_which_rows_they_changed() -> None:
    # The admin's actions push (or count) only these: a row that moved on between their read and
    # the write (requeued and started by someone else, or started) is left alone and not pushed.
    failed, queued, started = (new_row(status) for status in ("failed", "queued", "started"))
    assert records.mark_requeued([failed, queued, started]) == {failed}
    assert records.mark_requeued([failed]) == set()  # requeued already
    assert records.mark_canceled_many([failed, started]) == 1  # the requeued one, now queued
    assert JobRecord.objects.get(pk=started).status == JobStatus.STARTED


def test_a_start_is_refused_for_a_canceled_row_and_for_a_row_deleted_while_redis_was_away() -> None:
    # What a worker that takes each job finds: False means that it must skip the job.
    def rq_job(job_id: str) -> Any:
        return get_queue().create_job("tests.testapp.jobs.add", args=(1, 2), job_id=job_id)

    canceled = new_row(JobStatus.CANCELED)
    assert records.mark_started(rq_job(canceled), "w-walk") is False
    assert JobRecord.objects.filter(pk=canceled, status="canceled", attempts=0).exists()
    # Deleted while Redis was away: no row, and an entry that says so.
    PendingRemoval.objects.create(job_id="walk-deleted", queue="default")
    assert records.mark_started(rq_job("walk-deleted"), "w-walk") is False
    assert not JobRecord.objects.filter(pk="walk-deleted").exists()
    # Enqueued with plain RQ: no row, no entry; it runs and gets its row.
    assert records.mark_started(rq_job("walk-plain"), "w-walk") is True
    assert JobRecord.objects.get(pk="walk-plain").status == JobStatus.STARTED
    # A row that waits again after its cancel (requeued) starts, entry or not.
    PendingRemoval.objects.create(job_id=canceled, queue="default")
    records.mark_requeued([canceled])
    assert records.mark_started(rq_job(canceled), "w-walk") is True
    # A start written back after a database outage leaves a canceled or deleted row so.
    late = new_row(JobStatus.QUEUED)
    records.mark_canceled_many([late])
    records.mark_started_late(late, "w-walk", timezone.now())
    records.mark_started_late("walk-deleted", "w-walk", timezone.now())
    assert JobRecord.objects.get(pk=late).status == JobStatus.CANCELED
    assert not JobRecord.objects.filter(pk="walk-deleted").exists()
