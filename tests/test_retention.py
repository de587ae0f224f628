"""Retention: old rows of jobs that ended go, in batches; everything else stays."""

from __future__ import annotations

import datetime as dt
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.test import Client
from django.test.utils import override_settings
from django.utils import timezone

from django_jobs import retention
from django_jobs.models import JobDependency, JobRecord, PeriodicJob
from tests.test_enqueue import JobsDatabaseRouter

pytestmark = pytest.mark.django_db

NOW = timezone.now()
DAY = dt.timedelta(days=1)
FINAL = ("finished", "failed", "canceled", "stopped")
NOT_ENDED = ("queued", "scheduled", "deferred", "started")


def row(
    job_id: str, status: str, ended_ago: dt.timedelta | None, using: str = "default", **fields: Any
) -> str:
    """A row that ended ``ended_ago`` before NOW (enqueued a minute before it ended)."""
    ended = NOW - ended_ago if ended_ago is not None else None
    enqueued = fields.pop("enqueued_at", (ended or NOW) - dt.timedelta(minutes=1))
    JobRecord.objects.using(using).create(
        id=job_id,
        func_name="tests.testapp.jobs.add",
        queue="default",
        status=status,
        enqueued_at=enqueued,
        ended_at=ended,
        **fields,
    )
    return job_id


def ids(using: str = "default") -> set[str]:
    return set(JobRecord.objects.using(using).values_list("pk", flat=True))


@pytest.fixture
def rows() -> dict[str, set[str]]:
    """For each final status, rows 40 days, 10 days and 1 hour after their end; old rows not ended."""
    made: dict[str, set[str]] = {"old": set(), "ten_days": set(), "recent": set(), "not_ended": set()}
    for status in FINAL:
        made["old"].add(row(f"{status}-old", status, 40 * DAY))
        made["ten_days"].add(row(f"{status}-10d", status, 10 * DAY))
        made["recent"].add(row(f"{status}-recent", status, dt.timedelta(hours=1)))
    for status in NOT_ENDED:
        # Enqueued long ago, and (for a requeued job) with an old end time left over: still kept.
        made["not_ended"].add(row(f"{status}-old", status, None, enqueued_at=NOW - 90 * DAY))
        made["not_ended"].add(row(f"{status}-requeued", status, 40 * DAY))
    return made


def test_defaults_prune_old_final_rows_only(rows: dict[str, set[str]]) -> None:
    counts = retention.prune(NOW)
    # finished, canceled and stopped are kept 7 days, failed 30 days.
    assert counts == {"finished": 2, "failed": 1, "canceled": 2, "stopped": 2}
    assert ids() == rows["recent"] | rows["not_ended"] | {"failed-10d"}


def test_retention_per_status_in_seconds_timedelta_or_forever(
    settings: Any, rows: dict[str, set[str]]
) -> None:
    settings.DJANGO_JOBS = {"RETENTION": {"finished": 1800, "failed": None, "stopped": dt.timedelta(days=60)}}
    counts = retention.prune(NOW)
    # canceled keeps its default of 7 days.
    assert counts == {"finished": 3, "failed": 0, "canceled": 2, "stopped": 0}
    kept = ids()
    assert not {"finished-old", "finished-10d", "finished-recent", "canceled-old", "canceled-10d"} & kept
    assert {"failed-old", "failed-10d", "failed-recent", "stopped-old", "canceled-recent"} <= kept
    assert rows["not_ended"] <= kept


def test_a_retention_longer_than_the_calendar_keeps_rows(settings: Any, rows: dict[str, set[str]]) -> None:
    settings.DJANGO_JOBS = {"RETENTION": {"finished": dt.timedelta.max}}
    assert retention.prune(NOW)["finished"] == 0
    assert {"finished-old", "finished-10d", "finished-recent"} <= ids()


def test_retention_none_keeps_every_row(settings: Any, rows: dict[str, set[str]]) -> None:
    settings.DJANGO_JOBS = {"RETENTION": None}
    before = ids()
    assert retention.prune(NOW) == dict.fromkeys(FINAL, 0)
    assert retention.prune_some(NOW) == 0
    assert ids() == before


def test_dry_run_counts_what_a_real_run_deletes_and_deletes_nothing(rows: dict[str, set[str]]) -> None:
    before = ids()
    dry = retention.prune(NOW, dry_run=True)
    assert ids() == before
    assert dry == retention.prune(NOW)
    assert ids() != before


