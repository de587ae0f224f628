"""The scheduler loop: one leader at a time moves due jobs into their queues.

Every ``interval`` seconds the leader

- moves ``scheduled`` rows whose ``scheduled_for`` has passed into their RQ
  queues (the database holds the future, so a Redis flush loses nothing);
- starts the runs of due :class:`~django_jobs.models.PeriodicJob` rows;
- repairs Redis from the database (``recovery.py``): pushes rows whose push
  failed or whose job Redis lost, ends or retries the jobs of dead workers,
  and writes back outcomes kept in Redis during a database outage;
- deletes rows past their retention (``DJANGO_JOBS["RETENTION"]``), one
  batch of at most 10,000 rows per tick.

Leadership is a Redis key set with NX and a TTL that the leader renews on
every tick; a standby takes over once the key expires (within the TTL of
the leader's death). Each run of a periodic job is also claimed with a
conditional update on ``next_run_at``, so even two leaders could not fire
the same run twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from redis import Redis
from redis.exceptions import RedisError

from . import outcomes, records, recovery, removals, retention
from .conf import conf
from .cron import next_run
from .db.connections import reset_database_connections
from .enqueue import enqueue
from .models import JobRecord, JobStatus, MissedRunPolicy, PeriodicJob
from .push import push
from .queues import get_connection
from .registry import registry
from .spec import JobSpec

logger = logging.getLogger("django_jobs.scheduler")

LEADER_KEY = "django_jobs:scheduler:leader"

#: Seconds between two looks for rows past their retention, when the last look found none.
PRUNE_CHECK_INTERVAL = 60.0

# Renew only our own lock; take it if free.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class LeaderLock:
    """A Redis lease: held by one scheduler, renewed by it, expiring if it dies."""

    def __init__(self, connection: Redis, ttl: float, identity: str) -> None:
        self.connection = connection
        self.ttl_ms = max(1, int(ttl * 1000))
        self.identity = identity
        self._acquire = connection.register_script(_ACQUIRE)
        self._release = connection.register_script(_RELEASE)

    def acquire(self) -> bool:
        """Take or renew the lease; return whether this scheduler leads now."""
        return bool(self._acquire(keys=[LEADER_KEY], args=[self.identity, self.ttl_ms]))

    def release(self) -> None:
        self._release(keys=[LEADER_KEY], args=[self.identity])

    def holder(self) -> str | None:
        value = self.connection.get(LEADER_KEY)
        return value.decode() if isinstance(value, bytes) else value


def promote_due(now: datetime, batch: int = 500) -> int:
    """Move due ``scheduled`` rows into their queues; return how many were pushed."""
    using = records.db_alias()
    pushed = 0
    while True:
        ids = list(
            JobRecord.objects.using(using)
            .filter(status=JobStatus.SCHEDULED, scheduled_for__lte=now)
            .order_by("scheduled_for")
            .values_list("pk", flat=True)[:batch]
        )
        if not ids:
            return pushed
        records.claim_due(ids, using)
        # Rows canceled between the select and the claim stay canceled and are not pushed.
        rows = JobRecord.objects.using(using).filter(pk__in=ids, status=JobStatus.QUEUED, needs_push=False)
        for row in rows.values("pk", "func_name", "queue", "args", "kwargs", "options"):
            push(JobSpec.from_row(row, using))
            pushed += 1
        if len(ids) < batch:
            return pushed


#: Where rq-scheduler (django-rq's get_scheduler()) keeps its jobs.
RQ_SCHEDULER_KEY = "rq:scheduler:scheduled_jobs"

RQ_SCHEDULER_MISSING = (
    "{count} job(s) scheduled with rq-scheduler wait in Redis ({key}) and rq-scheduler is not installed, "
    "so nothing will run them. Install it (pip install 'django-jobs[rq-scheduler]'): rqscheduler then "
    "queues them when due, under its leader lease. Or re-create them with .enqueue_at()/.enqueue_in() "
    "or as periodic jobs (@job(cron=…) or DJANGO_JOBS['SCHEDULE']); see docs/scheduling.md."
)


def rq_scheduler_backlog(connection: Redis) -> int:
    """How many jobs rq-scheduler holds in Redis."""
    return int(connection.zcard(RQ_SCHEDULER_KEY))


def promote_rq_scheduler_jobs(connection: Redis) -> int | None:
    """Queue the due jobs of rq-scheduler (it re-schedules repeats and cron jobs itself).

    Returns how many were queued, or None when rq-scheduler is not installed.
    """
    try:
        from rq_scheduler import Scheduler as RQScheduler  # optional dependency: the "rq-scheduler" extra
    except ImportError:
        return None
    legacy = RQScheduler(connection=connection)
    due = list(legacy.get_jobs_to_queue())
    for job in due:
        legacy.enqueue_job(job)
    return len(due)


def start_run(periodic: PeriodicJob, due_at: datetime | None = None) -> JobRecord | None:
    """Enqueue one run of ``periodic`` now, without touching its schedule.

    ``due_at`` (the run's time in the schedule) is kept as the run's ``scheduled_for``.
    """
    function = registry.get(periodic.func_name)
    if function is None:
        logger.error(
            "Periodic job %r names %r, which is not a @job function of this project; run skipped. "
            "Fix its function in the admin or in code.",
            periodic.name,
            periodic.func_name,
        )
        return None
    job_id = enqueue(
        function,
        tuple(periodic.args or ()),
        dict(periodic.kwargs or {}),
        queue=periodic.queue or None,
        periodic_job_id=periodic.pk,
        due_at=due_at,
    )
    return JobRecord.objects.using(records.db_alias()).get(pk=job_id)


def run_periodic(now: datetime, late_after: timedelta) -> int:
    """Start the due runs of periodic jobs; return how many runs were started."""
    started = 0
    due = PeriodicJob.objects.using(records.db_alias()).filter(enabled=True, next_run_at__lte=now)
    for periodic in due.order_by("next_run_at"):
        was_due = periodic.next_run_at
        assert was_due is not None
        following = next_run(periodic.cron, periodic.interval, periodic.timezone, was_due)
        while following <= now:  # runs missed while no scheduler ran
            following = next_run(periodic.cron, periodic.interval, periodic.timezone, following)
        missed = now - was_due > late_after
        run = not missed or periodic.missed_runs == MissedRunPolicy.RUN_ONCE
        with transaction.atomic(using=records.db_alias()):
            claimed = (
                PeriodicJob.objects.using(records.db_alias())
                .filter(pk=periodic.pk, next_run_at=was_due, enabled=True)
                .update(next_run_at=following)
            )
            if not claimed:
                continue  # someone else took this run
            if not run:
                logger.info("Periodic job %r: skipped runs missed since %s", periodic.name, was_due)
                continue
            record = start_run(periodic, due_at=was_due)
            if record is None:
                continue
            PeriodicJob.objects.using(records.db_alias()).filter(pk=periodic.pk).update(
                last_run_at=now, last_run=record, total_runs=F("total_runs") + 1
            )
            started += 1
    return started


def declared_schedules() -> dict[str, dict[str, Any]]:
    """Schedules in code: ``@job(cron=…/interval=…)`` and ``DJANGO_JOBS["SCHEDULE"]``."""
    declared: dict[str, dict[str, Any]] = {}
    for function in registry.values():
        if function.cron or function.interval:
            declared[function.name] = {
                "func_name": function.name,
                "args": [],
                "kwargs": {},
                "queue": function.queue_name or "",
                "cron": function.cron or "",
                "interval": function.interval,
                "timezone": function.schedule_timezone or "",
                "missed_runs": function.missed_runs,
            }
    for name, entry in conf.schedule.items():
        declared[name] = {
            "func_name": entry["func"],
            "args": list(entry.get("args", [])),
            "kwargs": dict(entry.get("kwargs", {})),
            "queue": entry.get("queue", ""),
            "cron": entry.get("cron", ""),
            "interval": entry.get("interval"),
            "timezone": entry.get("timezone", ""),
            "missed_runs": entry.get("missed_runs", MissedRunPolicy.SKIP),
        }
    return declared


def sync_schedules(now: datetime | None = None) -> dict[str, list[str]]:
    """Make the PeriodicJob rows match the schedules in code; idempotent.

    New schedules are created, changed ones updated (and re-enabled), removed
    ones disabled (never deleted). A row edited in the admin since is left as
    it is and reported as drift.
    """
    now = now or timezone.now()
    using = records.db_alias()
    report: dict[str, list[str]] = {"created": [], "updated": [], "disabled": [], "drift": []}
    declared = declared_schedules()
    for name, definition in declared.items():
        row = PeriodicJob.objects.using(using).filter(name=name).first()
        if row is None:
            try:
                PeriodicJob.objects.using(using).create(
                    name=name,
                    source="code",
                    code_definition=definition,
                    next_run_at=next_run(
                        definition["cron"], definition["interval"], definition["timezone"], now
                    ),
                    **definition,
                )
            except IntegrityError:
                continue  # another scheduler created it at the same moment
            report["created"].append(name)
        elif row.source != "code" or row.code_definition != definition:
            # New in code, or changed in code since the last sync: the code wins.
            schedule = (definition["cron"], definition["interval"], definition["timezone"])
            moved = (row.cron, row.interval, row.timezone) != schedule
            for key, value in definition.items():
                setattr(row, key, value)
            row.source, row.code_definition, row.enabled = "code", definition, True
            if moved or row.next_run_at is None:
                row.next_run_at = next_run(row.cron, row.interval, row.timezone, now)
            row.save(using=using)
            report["updated"].append(name)
        elif row.drift:
            report["drift"].append(name)
            logger.warning(
                "Periodic job %r was edited in the admin (%s) and no longer matches the code; "
                "the admin's values are used.",
                name,
                ", ".join(row.drift),
            )
    removed = (
        PeriodicJob.objects.using(using).filter(source="code", enabled=True).exclude(name__in=list(declared))
    )
    report["disabled"] = list(removed.values_list("name", flat=True))
    # Forget the old definition too, so that putting it back in code enables it again.
    removed.update(enabled=False, code_definition=None)
    return report


class Scheduler:
    """The loop behind ``manage.py rqscheduler`` (and ``rqworker --with-scheduler``)."""

    def __init__(self, interval: float = 1.0, lock_ttl: float = 10.0, name: str | None = None) -> None:
        self.interval = interval
        self.lock_ttl = lock_ttl
        self.name = name or f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
        self.lock = LeaderLock(get_connection(), lock_ttl, self.name)
        self.leading = False
        self.synced = False
        self.warned_rq_scheduler = False
        self.stop_event = threading.Event()
        self.orphans = recovery.OrphanWatch(grace=conf.orphan_grace)
        self.reconciled_at = float("-inf")
        self.prune_at = float("-inf")

    def tick(self) -> dict[str, int]:
        """One pass: renew or take the lead; if leading, do the due work."""
        try:
            leading = self.lock.acquire()
        except (RedisError, OSError) as exc:
            logger.warning("Scheduler %s: Redis unreachable (%s); will retry.", self.name, exc)
            leading = False
        if leading != self.leading:
            logger.info("Scheduler %s: %s", self.name, "now the leader" if leading else "standing by")
            self.leading = leading
        if not leading:
            return {"promoted": 0, "periodic": 0, "pushed": 0, "orphans": 0}
        if not self.synced:
            report = sync_schedules()
            logger.info("Scheduler %s: schedules synced from code: %s", self.name, report)
            self.synced = True
        now = timezone.now()
        late_after = timedelta(seconds=max(5.0, 3 * self.interval))
        done = {"promoted": promote_due(now), "periodic": run_periodic(now, late_after)}
        done.update(self.repair(now))
        done["pruned"] = self.prune(now)
        legacy = promote_rq_scheduler_jobs(self.lock.connection)
        if legacy is None:
            backlog = rq_scheduler_backlog(self.lock.connection)
            if backlog and not self.warned_rq_scheduler:
                logger.warning(RQ_SCHEDULER_MISSING.format(count=backlog, key=RQ_SCHEDULER_KEY))
                self.warned_rq_scheduler = True
        else:
            done["promoted"] += legacy
        return done

    def repair(self, now: datetime) -> dict[str, int]:
        """Make Redis agree with the database again (see ``recovery.py``)."""
        connection = self.lock.connection
        # Outcomes kept in Redis during a database outage go first: a job that ended
        # while the database was away must not be taken for an orphan.
        if outcomes.pending(connection):
            outcomes.replay_spool(connection)
        # Jobs of rows canceled or deleted while Redis was away leave it now.
        removals.sweep(now)
        pushed = recovery.push_pending(now)
        lost = recovery.redis_lost_data(connection, self.name)
        if lost or time.monotonic() - self.reconciled_at >= conf.reconcile_interval:
            if lost:
                logger.warning("Scheduler %s: Redis has lost its data (or is new); reconciling.", self.name)
            pushed += recovery.reconcile(now)
            self.reconciled_at = time.monotonic()
            if lost:
                # Rows enqueued just before the loss were left alone (their push might have been
                # in flight): look at them again once that grace is over, not in RECONCILE_INTERVAL.
                grace = recovery.PUSH_GRACE.total_seconds() + 1
                self.reconciled_at -= max(0.0, conf.reconcile_interval - grace)
        return {"pushed": len(pushed), "orphans": len(self.orphans.recover(now))}

    def prune(self, now: datetime) -> int:
        """Delete one batch of rows past their retention; look again soon only if there is more."""
        if time.monotonic() < self.prune_at:
            return 0
        pruned = retention.prune_some(now)
        # Rows went: more may be due (this status, or the next), so the next tick goes on.
        # Nothing was due: look again in a minute.
        self.prune_at = time.monotonic() + (0 if pruned else PRUNE_CHECK_INTERVAL)
        return pruned

    def run(self, burst: bool = False) -> None:
        """Tick every ``interval`` seconds until stopped (or once, with ``burst``)."""
        logger.info(
            "Scheduler %s: started (interval %ss, lock TTL %ss)", self.name, self.interval, self.lock_ttl
        )
        try:
            while not self.stop_event.is_set():
                started = time.monotonic()
                reset_database_connections()
                try:
                    done = self.tick()
                    if any(done.values()):
                        logger.info(
                            "Scheduler %s: queued %d due jobs, started %d periodic runs, pushed %d "
                            "lost jobs again, recovered %d jobs of dead workers, pruned %d old rows",
                            self.name,
                            done["promoted"],
                            done["periodic"],
                            done.get("pushed", 0),
                            done.get("orphans", 0),
                            done.get("pruned", 0),
                        )
                except Exception:
                    logger.exception("Scheduler %s: tick failed; trying again", self.name)
                if burst:
                    return
                self.stop_event.wait(max(0.0, self.interval - (time.monotonic() - started)))
        finally:
            if self.leading:
                with contextlib.suppress(RedisError, OSError):
                    self.lock.release()
            logger.info("Scheduler %s: stopped", self.name)

    def stop(self, *args: Any) -> None:
        self.stop_event.set()
