#!/usr/bin/env python
"""Prune a million old rows while jobs are being enqueued: does enqueueing stall?

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test python bench/prune_lock.py \
        [--rows 1000000] [--batch-size 10000] [--rate 200] [--json out.json] [--keep-db]
    python bench/prune_lock.py --rows 50000          # SQLite, in a temporary directory

On PostgreSQL the server named by DATABASE_URL gets a fresh database of its
own (``django_jobs_prune_bench``: dropped first if it exists, and at the end
unless ``--keep-db``); without a PostgreSQL URL a temporary SQLite file is
used. Redis: ``REDIS_URL`` if set, else a throwaway ``redis-server``.

The script fills ``--rows`` finished rows that ended 30 to 60 days ago (one
``INSERT … SELECT FROM generate_series`` on PostgreSQL, ``bulk_create`` on
SQLite), one dependency row per hundred jobs, and rows that must survive
(recent ones, failed ones still within their 30 days, queued ones enqueued
long ago). It prints the plan of the batch query, then starts a writer
process that calls ``.delay()`` ``--rate`` times a second (0: as fast as it
can) and times each call; after a few seconds it prunes everything with
``django_jobs.retention.prune()`` and lets the writer go on a few seconds
more. It prints the prune's duration and rate, the longest delete
transaction, the enqueue latency before, during and after the prune (the
target: at most 1 s during it), the cost of a scheduler pass with nothing to
prune, and one batch deleted by Django's ``QuerySet.delete()`` against the
same batch deleted by retention's ``delete_batch()``. It checks at the end
that exactly the old rows went.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from admin_1m import create_postgres_database, drop_postgres_database, postgres_params

ROOT = Path(__file__).resolve().parent.parent
BENCH_DB = "django_jobs_prune_bench"
TABLE = "django_jobs_jobrecord"
TARGET_SECONDS = 1.0
FUNC = "prune_bench_jobs.noop"
DEPENDENCY_EVERY = 100


def keepers(rows: int) -> dict[str, int]:
    """Rows that must survive the prune, per kind: about a week of recent jobs, 5 % of them failed."""
    return {
        "recent_finished": max(2000, rows // 10),
        "failed_within_30_days": max(2000, rows // 20),
        "old_queued": 2000,
    }


COMPARE_ROWS = 10_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, default=None, help="old rows to prune (default 1,000,000; 50,000 on SQLite)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=10_000, help="rows per delete transaction (default 10,000)"
    )
    parser.add_argument(
        "--rate", type=float, default=200.0, help=".delay() calls per second (0: as fast as possible)"
    )
    parser.add_argument(
        "--before", type=float, default=3.0, help="seconds of enqueueing before the prune (default 3)"
    )
    parser.add_argument(
        "--after", type=float, default=2.0, help="seconds of enqueueing after the prune (default 2)"
    )
    parser.add_argument("--no-compare", action="store_true", help="skip the QuerySet.delete() comparison")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument(
        "--db-name", default=BENCH_DB, help=f"PostgreSQL database to create (default {BENCH_DB})"
    )
    parser.add_argument("--keep-db", action="store_true", help="leave the PostgreSQL database in place")
    parser.add_argument("--writer", metavar="CONFIG", help=argparse.SUPPRESS)  # the writer process
    args = parser.parse_args(argv)
    if args.rows is not None and args.rows < 1000:
        parser.error("--rows must be at least 1000")
    if not 1 <= args.batch_size <= 10_000:
        parser.error("--batch-size must be from 1 to 10,000")
    return args


# -- Django -------------------------------------------------------------------------------


def configure_django(database: dict[str, Any], redis_url: str) -> None:
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="prune-bench-not-secret",
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "django_jobs"],
        DATABASES={"default": database},
        RQ_QUEUES={"default": {"URL": redis_url}},
        DJANGO_JOBS={"AUTODISCOVER": ()},
        LOGGING_CONFIG=None,
    )
    django.setup()
    from django_jobs import job

    module = types.ModuleType(FUNC.rsplit(".", 1)[0])
    sys.modules[module.__name__] = module
    exec("def noop(n):\n    return None\n", module.__dict__)
    module.__dict__["noop"] = job("default")(module.__dict__["noop"])


# -- the writer process ---------------------------------------------------------------------


def run_writer(config_path: str) -> None:
    """Call .delay() at the given rate until the stop file appears; write (start, seconds) pairs."""
    with open(config_path) as handle:
        config = json.load(handle)
    configure_django(config["database"], config["redis_url"])
    from django.db import connection

    noop = sys.modules[FUNC.rsplit(".", 1)[0]].noop
    noop.delay(0)  # connect to the database and Redis before timing
    Path(config["ready"]).touch()
    interval = 1.0 / config["rate"] if config["rate"] > 0 else 0.0
    samples: list[tuple[float, float]] = []
    next_at = time.monotonic()
    number = 0
    while not os.path.exists(config["stop"]):
        number += 1
        wall = time.time()
        started = time.perf_counter()
        noop.delay(number)
        samples.append((wall, time.perf_counter() - started))
        if interval:
            next_at += interval
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            else:
                next_at = time.monotonic()  # late (a stall): do not burst to catch up
    connection.close()
    with open(config["out"], "w") as handle:
        json.dump(samples, handle)


# -- filling --------------------------------------------------------------------------------


def fill_postgres(rows: int, now: datetime) -> None:
    """Old finished rows in enqueue order, dependency rows, and the rows that must stay."""
    from django.db import connection

    columns = (
        "id, func_name, queue, status, args, kwargs, result, error, error_history, attempts, enqueued_at, "
        "started_at, ended_at, worker_name, meta, options, needs_push"
    )
    values = """
        %(prefix)s || g, %(func)s, 'default', %(status)s, jsonb_build_array(g), '{}'::jsonb,
        CASE WHEN %(status)s = 'finished' THEN jsonb_build_object('ok', true, 'items', g %% 250) END,
        CASE WHEN %(status)s = 'failed' THEN 'ValueError: upstream timed out after 30 s' ELSE '' END,
        '[]'::jsonb, CASE WHEN %(status)s = 'queued' THEN 0 ELSE 1 END,
        %(start)s::timestamptz + (g - 1)::bigint * %(step)s * interval '1 microsecond',
        CASE WHEN %(status)s <> 'queued' THEN %(start)s::timestamptz
            + (g - 1)::bigint * %(step)s * interval '1 microsecond' + interval '1 second' END,
        CASE WHEN %(status)s <> 'queued' THEN %(start)s::timestamptz
            + (g - 1)::bigint * %(step)s * interval '1 microsecond' + interval '1.5 seconds' END,
        CASE WHEN %(status)s <> 'queued' THEN 'worker-' || (g %% 4 + 1) ELSE '' END,
        '{}'::jsonb, '{"timeout": 360, "result_ttl": 500}'::jsonb, false
    """
    sql = f"INSERT INTO {TABLE} ({columns}) SELECT {values} FROM generate_series(1, %(rows)s) AS g"
    with connection.cursor() as cursor:
        for prefix, status, count, start, span in batches_to_fill(rows, now):
            step = int(span.total_seconds() * 1_000_000 / max(1, count))
            params = {
                "prefix": prefix,
                "func": FUNC,
                "status": status,
                "rows": count,
                "start": start,
                "step": step,
            }
            cursor.execute(sql, params)
        cursor.execute(
            """
            INSERT INTO django_jobs_jobdependency (job_id, depends_on_id)
            SELECT 'old-' || g, 'old-' || (g - 1) FROM generate_series(%(every)s, %(rows)s, %(every)s) AS g
            """,
            {"every": DEPENDENCY_EVERY, "rows": rows},
        )


def batches_to_fill(rows: int, now: datetime) -> list[tuple[str, str, int, datetime, timedelta]]:
    """(id prefix, status, rows, first enqueue, spread) for the old rows and for each kind of keeper."""
    keep = keepers(rows)
    return [
        ("old-", "finished", rows, now - timedelta(days=60), timedelta(days=30)),
        ("recent-", "finished", keep["recent_finished"], now - timedelta(days=6), timedelta(days=6)),
        ("failed-", "failed", keep["failed_within_30_days"], now - timedelta(days=29), timedelta(days=29)),
        ("queued-", "queued", keep["old_queued"], now - timedelta(days=90), timedelta(days=30)),
    ]


def fill_python(rows: int, now: datetime, prefix_override: str | None = None) -> None:
    """The same rows through bulk_create (SQLite, and the comparison batch)."""
    from django_jobs.models import JobDependency, JobRecord

    plan = batches_to_fill(rows, now)
    if prefix_override is not None:
        plan = [(prefix_override, "finished", rows, now - timedelta(days=60), timedelta(days=30))]
    for prefix, status, count, start, span in plan:
        step = span / max(1, count)
        batch: list[JobRecord] = []
        for g in range(1, count + 1):
            enqueued = start + (g - 1) * step
            ended = status != "queued"
            batch.append(
                JobRecord(
                    id=f"{prefix}{g}",
                    func_name=FUNC,
                    queue="default",
                    status=status,
                    args=[g],
                    kwargs={},
                    result={"ok": True, "items": g % 250} if status == "finished" else None,
                    error="ValueError: upstream timed out after 30 s" if status == "failed" else "",
                    attempts=1 if ended else 0,
                    enqueued_at=enqueued,
                    started_at=enqueued + timedelta(seconds=1) if ended else None,
                    ended_at=enqueued + timedelta(seconds=1.5) if ended else None,
                    worker_name=f"worker-{g % 4 + 1}" if ended else "",
                    options={"timeout": 360, "result_ttl": 500},
                )
            )
            if len(batch) == 5000:
                JobRecord.objects.bulk_create(batch)
                batch = []
        JobRecord.objects.bulk_create(batch)
    prefix = prefix_override or "old-"
    JobDependency.objects.bulk_create(
        [
            JobDependency(job_id=f"{prefix}{g}", depends_on_id=f"{prefix}{g - 1}")
            for g in range(DEPENDENCY_EVERY, rows + 1, DEPENDENCY_EVERY)
        ],
        batch_size=5000,
    )


# -- measuring -------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def latency_summary(values: list[float]) -> dict[str, Any]:
    return {
        "calls": len(values),
        "p50_ms": percentile(values, 0.50) * 1000,
        "p99_ms": percentile(values, 0.99) * 1000,
        "max_ms": max(values) * 1000 if values else float("nan"),
    }


def explain_batch_queries(postgres: bool, batch_size: int, now: datetime) -> str:
    """The plans of the two queries that select a batch (the probe, then the batch), as run."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from django_jobs import records, retention
    from django_jobs.conf import conf

    keep = conf.retention["finished"]
    assert keep is not None
    with CaptureQueriesContext(connection) as queries:
        retention.select_batch("finished", now - keep, records.db_alias(), batch_size)
    prefix = "EXPLAIN (ANALYZE, BUFFERS) " if postgres else "EXPLAIN QUERY PLAN "
    plans = []
    with connection.cursor() as cursor:
        for query in queries.captured_queries:
            cursor.execute(prefix + query["sql"])
            plans.append("\n".join(" ".join(str(column) for column in line) for line in cursor.fetchall()))
    return "\n\n".join(plans)