def test_a_row_that_ended_again_recently_is_kept_however_old_its_enqueue() -> None:
    # Requeued a month after it was first enqueued, it finished an hour ago.
    row("again", "finished", dt.timedelta(hours=1), enqueued_at=NOW - 60 * DAY)
    row("no-end", "canceled", None, enqueued_at=NOW - 60 * DAY)  # a final row without an end time
    assert retention.prune(NOW) == {"finished": 0, "failed": 0, "canceled": 1, "stopped": 0}
    assert ids() == {"again"}


def test_batches_are_at_most_batch_size_and_oldest_go_first() -> None:
    for number in range(25):
        row(f"job-{number:02}", "finished", (40 + number) * DAY)
    batches: list[tuple[str, int]] = []
    counts = retention.prune(
        NOW, batch_size=10, max_batches=1, on_batch=lambda s, n, _t: batches.append((s, n))
    )
    assert counts["finished"] == 10 and batches == [("finished", 10)]
    # The oldest ten (ended 55-64 days ago) went first.
    assert ids() == {f"job-{number:02}" for number in range(15)}
    assert retention.prune(NOW, batch_size=10, dry_run=True, max_batches=1)["finished"] == 10
    retention.prune(NOW, batch_size=10, on_batch=lambda s, n, _t: batches.append((s, n)))
    assert batches == [("finished", 10), ("finished", 10), ("finished", 5)]
    assert ids() == set()


def test_prune_some_deletes_one_batch_per_call() -> None:
    for number in range(7):
        row(f"finished-{number}", "finished", 40 * DAY)
    row("failed-old", "failed", 40 * DAY)
    row("kept", "finished", DAY)
    assert retention.prune_some(NOW, batch_size=5) == 5
    assert retention.prune_some(NOW, batch_size=5) == 2
    assert retention.prune_some(NOW, batch_size=5) == 1  # then the next status
    assert retention.prune_some(NOW, batch_size=5) == 0
    assert ids() == {"kept"}


@pytest.mark.parametrize("size", [0, -1, retention.MAX_BATCH_SIZE + 1])
def test_batch_size_is_bounded(size: int) -> None:
    with pytest.raises(ValueError, match="batch_size must be a whole number from 1 to 10,000"):
        retention.prune(NOW, batch_size=size)
    with pytest.raises(ValueError, match="batch_size"):
        retention.prune_some(NOW, batch_size=size)


def test_dependency_rows_of_pruned_jobs_go_and_the_admin_still_shows_the_rest() -> None:
    parent = row("parent", "finished", 40 * DAY)
    child = row("child", "finished", 40 * DAY)
    survivor = row("survivor", "deferred", None)
    JobDependency.objects.create(job_id=child, depends_on_id=parent)
    JobDependency.objects.create(job_id=survivor, depends_on_id=parent)
    retention.prune(NOW)
    assert ids() == {"survivor"}
    # The pruned child's dependency row went; the survivor's, pointing at a pruned job, stays.
    assert list(JobDependency.objects.values_list("job_id", "depends_on_id")) == [("survivor", "parent")]
    User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.login(username="root", password="pw")
    response = client.get("/admin/django_jobs/jobrecord/survivor/change/")
    assert response.status_code == 200
    assert "/admin/django_jobs/jobrecord/parent/change/" in response.content.decode()


def test_periodic_job_whose_last_run_was_pruned_still_shows_in_the_admin() -> None:
    periodic = PeriodicJob.objects.create(
        name="sums", func_name="tests.testapp.jobs.add", interval=60, next_run_at=NOW + DAY
    )
    last = row("last-run", "finished", 40 * DAY, periodic_job=periodic)
    PeriodicJob.objects.filter(pk=periodic.pk).update(
        last_run_id=last, last_run_at=NOW - 40 * DAY, total_runs=3
    )
    retention.prune(NOW)
    assert not JobRecord.objects.exists()
    periodic.refresh_from_db()
    assert periodic.last_run_id == "last-run"  # left as it was: no constraint, and no UPDATE per pruned row
    User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.login(username="root", password="pw")
    listing = client.get("/admin/django_jobs/periodicjob/")
    assert listing.status_code == 200 and "sums" in listing.content.decode()
    detail = client.get(f"/admin/django_jobs/periodicjob/{periodic.pk}/change/")
    assert detail.status_code == 200 and ">3<" in detail.content.decode()
    # The link to the pruned run leads to the admin's "does not exist" notice, not to an error.
    gone = client.get("/admin/django_jobs/jobrecord/last-run/change/", follow=True)
    assert gone.status_code == 200
    assert "Perhaps it was deleted?" in gone.content.decode()


