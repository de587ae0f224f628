"""Bring Redis back in line with the database: lost pushes, lost queues, dead workers.

The database is the truth for every job that is not final (see DESIGN.md).
Three things can make Redis disagree with it, and each is repaired here:

- a push that failed at enqueue (Redis was down): the row has
  ``needs_push``; :func:`push_pending` pushes it once Redis answers;
- Redis restarted empty, lost keys, or a worker took a job from its queue
  and died before starting it: :func:`reconcile` pushes every ``queued`` or
  ``deferred`` row whose job RQ no longer holds, from its stored payload
  (``scheduled`` rows need nothing: the database holds them);
- a worker died mid-job (SIGKILL, OOM, a lost machine): its heartbeat key
  expires, and :func:`recover_orphans` gives the job's ``started`` row what a
  failed attempt gets: a retry if it has attempts left, else ``failed`` with
  a "worker died" error.

The scheduler loop runs all three; ``manage.py rqreconcile`` runs them on demand.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone
from redis import Redis
from rq.job import Job
from rq.worker import Worker as RQWorker

from . import outcomes, records, spool
from .claims import claimed_job_ids, claimed_key, claimers, release_claims
from .conf import conf
from .models import FINAL_STATUSES, JobDependency, JobRecord, JobStatus
from .push import push
from .queues import get_connection, get_queue
from .spec import JobSpec

logger = logging.getLogger("django_jobs.recovery")

#: A key the scheduler keeps in Redis: when it is gone, Redis lost its data.
EPOCH_KEY = "django_jobs:epoch"

#: Rows enqueued this recently are left alone: their push may still be on its way.
PUSH_GRACE = timedelta(seconds=10)

_PUSH_FIELDS = ("pk", "func_name", "queue", "args", "kwargs", "options", "status", "enqueued_at")


def _expired(row: dict[str, Any], now: datetime) -> bool:
    """Whether a waiting job outlived its ``ttl`` (RQ would have discarded it)."""
    ttl = row["options"].get("ttl")
    return bool(ttl) and ttl > 0 and row["enqueued_at"] + timedelta(seconds=ttl) < now


def push_pending(now: datetime | None = None, *, dry_run: bool = False) -> list[str]:
    """Push the rows whose push failed at enqueue (``needs_push``); return their ids."""
    now = now or timezone.now()
    using = records.db_alias()
    rows = (
        JobRecord.objects.using(using)
        .filter(needs_push=True, status=JobStatus.QUEUED)
        .order_by("enqueued_at")
        .values(*_PUSH_FIELDS)
    )
    return _push_all(list(rows), now, using, dry_run)


def _push_all(rows: list[dict[str, Any]], now: datetime, using: str, dry_run: bool) -> list[str]:
    pushed: list[str] = []
    for row in rows:
        if _expired(row, now):
            if not dry_run:
                ttl = row["options"]["ttl"]
                records.mark_failed(row["pk"], f"Expired: waited longer than its ttl ({ttl} s).")
            continue
        if dry_run:
            pushed.append(row["pk"])
            continue
        spec = JobSpec.from_row(row, using)
        if row["status"] == JobStatus.DEFERRED:
            spec = spec.with_options(_open_dependencies(row, using))
        if push(spec):
            records.clear_needs_push(row["pk"])
            pushed.append(row["pk"])
    return pushed


def _open_dependencies(row: dict[str, Any], using: str) -> dict[str, Any]:
    """The options of a deferred row, waiting only for dependencies that have not finished."""
    options = dict(row["options"])
    links = JobDependency.objects.using(using).filter(job_id=row["pk"])
    parents = list(links.values_list("depends_on_id", flat=True))
    unfinished = list(
        JobRecord.objects.using(using)
        .filter(pk__in=parents)
        .exclude(status=JobStatus.FINISHED)
        .values_list("pk", flat=True)
    )
    if unfinished:
        options["depends_on"] = unfinished
    else:
        options.pop("depends_on", None)
    return options


def _job_ids_in(queue_names: Iterable[str], *, started_only: bool = False) -> set[str]:
    """Job ids RQ holds for these queues: in the queues and their started, deferred and
    scheduled registries (``started_only``: the started registries alone).

    Read in one transaction per Redis server, so that a job moving from one
    place to the next (a worker taking it) is seen in one of them.
    """
    by_server: dict[int, list[Any]] = {}
    for name in queue_names:
        queue = get_queue(name)
        by_server.setdefault(id(queue.connection), []).append(queue)
    found: set[str] = set()
    for queues in by_server.values():
        with queues[0].connection.pipeline(transaction=True) as pipeline:
            for queue in queues:
                pipeline.zrange(queue.started_job_registry.key, 0, -1)
                if not started_only:
                    pipeline.lrange(queue.key, 0, -1)
                    pipeline.lrange(queue.intermediate_queue_key, 0, -1)
                    pipeline.zrange(queue.deferred_job_registry.key, 0, -1)
                    pipeline.zrange(queue.scheduled_job_registry.key, 0, -1)
            for members in pipeline.execute():
                for member in members:
                    text = member.decode() if isinstance(member, bytes) else str(member)
                    found.add(text.split(":", 1)[0])  # started entries are "job_id:execution_id"
    return found


def _live_job_ids(queue_names: Iterable[str]) -> set[str]:
    """Every job id RQ holds somewhere it will act on, that a batch worker took ahead, or
    whose outcome waits in the spool."""
    live = _job_ids_in(queue_names)
    # Read after the queues: a job a batch worker takes moves from its queue to its list.
    live |= claimed_job_ids(get_connection())
    # Read after the registries: a job that ended while the database was away has left them,
    # and its outcome waits in the spool. It ran; pushing it again would run it twice.
    return live | spool.job_ids(get_connection())


def reconcile(now: datetime | None = None, *, batch: int = 1000, dry_run: bool = False) -> list[str]:
    """Push every waiting row (``queued``, ``deferred``) whose job RQ no longer holds.

    "Holds" means in its queue, or in its started, deferred or scheduled
    registry, or with an outcome waiting in the spool: a job whose data Redis
    lost, and a job a worker took from its queue and died with before it
    started it, are both pushed again. Rows
    enqueued in the last :data:`PUSH_GRACE` are skipped (their push may be in
    flight). Returns the ids pushed (or that would be, with ``dry_run``).
    """
    now = now or timezone.now()
    using = records.db_alias()
    pushed: list[str] = []
    live = _live_job_ids(conf.queues)
    waiting = (
        JobRecord.objects.using(using)
        .filter(status__in=[JobStatus.QUEUED, JobStatus.DEFERRED], enqueued_at__lt=now - PUSH_GRACE)
        .order_by("enqueued_at", "pk")
    )
    last: tuple[datetime, str] | None = None
    while True:
        page = waiting
        if last is not None:
            page = page.filter(enqueued_at__gte=last[0]).exclude(enqueued_at=last[0], pk__lte=last[1])
        rows = list(page.values(*_PUSH_FIELDS)[:batch])
        if not rows:
            break
        last = (rows[-1]["enqueued_at"], rows[-1]["pk"])
        lost = {row["pk"] for row in rows if row["pk"] not in live}
        if lost:
            # Read again: a row may have moved on (started, canceled) since the page was read.
            still = set(
                JobRecord.objects.using(using)
                .filter(pk__in=lost, status__in=[JobStatus.QUEUED, JobStatus.DEFERRED])
                .values_list("pk", flat=True)
            )
            pushed += _push_all([row for row in rows if row["pk"] in still], now, using, dry_run)
        if len(rows) < batch:
            break
    if pushed:
        logger.warning("Pushed %d job(s) again that Redis had lost: %s", len(pushed), _sample(pushed))
    return pushed


def redis_lost_data(connection: Redis, identity: str) -> bool:
    """Whether Redis has no epoch key (first run, or it lost its data); sets the key again."""
    return bool(connection.set(EPOCH_KEY, identity, nx=True))


def worker_alive(connection: Redis, names: Iterable[str]) -> dict[str, bool]:
    """Whether each RQ worker still has its heartbeat key."""
    names = list(names)
    with connection.pipeline(transaction=False) as pipeline:
        for name in names:
            pipeline.exists(RQWorker.redis_worker_namespace_prefix + name)
        found = pipeline.execute()
    return {name: bool(exists) for name, exists in zip(names, found, strict=True)}


class OrphanWatch:
    """Finds ``started`` rows whose worker is gone, and ends or retries their attempt.

    A worker counts as gone once its heartbeat key has been missing for
    ``grace`` seconds in a row: a Redis restart also drops the keys of live
    workers, which write them again with their next heartbeat (at most
    ``JOB_MONITORING_INTERVAL`` seconds later).
    """

    def __init__(self, grace: float = 20.0) -> None:
        self.grace = grace
        self.missing_since: dict[str, float] = {}

    def dead_workers(self, connection: Redis, names: Iterable[str]) -> set[str]:
        now = time.monotonic()
        alive = worker_alive(connection, names)
        dead = set()
        for name, is_alive in alive.items():
            if is_alive:
                self.missing_since.pop(name, None)
                continue
            since = self.missing_since.setdefault(name, now)
            if now - since >= self.grace:
                dead.add(name)
        for name in list(self.missing_since):
            if name not in alive:
                del self.missing_since[name]
        return dead

    def recover(self, now: datetime | None = None, *, dry_run: bool = False) -> list[str]:
        """Handle the rows of dead workers, and give back the jobs that dead batch workers had
        taken ahead (to the front of their queue); return the ids of both."""
        now = now or timezone.now()
        using = records.db_alias()
        connection = get_connection()
        started = JobRecord.objects.using(using).filter(
            status=JobStatus.STARTED, started_at__lt=now - timedelta(seconds=self.grace)
        )
        by_worker: dict[str, list[str]] = {}
        for job_id, worker in started.values_list("pk", "worker_name"):
            by_worker.setdefault(worker, []).append(job_id)
        for job_id, worker in _started_in_rq_only(connection, now - timedelta(seconds=self.grace)):
            by_worker.setdefault(worker, []).append(job_id)
        holding = claimers(connection)
        if not by_worker and not holding:
            self.missing_since.clear()
            return []
        dead = self.dead_workers(connection, {*by_worker, *holding})
        orphans = [job_id for worker in sorted(dead) for job_id in by_worker.get(worker, [])]
        given_back = []
        for worker in sorted(dead.intersection(holding)):
            ids = connection.lrange(claimed_key(worker), 0, -1)
            given_back += [job_id.decode() if isinstance(job_id, bytes) else job_id for job_id in ids]
            if not dry_run and release_claims(connection, worker):
                logger.warning("Gave back %d job(s) that dead worker %s had taken ahead", len(ids), worker)
        if dry_run:
            return orphans + given_back
        for worker in sorted(dead):
            for job_id in by_worker.get(worker, []):
                recover_orphan(connection, job_id, worker)
        return orphans + given_back


def _started_in_rq_only(connection: Redis, before: datetime) -> list[tuple[str, str]]:
    """(job id, worker) of jobs RQ marked started whose rows still wait (the worker died in between)."""
    running = _job_ids_in(conf.queues, started_only=True)
    if not running:
        return []
    waiting = list(
        JobRecord.objects.using(records.db_alias())
        .filter(pk__in=running, status__in=[JobStatus.QUEUED, JobStatus.DEFERRED], enqueued_at__lt=before)
        .values_list("pk", flat=True)
    )
    if not waiting:
        return []
    with connection.pipeline(transaction=False) as pipeline:
        for job_id in waiting:
            pipeline.hget(Job.key_for(job_id), "worker_name")
        workers = pipeline.execute()
    return [
        (job_id, worker.decode() if isinstance(worker, bytes) else worker)
        for job_id, worker in zip(waiting, workers, strict=True)
        if worker
    ]


def recover_orphan(connection: Redis, job_id: str, worker: str) -> records.FailedAttempt:
    """End the attempt of a job whose worker died; retry it if it has attempts left."""
    error = (
        f"Worker {worker or '(unknown)'} died while running this job: its heartbeat stopped "
        "(killed, out of memory, or its machine was lost)."
    )
    outcome = records.mark_attempt_failed(job_id, error, error_types=None)
    logger.warning("Job %s: %s Now %s.", job_id, error, outcome.status)
    row = JobRecord.objects.using(records.db_alias()).filter(pk=job_id).values("queue").first()
    if row is not None:
        # RQ's started registry must not hold the dead attempt (its cleanup would fail the retry).
        try:
            queue = get_queue(row["queue"])
            job = queue.fetch_job(job_id)
            if job is not None:
                queue.started_job_registry.remove_executions(job)
        except Exception:  # an unknown queue now, or an unreadable job: nothing to clean
            logger.debug("No RQ bookkeeping to clean for job %s", job_id, exc_info=True)
    if outcome.status not in FINAL_STATUSES:
        outcomes.follow_up(job_id, outcome)
    return outcome


def _sample(ids: list[str], size: int = 5) -> str:
    more = f" and {len(ids) - size} more" if len(ids) > size else ""
    return ", ".join(ids[:size]) + more
