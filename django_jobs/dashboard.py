"""What the jobs dashboard shows: Redis's live counts, the database's, workers, a chart."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count
from django.db.models.functions import TruncHour, TruncMinute
from django.utils import timezone
from redis.exceptions import RedisError
from rq import Worker

from . import pauses, records
from .models import FINAL_STATUSES, JobRecord, JobStatus
from .queues import get_queue, queue_config, queue_names


def _redis_counts(name: str) -> dict[str, Any]:
    queue = get_queue(name)
    try:
        return {
            "queued": queue.count,
            "started": queue.started_job_registry.count,
            "scheduled": queue.scheduled_job_registry.count,
            "deferred": queue.deferred_job_registry.count,
            "failed": queue.failed_job_registry.count,
            "paused": pauses.is_paused(name),
            "error": None,
        }
    except (RedisError, OSError) as exc:
        return {"error": f"Redis unreachable: {exc}"}


def _workers() -> list[dict[str, Any]]:
    seen: set[str] = set()
    rows = []
    for name in queue_names():
        queue = get_queue(name)
        try:
            workers = Worker.all(queue=queue)
        except (RedisError, OSError):
            continue
        for worker in workers:
            if worker.name in seen:
                continue
            seen.add(worker.name)
            rows.append(
                {
                    "name": worker.name,
                    "state": worker.get_state(),
                    "current_job": worker.get_current_job_id(),
                    "queues": ", ".join(worker.queue_names()),
                    "last_heartbeat": worker.last_heartbeat,
                    "successful": worker.successful_job_count,
                    "failed": worker.failed_job_count,
                }
            )
    return sorted(rows, key=lambda row: row["name"])


def _series(since: datetime, trunc: Any, step: timedelta, buckets: int) -> dict[str, Any]:
    # Whole buckets only: the first bar starts one step after the (truncated) start.
    first_bucket = trunc_to(since, step) + step
    rows = (
        JobRecord.objects.using(records.db_alias())
        .filter(ended_at__gte=first_bucket, status__in=[JobStatus.FINISHED, JobStatus.FAILED])
        .annotate(bucket=trunc("ended_at"))
        .order_by()
        .values("bucket", "status")
        .annotate(n=Count("pk"))
    )
    counts: dict[tuple[datetime, str], int] = {}
    for row in rows:
        counts[(timezone.localtime(row["bucket"]).replace(tzinfo=None), row["status"])] = row["n"]
    start = timezone.localtime(trunc_to(since, step)).replace(tzinfo=None)
    points = []
    for index in range(1, buckets + 1):
        moment = start + step * index
        points.append(
            {
                "at": moment,
                "finished": counts.get((moment, JobStatus.FINISHED), 0),
                "failed": counts.get((moment, JobStatus.FAILED), 0),
            }
        )
    return chart(points, step)


def trunc_to(moment: datetime, step: timedelta) -> datetime:
    moment = timezone.localtime(moment).replace(second=0, microsecond=0)
    return moment.replace(minute=0) if step >= timedelta(hours=1) else moment


def chart(points: list[dict[str, Any]], step: timedelta) -> dict[str, Any]:
    """Bars for an inline SVG: finished stacked under failed, one bar per bucket."""
    width, height = 720, 160
    peak = max([p["finished"] + p["failed"] for p in points] + [1])
    bar = width / len(points)
    bars = []
    for index, point in enumerate(points):
        finished_h = height * point["finished"] / peak
        failed_h = height * point["failed"] / peak
        bars.append(
            {
                "x": round(index * bar, 2),
                "w": round(max(bar - 1, 1), 2),
                "finished_y": round(height - finished_h, 2),
                "finished_h": round(finished_h, 2),
                "failed_y": round(height - finished_h - failed_h, 2),
                "failed_h": round(failed_h, 2),
                "label": f"{point['at']:%H:%M}: {point['finished']} finished, {point['failed']} failed",
            }
        )
    return {
        "bars": bars,
        "width": width,
        "height": height,
        "peak": peak,
        "finished": sum(p["finished"] for p in points),
        "failed": sum(p["failed"] for p in points),
        "first": points[0]["at"],
        "last": points[-1]["at"],
    }


def snapshot() -> dict[str, Any]:
    """Everything the dashboard page shows, read now."""
    now = timezone.now()
    jobs = JobRecord.objects.using(records.db_alias()).order_by()
    # Two indexed counts rather than a GROUP BY over the whole table: jobs not yet
    # ended (by status), and jobs that ended in the last 24 hours (by ended_at).
    waiting = jobs.filter(status__in=[s for s in JobStatus.values if s not in FINAL_STATUSES])
    ended = jobs.filter(ended_at__gte=now - timedelta(days=1), status__in=list(FINAL_STATUSES))
    by_queue: dict[str, dict[str, int]] = {}
    for queryset in (waiting, ended):
        for row in queryset.values("queue", "status").annotate(n=Count("pk")):
            by_queue.setdefault(row["queue"], {})[row["status"]] = row["n"]
    queues = [
        {"name": name, "redis": _redis_counts(name), "database": by_queue.get(name, {})}
        for name in queue_names()
    ]
    return {
        "queues": queues,
        "statuses": [status.value for status in JobStatus],
        "workers": _workers(),
        "last_hour": _series(now - timedelta(hours=1), TruncMinute, timedelta(minutes=1), 60),
        "last_day": _series(now - timedelta(days=1), TruncHour, timedelta(hours=1), 24),
        "generated_at": now,
    }


def toggle_pause(name: str, do: str) -> str:
    """Pause or resume a queue from the dashboard; return what happened."""
    queue_config(name)  # an unknown name raises, listing the configured queues
    if do not in ("pause", "resume"):
        raise ValueError(f"Unknown dashboard action {do!r}: use pause or resume.")
    if do == "pause":
        pauses.pause(name)
        return f"Queue {name!r} paused: workers take no new jobs from it until it is resumed."
    pauses.resume(name)
    return f"Queue {name!r} resumed."