@pytest.mark.django_db(databases=["default", "jobs"])
def test_rows_on_a_routed_database_are_pruned_there() -> None:
    with override_settings(DATABASE_ROUTERS=[JobsDatabaseRouter()]):
        row("routed-old", "finished", 40 * DAY, using="jobs")
        row("routed-new", "finished", DAY, using="jobs")
        row("default-old", "finished", 40 * DAY, using="default")
        assert retention.prune(NOW)["finished"] == 1
        assert ids("jobs") == {"routed-new"}
    assert ids("default") == {"default-old"}


def test_only_final_statuses_can_be_asked_for() -> None:
    row("queued-old", "queued", None, enqueued_at=NOW - 90 * DAY)
    with pytest.raises(ValueError, match="only finished, failed, canceled, stopped rows are pruned"):
        retention.prune(NOW, statuses=["queued"])
    assert ids() == {"queued-old"}


def test_a_malformed_setting_stops_pruning_with_the_fix(settings: Any) -> None:
    settings.DJANGO_JOBS = {"RETENTION": {"queued": 60}}
    with pytest.raises(ImproperlyConfigured, match="'queued', whose rows are never pruned"):
        retention.prune(NOW)


# -- manage.py rqprune -----------------------------------------------------------------------


def rqprune(*args: str) -> str:
    out = StringIO()
    call_command("rqprune", *args, stdout=out)
    return out.getvalue()


def test_command_dry_run_reports_per_status_and_deletes_nothing(
    settings: Any, rows: dict[str, set[str]]
) -> None:
    settings.DJANGO_JOBS = {"RETENTION": {"stopped": None}}
    before = ids()
    output = rqprune("--dry-run")
    assert ids() == before
    lines = output.splitlines()
    assert lines[0].startswith("finished: 2 would be deleted (kept 7 days: ended before ")
    assert lines[1].startswith("failed: 1 would be deleted (kept 30 days: ended before ")
    assert lines[2].startswith("canceled: 2 would be deleted (kept 7 days")
    assert lines[3] == "stopped: kept forever, none would be deleted"
    assert lines[4] == "Dry run: 5 rows would be deleted; nothing was deleted."


def test_command_deletes_and_reports(rows: dict[str, set[str]]) -> None:
    output = rqprune("--batch-size", "1", "--status", "failed", "--status", "finished", "-v", "2")
    assert "  finished: deleted 1 rows in " in output
    assert "finished: 2 deleted (kept 7 days" in output
    assert "failed: 1 deleted (kept 30 days" in output
    assert "canceled" not in output
    assert output.splitlines()[-1] == "Deleted 3 rows."
    assert {"canceled-old", "stopped-old"} <= ids()
    assert not {"finished-old", "finished-10d", "failed-old"} & ids()


def test_command_max_batches(rows: dict[str, set[str]]) -> None:
    output = rqprune("--batch-size", "1", "--max-batches", "3")
    assert (
        "finished: 2 deleted" in output and "failed: 1 deleted" in output and "canceled: 0 deleted" in output
    )
    assert output.splitlines()[-1] == "Deleted 3 rows."


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--batch-size", "0"), r"--batch-size: expected a whole number from 1 to 10,000 \(.*\), not '0'"),
        (
            ("--batch-size", "10001"),
            r"--batch-size: expected a whole number from 1 to 10,000 \(.*\), not '10001'",
        ),
        (("--max-batches", "0"), "--max-batches: expected a whole number of at least 1, not '0'"),
        (("--status", "queued"), "invalid choice: 'queued'"),
    ],
)
def test_command_refuses_bad_flags(rows: dict[str, set[str]], args: tuple[str, ...], message: str) -> None:
    before = ids()
    with pytest.raises(CommandError, match=message):
        rqprune(*args)
    assert ids() == before


@pytest.mark.slow
def test_command_through_manage_py(manage: Any) -> None:
    result = manage("rqprune", "--batch-size", "20000")
    assert result.returncode == 2  # a usage error
    assert result.stderr.splitlines()[-1] == (
        "manage.py rqprune: error: argument --batch-size: expected a whole number from 1 to 10,000 "
        "(rows deleted per transaction: more would hold locks longer), not '20000'"
    )
    result = manage("rqprune", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "Dry run: 0 rows would be deleted; nothing was deleted." in result.stdout


@pytest.mark.django_db(transaction=True)
def test_the_scheduler_loop_prunes(rows: dict[str, set[str]], redis: Any) -> None:
    from django_jobs.scheduler import Scheduler

    scheduler = Scheduler(interval=1)
    pruned = [scheduler.tick()["pruned"] for _ in range(6)]
    # One batch (of one status) per tick, until the 7 rows due by the defaults are gone.
    assert pruned == [2, 1, 2, 2, 0, 0]
    assert ids() == rows["recent"] | rows["not_ended"] | {"failed-10d"}