def start_writer(
    workdir: str, database: dict[str, Any], redis_url: str, rate: float
) -> tuple[Any, dict[str, str]]:
    paths = {name: os.path.join(workdir, name) for name in ("ready", "stop", "out", "config.json")}
    config = {"database": database, "redis_url": redis_url, "rate": rate, **paths}
    with open(paths["config.json"], "w") as handle:
        json.dump(config, handle)
    process = subprocess.Popen([sys.executable, __file__, "--writer", paths["config.json"]])
    deadline = time.monotonic() + 60
    while not os.path.exists(paths["ready"]):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the writer process did not start")
        time.sleep(0.05)
    return process, paths


def idle_passes(calls: int = 20) -> list[float]:
    """Seconds taken by each of ``calls`` scheduler passes that find nothing to prune."""
    from django_jobs import retention

    times = []
    for _ in range(calls):
        started = time.perf_counter()
        assert retention.prune_some() == 0
        times.append(time.perf_counter() - started)
    return times


def compare_with_queryset_delete(now: datetime, batch_size: int) -> dict[str, float]:
    """One batch of old rows deleted by QuerySet.delete(), and the same number by delete_batch()."""
    from django_jobs import records, retention
    from django_jobs.conf import conf
    from django_jobs.models import JobRecord

    using = records.db_alias()
    keep = conf.retention["finished"]
    assert keep is not None
    cutoff = now - keep
    timings = {}
    for label in ("queryset_delete", "delete_batch"):
        fill_python(batch_size, now, prefix_override=f"cmp-{label}-")
        ids = retention.select_batch("finished", cutoff, using, batch_size)
        assert len(ids) == batch_size
        started = time.perf_counter()
        if label == "queryset_delete":
            JobRecord.objects.using(using).filter(pk__in=ids).delete()
        else:
            retention.delete_batch(ids, "finished", cutoff, using)
        timings[label] = time.perf_counter() - started
    return timings


