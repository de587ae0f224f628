"""Delayed jobs held in the database, periodic jobs, and ``rqscheduler`` with one leader."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import zoneinfo
from typing import Any

import pytest
from croniter import croniter
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from hypothesis import example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from django_jobs import get_queue
from django_jobs.cron import next_cron_run, next_run, validate_schedule
from django_jobs.models import JobRecord, MissedRunPolicy, PeriodicJob
from django_jobs.scheduler import LEADER_KEY, promote_due, run_periodic, sync_schedules
from tests.processes import ROOT, manage_env, start_manage, stop, wait_for
from tests.testapp.jobs import add, nightly_cleanup

db = pytest.mark.django_db(transaction=True)


# -- delays ---------------------------------------------------------------------------


@db
def test_countdown_holds_the_job_in_the_database() -> None:
    before = timezone.now()
    handle = add.apply_async((1, 2), countdown=3600)
    record = JobRecord.objects.get(pk=handle.id)
    assert record.status == "scheduled"
    assert before + dt.timedelta(seconds=3599) < record.scheduled_for < timezone.now() + dt.timedelta(hours=1)
    assert get_queue().count == 0  # nothing in Redis until it is due
    assert promote_due(timezone.now()) == 0
    assert JobRecord.objects.get(pk=handle.id).status == "scheduled"


@db
def test_enqueue_in_enqueue_at_and_eta() -> None:
    in_a_week = add.enqueue_in(dt.timedelta(days=7), 1, b=2)
    at_noon = add.enqueue_at(timezone.now() + dt.timedelta(days=14), 3, 4)  # two weeks: fine
    with_eta = add.apply_async((5, 6), eta=timezone.now() + dt.timedelta(minutes=5))
    rows = JobRecord.objects.in_bulk([in_a_week.id, at_noon.id, with_eta.id])
    assert {row.status for row in rows.values()} == {"scheduled"}
    assert rows[in_a_week.id].kwargs == {"b": 2}


@db
def test_naive_eta_is_read_in_settings_time_zone(settings: Any) -> None:
    settings.TIME_ZONE = "America/New_York"
    naive = dt.datetime(2099, 1, 15, 9, 30)
    handle = add.apply_async((1, 1), eta=naive)
    scheduled_for = JobRecord.objects.get(pk=handle.id).scheduled_for
    assert scheduled_for == dt.datetime(2099, 1, 15, 14, 30, tzinfo=dt.UTC)  # 09:30 EST is 14:30 UTC


@db
def test_a_time_in_the_past_runs_now() -> None:
    handle = add.apply_async((1, 1), eta=timezone.now() - dt.timedelta(hours=1))
    assert JobRecord.objects.get(pk=handle.id).status == "queued"
    assert handle.id in get_queue().get_job_ids()
    assert add.apply_async((1, 1), countdown=0).status == "queued"


@db
def test_bad_delays_are_clear_errors() -> None:
    with pytest.raises(TypeError, match="countdown or eta, not both"):
        add.apply_async((1, 1), countdown=5, eta=timezone.now())
    with pytest.raises(TypeError, match="countdown must be seconds or a timedelta"):
        add.apply_async((1, 1), countdown="5")
    with pytest.raises(TypeError, match="eta must be a datetime"):
        add.apply_async((1, 1), eta="tomorrow")
    assert JobRecord.objects.count() == 0


@db
def test_rolled_back_delay_schedules_nothing() -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        handle = add.enqueue_in(dt.timedelta(seconds=1), 1, 1)
        raise RuntimeError
    assert not JobRecord.objects.filter(pk=handle.id).exists()


@pytest.mark.slow
@db
def test_due_job_survives_a_redis_flush_and_runs(redis: Any, manage: Any) -> None:
    handle = add.apply_async((20, 22), countdown=1)
    redis.flushall()  # Redis loses everything; the row still holds the job
    wait_for(lambda: timezone.now() >= JobRecord.objects.get(pk=handle.id).scheduled_for)
    result = manage("rqworker", "default", "--burst", "--with-scheduler")
    assert result.returncode == 0, result.stderr
    assert handle.wait(timeout=5) == 42


@db
def test_canceled_before_due_never_runs() -> None:
    handle = add.apply_async((1, 1), countdown=1)
    assert handle.cancel() is True
    due = JobRecord.objects.get(pk=handle.id).scheduled_for
    assert promote_due(due + dt.timedelta(seconds=1)) == 0  # the scheduler's pass once it is due
    assert JobRecord.objects.get(pk=handle.id).status == "canceled"


@pytest.mark.slow
@db
def test_running_scheduler_moves_due_rows_and_survives_a_restart() -> None:
    scheduler = start_manage("rqscheduler", "--interval", "0.2", "--lock-ttl", "2")
    try:
        first = add.apply_async((1, 1), countdown=1)
        wait_for(lambda: first.status == "queued")
    finally:
        stop(scheduler)
    second = add.apply_async((2, 2), countdown=1)
    wait_for(lambda: timezone.now() >= JobRecord.objects.get(pk=second.id).scheduled_for)
    assert second.status == "scheduled"  # due, and no scheduler running: it waits in the database
    scheduler = start_manage("rqscheduler", "--interval", "0.2", "--lock-ttl", "2")
    try:
        wait_for(lambda: second.status == "queued")
    finally:
        stop(scheduler)
    assert set(get_queue().get_job_ids()) == {first.id, second.id}


# -- periodic jobs ------------------------------------------------------------------------


@db
def test_code_schedules_sync_idempotently_and_removed_ones_are_disabled(settings: Any) -> None:
    settings.DJANGO_JOBS = {
        "SCHEDULE": {"sums": {"func": "tests.testapp.jobs.add", "interval": 60, "args": [1, 2]}}
    }
    first = sync_schedules()
    assert "sums" in first["created"] and "tests.testapp.jobs.nightly_cleanup" in first["created"]
    assert sync_schedules() == {"created": [], "updated": [], "disabled": [], "drift": []}
    assert PeriodicJob.objects.filter(name="sums").count() == 1
    nightly = PeriodicJob.objects.get(name=nightly_cleanup.name)
    assert (nightly.cron, nightly.timezone, nightly.queue, nightly.source) == (
        "0 3 * * *",
        "Europe/Paris",
        "low",
        "code",
    )

    settings.DJANGO_JOBS = {}
    assert sync_schedules()["disabled"] == ["sums"]
    row = PeriodicJob.objects.get(name="sums")  # kept, with its history
    assert row.enabled is False

    settings.DJANGO_JOBS = {
        "SCHEDULE": {"sums": {"func": "tests.testapp.jobs.add", "interval": 60, "args": [1, 2]}}
    }
    assert sync_schedules()["updated"] == ["sums"]
    assert PeriodicJob.objects.get(name="sums").enabled is True


@db
def test_admin_edit_of_a_code_schedule_is_reported_as_drift(settings: Any, caplog: Any) -> None:
    settings.DJANGO_JOBS = {
        "SCHEDULE": {"sums": {"func": "tests.testapp.jobs.add", "interval": 60, "args": [1, 2]}}
    }
    sync_schedules()
    PeriodicJob.objects.filter(name="sums").update(interval=120)
    report = sync_schedules()
    assert report["drift"] == ["sums"]
    assert PeriodicJob.objects.get(name="sums").drift == ["interval"]
    assert PeriodicJob.objects.get(name="sums").interval == 120  # the admin's value is used
    assert "no longer matches the code" in caplog.text


@db
def test_each_run_is_a_job_record_linked_to_its_schedule() -> None:
    periodic = PeriodicJob.objects.create(
        name="every minute",
        func_name="tests.testapp.jobs.add",
        args=[2, 3],
        interval=60,
        next_run_at=timezone.now(),
    )
    assert run_periodic(timezone.now(), dt.timedelta(seconds=5)) == 1
    periodic.refresh_from_db()
    run = JobRecord.objects.get(periodic_job=periodic)
    assert (run.func_name, run.args, run.status) == ("tests.testapp.jobs.add", [2, 3], "queued")
    assert periodic.last_run_id == run.id and periodic.total_runs == 1
    assert periodic.next_run_at > timezone.now()
    assert run_periodic(timezone.now(), dt.timedelta(seconds=5)) == 0  # not due again yet


@db
@pytest.mark.parametrize(("policy", "runs"), [(MissedRunPolicy.SKIP, 0), (MissedRunPolicy.RUN_ONCE, 1)])
def test_missed_runs_policy(policy: str, runs: int) -> None:
    periodic = PeriodicJob.objects.create(
        name="hourly",
        func_name="tests.testapp.jobs.add",
        args=[1, 1],
        interval=600,
        missed_runs=policy,
        next_run_at=timezone.now() - dt.timedelta(hours=5),  # the scheduler was down for hours
    )
    assert run_periodic(timezone.now(), dt.timedelta(seconds=5)) == runs
    periodic.refresh_from_db()
    assert JobRecord.objects.filter(periodic_job=periodic).count() == runs
    assert timezone.now() < periodic.next_run_at <= timezone.now() + dt.timedelta(seconds=600)


@db
def test_invalid_cron_is_a_clear_error() -> None:
    row = PeriodicJob(name="bad", func_name="tests.testapp.jobs.add", cron="61 * * * *")
    with pytest.raises(ValidationError) as info:
        row.full_clean()
    assert "not a valid cron expression" in str(info.value)
    with pytest.raises(ValueError, match="not a valid cron expression"):
        from django_jobs import job

        job(cron="every day")(add.func)
    with pytest.raises(ValidationError, match="exactly one"):
        validate_schedule("0 3 * * *", 60, "")
    with pytest.raises(ValidationError, match="Unknown time zone"):
        validate_schedule("0 3 * * *", None, "Mars/Olympus")


def test_cron_keeps_local_wall_time_across_dst() -> None:
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    before = dt.datetime(2026, 3, 27, 12, 0, tzinfo=paris)  # the night of 29 March moves the clocks forward
    first = next_cron_run("0 3 * * *", "Europe/Paris", before)
    second = next_cron_run("0 3 * * *", "Europe/Paris", first)
    assert first.astimezone(paris).hour == second.astimezone(paris).hour == 3
    assert first == dt.datetime(2026, 3, 28, 2, 0, tzinfo=dt.UTC)  # 03:00 CET
    assert second == dt.datetime(2026, 3, 29, 1, 0, tzinfo=dt.UTC)  # 03:00 CEST
    assert (second - first) == dt.timedelta(hours=23)  # the short day


def test_a_repeated_wall_clock_time_runs_once_when_clocks_go_back() -> None:
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    runs = [dt.datetime(2026, 10, 24, 12, tzinfo=dt.UTC)]
    for _ in range(3):
        runs.append(next_cron_run("30 2 * * *", "Europe/Paris", runs[-1]))
    local = [run.astimezone(paris) for run in runs[1:]]
    assert [moment.day for moment in local] == [25, 26, 27]  # 25 October has 02:30 twice: one run
    assert {(moment.hour, moment.minute) for moment in local} == {(2, 30)}


# -- property tests ----------------------------------------------------------------------------

CRONS = st.sampled_from(
    ["*/5 * * * *", "0 3 * * *", "30 2 * * *", "15 */2 * * 1-5", "0 0 1 * *", "0 12 * * 0"]
)
ZONES = st.sampled_from(["UTC", "Europe/Paris", "America/New_York", "Australia/Sydney"])
MOMENTS = st.datetimes(min_value=dt.datetime(2024, 1, 1), max_value=dt.datetime(2030, 12, 31)).map(
    lambda moment: moment.replace(tzinfo=dt.UTC)
)


@hypothesis_settings(max_examples=300, deadline=None)
@given(cron=CRONS, zone=ZONES, now=MOMENTS)
@example(cron="30 2 * * *", zone="Europe/Paris", now=dt.datetime(2024, 3, 30, 2, 0, tzinfo=dt.UTC))
def test_next_cron_run_is_after_now_and_matches_croniter(cron: str, zone: str, now: dt.datetime) -> None:
    following = next_cron_run(cron, zone, now)
    assert following > now
    tz = zoneinfo.ZoneInfo(zone)
    local = following.astimezone(tz)
    if not croniter.match(cron, local.replace(tzinfo=None)):
        # A wall-clock time the clocks skip when they go forward (02:30 on the spring-forward day
        # in Paris) runs right after the change, at the first time that exists (as croniter has it).
        before = (following - dt.timedelta(seconds=1)).astimezone(tz)
        skipped = local.utcoffset() - before.utcoffset()  # type: ignore[operator]
        assert skipped > dt.timedelta(0)
        gap_start = local.replace(tzinfo=None) - skipped
        minutes = int(skipped.total_seconds() // 60)
        assert any(croniter.match(cron, gap_start + dt.timedelta(minutes=m)) for m in range(minutes))
    # It is croniter's own next run from now on the schedule's local wall clock, unless that
    # one repeats a wall-clock time already passed (the hour after the clocks go back).
    local_now = now.astimezone(zoneinfo.ZoneInfo(zone))
    expected = croniter(cron, local_now).get_next(dt.datetime)
    if expected.replace(tzinfo=None) > local_now.replace(tzinfo=None):
        assert following == expected.astimezone(dt.UTC)
    else:
        assert following > expected


@hypothesis_settings(max_examples=200, deadline=None)
@given(interval=st.integers(min_value=1, max_value=7 * 86400), now=MOMENTS)
def test_next_interval_run_is_after_now(interval: int, now: dt.datetime) -> None:
    assert next_run("", interval, "", now) == now + dt.timedelta(seconds=interval)


@hypothesis_settings(max_examples=100, deadline=None)
@given(hour=st.integers(min_value=0, max_value=23), day=st.integers(min_value=20, max_value=35))
def test_daily_cron_keeps_its_hour_across_spring_and_autumn_changes(hour: int, day: int) -> None:
    zone = "Europe/Paris"
    paris = zoneinfo.ZoneInfo(zone)
    for month in (3, 10):  # DST starts in March, ends in October
        start = dt.datetime(2026, month, 1, tzinfo=dt.UTC) + dt.timedelta(days=day)
        run = next_cron_run(f"0 {hour} * * *", zone, start)
        local = run.astimezone(paris)
        if hour == 2 and local.hour == 3:
            continue  # 02:00 does not exist on the spring-forward day: croniter moves it to 03:00
        assert local.hour == hour and local.minute == 0


# -- two schedulers, one leader -------------------------------------------------------------------------


@pytest.mark.slow
@db
def test_two_schedulers_fire_each_run_once_and_the_standby_takes_over(redis: Any) -> None:
    schedule = {"every-second": {"func": "tests.testapp.jobs.add", "interval": 1, "args": [1, 1]}}
    a = start_manage("rqscheduler", "--interval", "0.2", "--lock-ttl", "2", "--name", "a", schedule=schedule)
    b = start_manage("rqscheduler", "--interval", "0.2", "--lock-ttl", "2", "--name", "b", schedule=schedule)
    processes = {"a": a, "b": b}
    try:

        def runs() -> list[dt.datetime]:
            """The due time of every run started so far (kept as the run's scheduled_for)."""
            return list(
                JobRecord.objects.filter(periodic_job__name="every-second")
                .order_by("scheduled_for")
                .values_list("scheduled_for", flat=True)
            )

        first = wait_for(runs)[0]
        wait_for(lambda: runs()[-1] >= first + dt.timedelta(seconds=20), timeout=60)
        window = [due for due in runs() if due < first + dt.timedelta(seconds=20)]
        print(f"runs due in the first 20 s with two schedulers: {len(window)}")
        assert 19 <= len(window) <= 21
        assert len(runs()) == len(set(runs()))  # no run was fired twice

        leader = redis.get(LEADER_KEY).decode()
        standby = "b" if leader == "a" else "a"
        processes[leader].kill()  # SIGKILL: no chance to release the lease
        processes[leader].wait()
        killed_at = timezone.now()
        wait_for(lambda: (redis.get(LEADER_KEY) or b"").decode() == standby, timeout=10)
        wait_for(lambda: runs()[-1] > killed_at + dt.timedelta(seconds=3), timeout=10)
        assert len(runs()) == len(set(runs()))  # still one run per due time
    finally:
        for process in processes.values():
            stop(process)


@pytest.mark.slow
@db
def test_rqscheduler_flags_are_checked(manage: Any) -> None:
    result = manage("rqscheduler", "--interval", "2", "--lock-ttl", "1")
    assert result.returncode == 1
    assert "--lock-ttl (1.0) must be longer than --interval (2.0)" in result.stderr


# -- migration from rq-scheduler ------------------------------------------------------------------------


@db
def test_rq_scheduler_jobs_keep_running_under_the_lease(settings: Any, redis: Any, caplog: Any) -> None:
    rq_scheduler = pytest.importorskip("rq_scheduler", reason="the rq-scheduler extra is not installed")
    from django.core.management import call_command

    from django_jobs.testing import run_burst

    settings.DJANGO_JOBS = {"SERIALIZER": "pickle"}  # rq-scheduler writes pickled jobs
    legacy = rq_scheduler.Scheduler(connection=redis)
    job = legacy.enqueue_at(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1), "tests.testapp.jobs.add", 2, 3)
    repeating = legacy.schedule(dt.datetime.now(dt.UTC), "tests.testapp.jobs.add", args=[1, 1], interval=3600)
    call_command("rqscheduler", "--burst")
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
    run_burst(["default"])
    assert JobRecord.objects.get(pk=job.id).result == 5
    assert JobRecord.objects.get(pk=repeating.id).result == 2
    assert repeating.id in legacy  # rq-scheduler put its next run back


@pytest.mark.slow
@db
def test_without_rq_scheduler_the_command_says_how_to_migrate(redis: Any) -> None:
    redis.zadd("rq:scheduler:scheduled_jobs", {"some-old-job": 0})
    code = (
        "import sys; sys.modules['rq_scheduler'] = None\n"  # as if the package were not installed
        "from django.core.management import execute_from_command_line\n"
        "execute_from_command_line(['manage.py', 'rqscheduler', '--burst'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=manage_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "1 job(s) scheduled with rq-scheduler wait in Redis" in result.stderr
    assert "pip install 'django-jobs[rq-scheduler]'" in result.stderr


@pytest.mark.slow
@db
def test_rqworker_with_scheduler_hosts_the_loop(redis: Any) -> None:
    worker = start_manage("rqworker", "default", "--with-scheduler")
    try:
        handle = add.apply_async((4, 5), countdown=1)
        assert handle.wait(timeout=60) == 9
        wait_for(lambda: redis.get(LEADER_KEY))  # its scheduler holds the lease
    finally:
        output = stop(worker)[1]
    assert "Traceback" not in output, output