def main() -> None:
    args = parse_args()
    if args.writer:
        run_writer(args.writer)
        return

    from django_jobs.redis_server import RedisServer

    server = None
    redis_url = os.environ.get("REDIS_URL", "")
    if not redis_url:
        server = RedisServer().start()
        redis_url = server.url
    workdir = tempfile.mkdtemp(prefix="django-jobs-prune-")
    pg = postgres_params(os.environ.get("DATABASE_URL", ""))
    if pg is not None:
        create_postgres_database(pg, args.db_name)
        database: dict[str, Any] = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": args.db_name,
            "USER": pg["user"],
            "PASSWORD": pg["password"],
            "HOST": pg["host"],
            "PORT": pg["port"],
        }
        rows = args.rows or 1_000_000
    else:
        database = {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.path.join(workdir, "prune.sqlite3"),
            "OPTIONS": {"timeout": 30},
        }
        rows = args.rows or 50_000
    try:
        results = run(args, database, redis_url, rows, workdir, postgres=pg is not None)
    finally:
        if server is not None:
            server.stop()
        if pg is not None and not args.keep_db:
            from django.db import connections

            connections.close_all()
            drop_postgres_database(pg, args.db_name)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2, default=str)
        print(f"\nresults written to {args.json}")


def run(
    args: argparse.Namespace,
    database: dict[str, Any],
    redis_url: str,
    rows: int,
    workdir: str,
    postgres: bool,
) -> dict[str, Any]:
    configure_django(database, redis_url)
    from django.core.management import call_command
    from django.db import connection
    from django.db.models import Q

    from django_jobs import retention
    from django_jobs.models import JobRecord

    call_command("migrate", verbosity=0)
    now = datetime.now(UTC)
    started = time.perf_counter()
    if postgres:
        fill_postgres(rows, now)
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM (ANALYZE) {TABLE}")
            cursor.execute("VACUUM (ANALYZE) django_jobs_jobdependency")
            cursor.execute("SELECT pg_size_pretty(pg_total_relation_size(%s))", [TABLE])
            size = cursor.fetchone()[0]
    else:
        fill_python(rows, now)
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
        size = f"{os.path.getsize(database['NAME']) / 2**20:.0f} MB (file)"
    fill_seconds = time.perf_counter() - started
    kept_rows = sum(keepers(rows).values())
    print(
        f"{connection.vendor} {connection.pg_version if postgres else ''}".strip(), "·", platform.platform()
    )
    print(
        f"filled {rows:,} old finished rows + {kept_rows:,} rows to keep in {fill_seconds:.1f} s; "
        f"table {size}"
    )
    print(f"\nplans of the queries that select a batch (finished, LIMIT {args.batch_size}):")
    print("  " + explain_batch_queries(postgres, args.batch_size, now).replace("\n", "\n  "))

    connection.close()  # the writer starts with no connection of ours open
    writer, paths = start_writer(workdir, database, redis_url, args.rate)
    batches: list[tuple[str, int, float]] = []
    try:
        time.sleep(args.before)
        prune_start = time.time()
        t0 = time.perf_counter()
        counts = retention.prune(
            batch_size=args.batch_size, on_batch=lambda s, n, seconds: batches.append((s, n, seconds))
        )
        prune_seconds = time.perf_counter() - t0
        prune_end = time.time()
        time.sleep(args.after)
    finally:
        Path(paths["stop"]).touch()
        writer.wait(timeout=60)
    with open(paths["out"]) as handle:
        samples = [tuple(pair) for pair in json.load(handle)]
    before = [s for t, s in samples if t + s < prune_start]
    # A call that overlaps the prune at all counts as during it.
    during = [s for t, s in samples if t + s >= prune_start and t <= prune_end]
    after = [s for t, s in samples if t > prune_end]

    deleted = sum(counts.values())
    transactions = [seconds for _, _, seconds in batches]
    idle = {"at once": idle_passes()}
    if postgres:
        # Until VACUUM runs (autovacuum does, after so many deletes), the index entries of the
        # deleted rows are still there, and each probe steps over them.
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM (ANALYZE) {TABLE}")
        idle["after VACUUM"] = idle_passes()

    remaining_old = JobRecord.objects.filter(pk__startswith="old-").count()
    kept = JobRecord.objects.filter(
        Q(pk__startswith="recent-") | Q(pk__startswith="failed-") | Q(pk__startswith="queued-")
    ).count()
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM django_jobs_jobdependency WHERE job_id LIKE 'old-%%'")
        dangling = cursor.fetchone()[0]
    ok = deleted == rows and remaining_old == 0 and kept == kept_rows and dangling == 0

    compare = {} if args.no_compare else compare_with_queryset_delete(now, args.batch_size)

    latency = {
        "before": latency_summary(before),
        "during": latency_summary(during),
        "after": latency_summary(after),
    }
    print(
        f"\npruned {deleted:,} rows in {prune_seconds:.1f} s: {deleted / prune_seconds:,.0f} rows/s, "
        f"{len(batches)} batches of at most {args.batch_size:,}"
    )
    print(
        f"delete transaction per batch: median {statistics.median(transactions) * 1000:.0f} ms, "
        f"max {max(transactions) * 1000:.0f} ms"
    )
    rate = f"at {args.rate:g}/s" if args.rate > 0 else "as fast as it can"
    print(f"\n.delay() latency, one writer process {rate}:")
    print(f"  {'':8} {'calls':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for phase, summary in latency.items():
        print(
            f"  {phase:8} {summary['calls']:>7} {summary['p50_ms']:>8.1f} {summary['p99_ms']:>8.1f} "
            f"{summary['max_ms']:>8.1f}"
        )
    worst = latency["during"]["max_ms"] / 1000
    mark = "✓" if worst < TARGET_SECONDS else "✗"
    print(f"  target: each .delay() during the prune under {TARGET_SECONDS:g} s: {mark} ({worst:.3f} s)")
    print("\nscheduler pass with nothing left to prune (prune_some), 20 calls:")
    for label, times in idle.items():
        print(f"  {label}: median {statistics.median(times) * 1000:.2f} ms, max {max(times) * 1000:.2f} ms")
    if compare:
        print(
            f"one batch of {args.batch_size:,} rows: QuerySet.delete() {compare['queryset_delete']:.2f} s, "
            f"retention.delete_batch() {compare['delete_batch']:.2f} s"
        )
    print(
        f"\nafterwards: {remaining_old} old rows left, {kept:,} of {kept_rows:,} rows to keep still there, "
        f"{dangling} dependency rows of pruned jobs left: {'OK' if ok else 'WRONG'}"
    )
    if not ok:
        raise SystemExit(1)
    return {
        "vendor": connection.vendor,
        "platform": platform.platform(),
        "rows": rows,
        "batch_size": args.batch_size,
        "fill_seconds": fill_seconds,
        "table_size": size,
        "prune_seconds": prune_seconds,
        "rows_per_second": deleted / prune_seconds,
        "batches": len(batches),
        "transaction_ms": {"median": statistics.median(transactions) * 1000, "max": max(transactions) * 1000},
        "enqueue_rate": args.rate,
        "enqueue_latency": latency,
        "target_met": worst < TARGET_SECONDS,
        "idle_pass_ms": {
            label: {"median": statistics.median(times) * 1000, "max": max(times) * 1000}
            for label, times in idle.items()
        },
        "one_batch_seconds": compare,
    }


if __name__ == "__main__":
    main()
