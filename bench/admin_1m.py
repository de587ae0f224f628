#!/usr/bin/env python
"""Fill JobRecord with many rows and time the jobs admin pages.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test python bench/admin_1m.py \
        [--rows 1000000] [--repeat 20] [--json out.json] [--keep-db]

The server named by DATABASE_URL gets a fresh database of its own
(``django_jobs_bench`` by default: dropped first if it exists, dropped again at
the end unless ``--keep-db``); the database in the URL is only used to connect.
The script configures Django itself (no settings module), migrates, fills
``--rows`` JobRecord rows with one ``INSERT … SELECT FROM generate_series``,
runs ``VACUUM (ANALYZE)``, logs a superuser in with Django's test client and
times the listing (unfiltered, filtered, drilled down by date, searched), two
job pages and the dashboard: two warm-ups, then ``--repeat`` timed requests
each, then one more request with the SQL captured to count the queries and
flag any unbounded ``COUNT`` or ``DISTINCT``. It ends with ``EXPLAIN
(ANALYZE, BUFFERS)`` of the listing's queries, unfiltered and by status.

``--keep-db`` leaves the filled database in place; ``--reuse-db`` times the
pages again on it without filling (after a code or index change).

Redis: ``REDIS_URL`` if set, else a throwaway ``redis-server``
(``django_jobs.redis_server.RedisServer``); only the dashboard reads it.

Without a PostgreSQL URL the script refuses to run, unless ``--allow-sqlite``
(a smoke run on a temporary SQLite file, rows made in Python: keep ``--rows``
small, e.g. 20000).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import types
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlparse

BENCH_DB = "django_jobs_bench"
TARGETS_MS = {"listing": 500.0, "detail": 100.0}
WARMUPS = 2
TABLE = "django_jobs_jobrecord"

# -- what the rows look like --------------------------------------------------------------

#: (function, queue, weight): ~20 job functions; their queue follows the function.
FUNCTIONS: list[tuple[str, str, int]] = [
    ("send_welcome_email", "emails", 12),
    ("send_password_reset", "emails", 4),
    ("send_invoice_email", "emails", 4),
    ("send_newsletter", "emails", 3),
    ("capture_payment", "high", 6),
    ("refund_payment", "high", 1),
    ("deliver_webhook", "high", 8),
    ("send_sms", "high", 3),
    ("generate_thumbnail", "default", 12),
    ("index_product", "default", 10),
    ("sync_inventory", "default", 10),
    ("import_orders", "default", 4),
    ("recompute_prices", "default", 3),
    ("notify_slack", "default", 3),
    ("geocode_address", "default", 4),
    ("aggregate_stats", "low", 5),
    ("export_report", "low", 3),
    ("cleanup_sessions", "low", 2),
    ("archive_orders", "low", 2),
    ("rebuild_search_index", "low", 1),
]
FUNCTION_MODULE = "benchapp.jobs"
#: An argument the admin must hide (``@job(redact=[…])``).
REDACTED = {"send_password_reset": ["token"]}

#: Status weights for all but the newest rows: jobs long done.
OLD_STATUSES: list[tuple[str, float]] = [
    ("finished", 93.5),
    ("failed", 5.0),
    ("canceled", 1.0),
    ("stopped", 0.5),
]
#: The newest RECENT_SHARE of the rows (the last few hours): a backlog as well.
RECENT_SHARE = 0.005
RECENT_STATUSES: list[tuple[str, float]] = [
    ("queued", 30.0),
    ("started", 5.0),
    ("scheduled", 3.0),
    ("deferred", 2.0),
    ("finished", 55.0),
    ("failed", 5.0),
]
DAYS = 30  # enqueued_at spreads evenly over the last DAYS days, in insertion order
RETRIED_SHARE = 0.03  # finished jobs that failed once before (attempts 2, one earlier error)
DEPENDENCY_EVERY = 100  # job g (g % 100 == 0) waits for g - 1, and g + 1 waits for g

TRACEBACK_FRAMES = [
    ("/srv/app/benchapp/jobs.py", "{func}"),
    ("/srv/app/benchapp/services/client.py", "call"),
    ("/srv/app/venv/lib/python3.12/site-packages/requests/api.py", "request"),
    ("/srv/app/venv/lib/python3.12/site-packages/requests/sessions.py", "send"),
    ("/srv/app/venv/lib/python3.12/site-packages/requests/adapters.py", "send"),
    ("/srv/app/venv/lib/python3.12/site-packages/urllib3/connectionpool.py", "urlopen"),
]
ERROR_LAST_LINE = "requests.exceptions.ConnectionError: upstream timed out after 30 s (attempt {attempt})"


def cumulative(weights: list[tuple[str, float]] | list[tuple[str, str, int]]) -> list[float]:
    total = float(sum(item[-1] for item in weights))
    bounds, running = [], 0.0
    for item in weights:
        running += float(item[-1])
        bounds.append(running / total)
    bounds[-1] = 1.0
    return bounds


def traceback_text(func: str, attempt: int | str) -> str:
    lines = ["Traceback (most recent call last):"]
    for number, (path, name) in enumerate(TRACEBACK_FRAMES):
        name = name.format(func=func)
        lines.append(f'  File "{path}", line {40 + 17 * number}, in {name}')
        lines.append(f"    return self._{name}(request, timeout=self.timeout, **kwargs)")
    lines.append(ERROR_LAST_LINE.format(attempt=attempt))
    return "\n".join(lines)


# -- command line and database URL -------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Fill JobRecord with many rows and time the jobs admin pages.",
        epilog="DATABASE_URL must name a PostgreSQL server (postgres://user@host:port/db).",
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to insert (default 1,000,000)")
    parser.add_argument("--repeat", type=int, default=20, help="timed requests per page (default 20)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument(
        "--allow-sqlite",
        action="store_true",
        help="run on a temporary SQLite file when DATABASE_URL is not PostgreSQL (smoke runs only)",
    )
    parser.add_argument("--db-name", default=BENCH_DB, help=f"database to create (default {BENCH_DB})")
    parser.add_argument("--keep-db", action="store_true", help="leave the filled database in place")
    parser.add_argument(
        "--reuse-db",
        action="store_true",
        help="time again on the database a --keep-db run left (no fill, --rows ignored; implies --keep-db)",
    )
    args = parser.parse_args(argv)
    if args.reuse_db:
        args.keep_db = True
    if args.rows < 1000:
        parser.error("--rows must be at least 1000")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", args.db_name):
        parser.error("--db-name: lower-case letters, digits and underscores only")
    return args


def postgres_params(url: str) -> dict[str, Any] | None:
    parsed = urlparse(url)
    if parsed.scheme not in ("postgres", "postgresql", "pgsql"):
        return None
    return {
        "host": parsed.hostname or "",
        "port": parsed.port or 5432,
        "user": unquote(parsed.username or ""),
        "password": unquote(parsed.password or ""),
        "dbname": unquote(parsed.path.lstrip("/")) or "postgres",
    }


def create_postgres_database(server: dict[str, Any], name: str) -> None:
    import psycopg

    conninfo = {k: v for k, v in server.items() if v}
    with psycopg.connect(**conninfo, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def postgres_database_exists(server: dict[str, Any], name: str) -> bool:
    import psycopg

    conninfo = {k: v for k, v in server.items() if v}
    with psycopg.connect(**conninfo, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None


def drop_postgres_database(server: dict[str, Any], name: str) -> None:
    import psycopg

    conninfo = {k: v for k, v in server.items() if v}
    with psycopg.connect(**conninfo, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- Django ---------------------------------------------------------------------------


def configure_django(database: dict[str, Any], redis_url: str) -> None:
    import django
    from django.conf import settings

    urls = types.ModuleType("admin_1m_urls")
    sys.modules[urls.__name__] = urls
    settings.configure(
        DEBUG=False,
        SECRET_KEY="admin-1m-bench-not-secret",
        ALLOWED_HOSTS=["testserver"],
        USE_TZ=True,
        TIME_ZONE="UTC",
        ROOT_URLCONF=urls.__name__,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        INSTALLED_APPS=[
            "django.contrib.admin",
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django.contrib.messages",
            "django_jobs",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.common.CommonMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django.contrib.messages.middleware.MessageMiddleware",
        ],
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "APP_DIRS": True,
                "OPTIONS": {
                    "context_processors": [
                        "django.template.context_processors.request",
                        "django.contrib.auth.context_processors.auth",
                        "django.contrib.messages.context_processors.messages",
                    ]
                },
            }
        ],
        DATABASES={"default": database},
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
        RQ_QUEUES={
            "default": {"URL": redis_url, "DEFAULT_TIMEOUT": 360},
            "high": {"URL": redis_url},
            "low": {"URL": redis_url},
            "emails": {"URL": redis_url},
        },
        DJANGO_JOBS={"AUTODISCOVER": ()},
        LOGGING_CONFIG=None,
    )
    django.setup()
    register_job_functions()
    from django.contrib import admin
    from django.urls import path

    urls.urlpatterns = [path("admin/", admin.site.urls)]  # type: ignore[attr-defined]


def register_job_functions() -> None:
    """The bench's @job functions, so that the function filter lists them as in a project."""
    from django_jobs import job

    module = types.ModuleType(FUNCTION_MODULE)
    sys.modules[FUNCTION_MODULE] = module
    for name, queue, _weight in FUNCTIONS:
        exec(f"def {name}(*args, **kwargs):\n    return None\n", module.__dict__)
        job(queue=queue, redact=REDACTED.get(name, ()))(module.__dict__[name])


def check_migrations_complete() -> None:
    from django.apps import apps
    from django.db.migrations.autodetector import MigrationAutodetector
    from django.db.migrations.loader import MigrationLoader
    from django.db.migrations.state import ProjectState

    loader = MigrationLoader(None, ignore_no_migrations=True)
    changes = MigrationAutodetector(loader.project_state(), ProjectState.from_apps(apps)).changes(
        graph=loader.graph
    )
    if "django_jobs" in changes:
        raise SystemExit(
            "django_jobs' models have changes that no migration creates (run makemigrations django_jobs); "
            "the admin would query columns that the migrated table does not have."
        )


# -- filling ----------------------------------------------------------------------------


def case_expression(variable: str, bounds: list[float], values: list[str]) -> str:
    branches = " ".join(
        f"WHEN {variable} < {bound!r} THEN '{value}'"
        for bound, value in zip(bounds[:-1], values, strict=False)
    )
    return f"CASE {branches} ELSE '{values[-1]}' END"


def fill_postgres(rows: int, now: datetime) -> None:
    """One INSERT … SELECT FROM generate_series: rows in enqueued_at order, as a live system writes them."""
    from django.db import connection

    func_bounds = cumulative(FUNCTIONS)
    func_case = " ".join(
        f"WHEN r_func < {bound!r} THEN {index}" for index, bound in enumerate(func_bounds[:-1])
    )
    names = ", ".join(f"'{FUNCTION_MODULE}.{name}'" for name, _, _ in FUNCTIONS)
    queues = ", ".join(f"'{queue}'" for _, queue, _ in FUNCTIONS)
    short = ", ".join(f"'{name}'" for name, _, _ in FUNCTIONS)
    old_case = case_expression("r_status", cumulative(OLD_STATUSES), [s for s, _ in OLD_STATUSES])
    recent_case = case_expression("r_status", cumulative(RECENT_STATUSES), [s for s, _ in RECENT_STATUSES])
    # The traceback names the job's function and the attempt, as a real one would. As the
    # worker writes it, error_history holds every failed attempt, the last one included.
    error_sql = "replace(replace(%(traceback)s, '{func}', short), '{attempt}', attempts::text)"
    history_sql = """(
        SELECT jsonb_agg(jsonb_build_object(
            'attempt', k,
            'at', to_char((enq + k * interval '30 seconds') AT TIME ZONE 'UTC',
                          'YYYY-MM-DD"T"HH24:MI:SS"+00:00"'),
            'error', replace(replace(%(traceback)s, '{func}', short), '{attempt}', k::text)
        ) ORDER BY k)
        FROM generate_series(1, CASE WHEN status = 'failed' THEN attempts ELSE attempts - 1 END) AS k)"""
    sql = f"""
    INSERT INTO {TABLE} (
        id, func_name, queue, status, args, kwargs, result, error, error_history, attempts,
        enqueued_at, started_at, ended_at, worker_name, meta, options, needs_push)
    SELECT
        md5('bench-' || g),
        func_name, queue, status,
        jsonb_build_array(g %% 100000),
        CASE WHEN short = 'send_password_reset'
             THEN jsonb_build_object('user_id', g %% 50000, 'token', md5('token-' || g))
             ELSE jsonb_build_object('source', 'bench', 'priority', g %% 3) END,
        CASE WHEN status = 'finished' THEN jsonb_build_object('ok', true, 'items', g %% 250) END,
        CASE WHEN status = 'failed' THEN {error_sql} ELSE '' END,
        CASE WHEN status = 'failed' OR attempts > 1 THEN {history_sql} ELSE '[]'::jsonb END,
        attempts,
        enq,
        started,
        CASE WHEN status IN ('finished', 'failed', 'stopped')
             THEN started + exp(r_dur * ln(60000.0)) * interval '1 millisecond' END,
        CASE WHEN started IS NOT NULL THEN 'worker-' || (g %% 4 + 1) || '.' || (4000 + g %% 97) ELSE '' END,
        CASE WHEN status = 'started'
                  THEN jsonb_build_object('progress', jsonb_build_object(
                      'done', g %% 100, 'total', 100, 'percent', (g %% 100)::float,
                      'message', 'processing', 'updated_at', extract(epoch FROM enq)))
             WHEN short = 'export_report' AND status = 'finished'
                  THEN jsonb_build_object('progress', jsonb_build_object(
                      'done', 100, 'total', 100, 'percent', 100.0,
                      'message', 'done', 'updated_at', extract(epoch FROM enq)))
             ELSE '{{}}'::jsonb END,
        jsonb_build_object('timeout', 360, 'result_ttl', 500),
        false
    FROM (
        SELECT *,
            CASE WHEN status IN ('started', 'finished', 'failed', 'stopped')
                 THEN enq + r_wait * interval '2 seconds' END AS started
        FROM (
            SELECT g, r_dur, r_wait, enq, short, func_name, queue, status,
                CASE WHEN status = 'failed' THEN 1 + floor(r_retry * 3)::int
                     WHEN status = 'finished' AND r_retry < %(retried)s THEN 2
                     WHEN status IN ('finished', 'started', 'stopped') THEN 1
                     ELSE 0 END AS attempts
            FROM (
                SELECT g, r_dur, r_wait, r_retry, enq,
                    (ARRAY[{short}])[fi + 1] AS short,
                    (ARRAY[{names}])[fi + 1] AS func_name,
                    (ARRAY[{queues}])[fi + 1] AS queue,
                    CASE WHEN g > %(recent_from)s THEN {recent_case} ELSE {old_case} END AS status
                FROM (
                    SELECT g, r_dur, r_wait, r_retry, r_status, enq,
                        CASE {func_case} ELSE {len(FUNCTIONS) - 1} END AS fi
                    FROM (
                        SELECT g, random() AS r_func, random() AS r_status, random() AS r_dur,
                            random() AS r_wait, random() AS r_retry,
                            %(start)s::timestamptz
                                + (g - 1)::bigint * %(step)s * interval '1 microsecond' AS enq
                        FROM generate_series(1, %(rows)s) AS g
                    ) AS draws
                ) AS picked
            ) AS named
        ) AS counted
    ) AS timed
    """
    start = now - timedelta(days=DAYS)
    params: dict[str, Any] = {
        "rows": rows,
        "start": start,
        "step": int(DAYS * 86400 * 1_000_000 / rows),
        "recent_from": int(rows * (1 - RECENT_SHARE)),
        "retried": RETRIED_SHARE,
        "traceback": traceback_text("{func}", "{attempt}"),
    }
    with connection.cursor() as cursor:
        cursor.execute("SELECT setseed(0.42)")
        cursor.execute(sql, params)
        cursor.execute(
            """
            INSERT INTO django_jobs_jobdependency (job_id, depends_on_id)
            SELECT md5('bench-' || g), md5('bench-' || (g - 1))
            FROM generate_series(%(every)s, %(rows)s - 1, %(every)s) AS g
            UNION ALL
            SELECT md5('bench-' || (g + 1)), md5('bench-' || g)
            FROM generate_series(%(every)s, %(rows)s - 1, %(every)s) AS g
            """,
            {"every": DEPENDENCY_EVERY, "rows": rows},
        )


def fill_python(rows: int, now: datetime) -> None:
    """The same spread, made in Python and written with bulk_create (SQLite smoke runs)."""
    import hashlib

    from django_jobs.models import JobDependency, JobRecord

    rng = random.Random(42)
    func_bounds = cumulative(FUNCTIONS)
    old_bounds, recent_bounds = cumulative(OLD_STATUSES), cumulative(RECENT_STATUSES)
    start = now - timedelta(days=DAYS)
    step = timedelta(microseconds=int(DAYS * 86400 * 1_000_000 / rows))
    recent_from = int(rows * (1 - RECENT_SHARE))

    def pick(bounds: list[float], r: float) -> int:
        return next(index for index, bound in enumerate(bounds) if r < bound or bound == 1.0)

    def job_id(g: int) -> str:
        return hashlib.md5(f"bench-{g}".encode()).hexdigest()

    batch: list[JobRecord] = []
    for g in range(1, rows + 1):
        r_func, r_status, r_dur, r_wait, r_retry = (rng.random() for _ in range(5))
        name, queue, _ = FUNCTIONS[pick(func_bounds, r_func)]
        if g > recent_from:
            status = RECENT_STATUSES[pick(recent_bounds, r_status)][0]
        else:
            status = OLD_STATUSES[pick(old_bounds, r_status)][0]
        if status == "failed":
            attempts = 1 + int(r_retry * 3)
        elif status == "finished" and r_retry < RETRIED_SHARE:
            attempts = 2
        else:
            attempts = 1 if status in ("finished", "started", "stopped") else 0
        enq = start + (g - 1) * step
        started = (
            enq + timedelta(seconds=2 * r_wait)
            if status in ("started", "finished", "failed", "stopped")
            else None
        )
        ended = (
            started + timedelta(milliseconds=60000.0**r_dur)
            if started and status in ("finished", "failed", "stopped")
            else None
        )
        meta: dict[str, Any] = {}
        if status == "started":
            meta = {
                "progress": {
                    "done": g % 100,
                    "total": 100,
                    "percent": float(g % 100),
                    "message": "processing",
                }
            }
        batch.append(
            JobRecord(
                id=job_id(g),
                func_name=f"{FUNCTION_MODULE}.{name}",
                queue=queue,
                status=status,
                args=[g % 100000],
                kwargs=(
                    {"user_id": g % 50000, "token": job_id(-g)}
                    if name == "send_password_reset"
                    else {"source": "bench", "priority": g % 3}
                ),
                result={"ok": True, "items": g % 250} if status == "finished" else None,
                error=traceback_text(name, attempts) if status == "failed" else "",
                error_history=[
                    {
                        "attempt": k,
                        "at": (enq + k * timedelta(seconds=30)).isoformat(),
                        "error": traceback_text(name, k),
                    }
                    for k in range(1, attempts + 1 if status == "failed" else attempts)
                ],
                attempts=attempts,
                enqueued_at=enq,
                started_at=started,
                ended_at=ended,
                worker_name=f"worker-{g % 4 + 1}.{4000 + g % 97}" if started else "",
                meta=meta,
                options={"timeout": 360, "result_ttl": 500},
            )
        )
        if len(batch) == 5000:
            JobRecord.objects.bulk_create(batch)
            batch = []
    JobRecord.objects.bulk_create(batch)
    JobDependency.objects.bulk_create(
        [
            JobDependency(job_id=job_id(g), depends_on_id=job_id(g - 1))
            for g in range(DEPENDENCY_EVERY, rows, DEPENDENCY_EVERY)
        ]
        + [
            JobDependency(job_id=job_id(g + 1), depends_on_id=job_id(g))
            for g in range(DEPENDENCY_EVERY, rows, DEPENDENCY_EVERY)
        ]
    )


# -- measuring --------------------------------------------------------------------------


def query_flags(sql: str) -> list[str]:
    """Why a query may not scale: an unbounded COUNT over the jobs table, or a DISTINCT."""
    flags = []
    upper = sql.upper()
    if "DISTINCT" in upper:
        flags.append("DISTINCT")
    if TABLE.upper() in upper and "COUNT(" in upper and " LIMIT " not in upper:
        flags.append("COUNT over whole table" if " WHERE " not in upper else "COUNT without LIMIT")
    return flags


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank: p95 of 20 values is the 19th smallest."""
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(fraction * len(ordered)))) - 1]


def scans_of(plan: dict[str, Any]) -> list[str]:
    """'Index Scan using x', 'Seq Scan on t'… for every scan node of a JSON plan."""
    found = []
    node_type = plan.get("Node Type", "")
    if "Scan" in node_type:
        if plan.get("Index Name"):
            found.append(f"{node_type} using {plan['Index Name']}")
        elif plan.get("Relation Name"):
            found.append(f"{node_type} on {plan['Relation Name']}")
    for child in plan.get("Plans", []):
        found.extend(scans_of(child))
    return found


def explain_scans(sql: str) -> list[str]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql)
        (plan,) = cursor.fetchone()
    if isinstance(plan, str):
        plan = json.loads(plan)
    return scans_of(plan[0]["Plan"])


def explain_analyze(sql: str) -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
        return "\n".join(row[0] for row in cursor.fetchall())


def measure_page(client: Any, kind: str, label: str, url: str, repeat: int, postgres: bool) -> dict[str, Any]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for _ in range(WARMUPS):
        response = client.get(url)
        if response.status_code != 200:
            raise SystemExit(f"{label}: GET {url} answered {response.status_code}")
    times, cpu = [], []
    for _ in range(repeat):
        started, cpu_started = time.perf_counter(), time.process_time()
        client.get(url)
        times.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - cpu_started) * 1000)
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    queries = []
    for query in captured.captured_queries:
        sql = query["sql"]
        entry: dict[str, Any] = {
            "sql": sql,
            "ms": round(float(query["time"]) * 1000, 2),
            "flags": query_flags(sql),
        }
        if postgres and TABLE in sql and sql.lstrip().upper().startswith("SELECT"):
            entry["scans"] = explain_scans(sql)
        queries.append(entry)
    result: dict[str, Any] = {
        "kind": kind,
        "page": label,
        "url": url,
        "median_ms": statistics.median(times),
        "p95_ms": percentile(times, 0.95),
        "max_ms": max(times),
        "min_ms": min(times),
        "cpu_median_ms": statistics.median(cpu),
        "load_average": os.getloadavg()[0],
        "queries": len(queries),
        "sql_ms": round(sum(q["ms"] for q in queries), 2),
        "flags": sorted({flag for q in queries for flag in q["flags"]}),
        "times_ms": [round(value, 2) for value in times],
        "sql": queries,
        "bytes": len(response.content),
    }
    context = getattr(response, "context_data", None) or {}
    changelist = context.get("cl")
    if changelist is not None:
        result["result_count"] = changelist.result_count
        result["rows_shown"] = len(changelist.result_list)
    target = TARGETS_MS.get(kind)
    result["target_ms"] = target
    result["verdict"] = (
        "-" if target is None else ("PASS" if result["p95_ms"] < target and not result["flags"] else "FAIL")
    )
    return result


def pick_pages() -> list[tuple[str, str, str]]:
    from django.db.models import Max
    from django.urls import reverse

    from django_jobs.models import JobDependency, JobRecord

    listing = reverse("admin:django_jobs_jobrecord_changelist")

    def change(pk: str) -> str:
        return reverse("admin:django_jobs_jobrecord_change", args=[pk])

    last = JobRecord.objects.aggregate(last=Max("enqueued_at"))["last"]
    finished = (
        JobRecord.objects.filter(status="finished", pk__in=JobDependency.objects.values("job_id"))
        .filter(pk__in=JobDependency.objects.values("depends_on_id"))
        .order_by("-enqueued_at")
        .values_list("pk", flat=True)[:1]
    )
    failed = (
        JobRecord.objects.filter(status="failed", attempts__gte=3)
        .order_by("-enqueued_at")
        .values_list("pk", flat=True)[:1]
    )
    finished_id, failed_id = finished[0], failed[0]
    some_id = (
        JobRecord.objects.filter(status="finished").order_by("-enqueued_at").values_list("pk", flat=True)[500]
    )
    return [
        ("listing", "unfiltered", listing),
        ("listing", "status=failed", f"{listing}?status=failed"),
        ("listing", "status=finished", f"{listing}?status=finished"),
        ("listing", "queue=emails", f"{listing}?queue=emails"),
        ("listing", "status=failed & queue=emails", f"{listing}?queue=emails&status=failed"),
        ("listing", "function=index_product", f"{listing}?func_name={FUNCTION_MODULE}.index_product"),
        ("listing", "date: year", f"{listing}?enqueued_at__year={last.year}"),
        (
            "listing",
            "date: year+month",
            f"{listing}?enqueued_at__month={last.month}&enqueued_at__year={last.year}",
        ),
        (
            "listing",
            "date: year+month+day",
            f"{listing}?enqueued_at__day={last.day}&enqueued_at__month={last.month}&enqueued_at__year={last.year}",
        ),
        ("listing", "page 100", f"{listing}?p=100"),
        ("listing", "search: id prefix (8)", f"{listing}?q={some_id[:8]}"),
        ("listing", "search: exact id", f"{listing}?q={some_id}"),
        ("listing", "search: function", f"{listing}?q=jobs.send_newsletter"),
        ("listing", "search: function, no dot", f"{listing}?q=send_newsletter"),
        ("detail", "finished job (with deps)", change(finished_id)),
        ("detail", "failed job (3 attempts)", change(failed_id)),
        ("dashboard", "dashboard", reverse("admin:django_jobs_dashboard") + "?refresh=0"),
    ]


def main_listing_query(page: dict[str, Any]) -> str | None:
    """The query that reads the page's 50 rows."""
    for query in page["sql"]:
        sql = str(query["sql"])
        if f'FROM "{TABLE}"' in sql and "ORDER BY" in sql and "LIMIT" in sql and "COUNT(" not in sql.upper():
            return sql
    return None


def count_query(page: dict[str, Any]) -> str | None:
    for query in page["sql"]:
        sql = str(query["sql"])
        if TABLE in sql and "COUNT(" in sql.upper():
            return sql
    return None


def environment(postgres: bool) -> dict[str, Any]:
    import django
    from django.db import connection

    import django_jobs

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "django": django.get_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "django_jobs_path": os.path.dirname(django_jobs.__file__),
    }
    try:
        source = os.path.dirname(os.path.dirname(django_jobs.__file__))
        info["django_jobs_commit"] = subprocess.run(
            ["git", "-C", source, "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["django_jobs_commit"] = "unknown"
    with connection.cursor() as cursor:
        if postgres:
            cursor.execute("SELECT version()")
            info["database"] = cursor.fetchone()[0]
            for setting in ("shared_buffers", "work_mem", "effective_cache_size", "random_page_cost"):
                cursor.execute(f"SHOW {setting}")
                info[setting] = cursor.fetchone()[0]
        else:
            cursor.execute("SELECT sqlite_version()")
            info["database"] = "SQLite " + cursor.fetchone()[0]
    return info


def table_sizes() -> dict[str, str]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.relname, pg_size_pretty(pg_relation_size(c.oid))
            FROM pg_class c
            WHERE c.relname = %s
               OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = %s::regclass)
            ORDER BY pg_relation_size(c.oid) DESC
            """,
            [TABLE, TABLE],
        )
        sizes = dict(cursor.fetchall())
        cursor.execute("SELECT pg_size_pretty(pg_total_relation_size(%s::regclass))", [TABLE])
        sizes["total (with TOAST and indexes)"] = cursor.fetchone()[0]
    return sizes


def print_table(pages: list[dict[str, Any]]) -> None:
    columns = ("page", "median", "p95", "max", "CPU", "SQL", "SQL ms", "rows", "target", "verdict", "flags")
    widths = (30, 9, 9, 9, 8, 4, 7, 6, 7, 7, 0)
    print(
        "  ".join(
            f"{name:<{width}}" if index == 0 else f"{name:>{width}}"
            for index, (name, width) in enumerate(zip(columns, widths, strict=True))
        ).rstrip()
    )
    for page in pages:
        cells = (
            page["page"],
            f"{page['median_ms']:.1f} ms",
            f"{page['p95_ms']:.1f} ms",
            f"{page['max_ms']:.1f} ms",
            f"{page['cpu_median_ms']:.1f} ms",
            str(page["queries"]),
            f"{page['sql_ms']:.1f}",
            str(page.get("result_count", "")),
            f"{page['target_ms']:.0f} ms" if page["target_ms"] else "-",
            page["verdict"],
            ", ".join(page["flags"]) or "-",
        )
        print(
            "  ".join(
                f"{cell:<{width}}" if index in (0, len(cells) - 1) else f"{cell:>{width}}"
                for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()
        )


# -- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Measure the django_jobs of this checkout, installed or not.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    url = os.environ.get("DATABASE_URL", "")
    server = postgres_params(url) if url else None
    sqlite_path = ""
    if server is None:
        if not args.allow_sqlite:
            print(
                "bench/admin_1m.py measures the admin on PostgreSQL: set DATABASE_URL to a "
                "PostgreSQL server, e.g. DATABASE_URL=postgres://postgres@127.0.0.1:5432/test "
                f"(it creates and drops its own database, {args.db_name!r}, there). "
                "Add --allow-sqlite for a smoke run on a temporary SQLite file.",
                file=sys.stderr,
            )
            return 2
        sqlite_path = os.path.join(tempfile.gettempdir(), f"{args.db_name}.sqlite3")
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(sqlite_path + suffix) and not args.reuse_db:
                os.remove(sqlite_path + suffix)
        database: dict[str, Any] = {"ENGINE": "django.db.backends.sqlite3", "NAME": sqlite_path}
    else:
        if not args.reuse_db:
            create_postgres_database(server, args.db_name)
        elif not postgres_database_exists(server, args.db_name):
            print(
                f"--reuse-db: no database {args.db_name!r}; run once with --keep-db first.", file=sys.stderr
            )
            return 2
        database = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": args.db_name,
            "USER": server["user"],
            "PASSWORD": server["password"],
            "HOST": server["host"],
            "PORT": str(server["port"]),
        }
    postgres = server is not None

    redis_server = None
    redis_url = os.environ.get("REDIS_URL", "")
    if not redis_url:
        from django_jobs.redis_server import RedisServer

        redis_server = RedisServer().start()
        redis_url = redis_server.url
    try:
        return run(args, database, postgres, redis_url)
    finally:
        from django.db import connections

        connections.close_all()
        if redis_server is not None:
            redis_server.stop()
        if postgres and not args.keep_db:
            assert server is not None
            drop_postgres_database(server, args.db_name)
            print(f"dropped database {args.db_name!r}")
        elif sqlite_path and not args.keep_db and os.path.exists(sqlite_path):
            os.remove(sqlite_path)


def run(args: argparse.Namespace, database: dict[str, Any], postgres: bool, redis_url: str) -> int:
    configure_django(database, redis_url)
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.db.models import Count
    from django.test import Client

    from django_jobs.models import JobRecord

    call_command("migrate", verbosity=0, interactive=False)
    check_migrations_complete()
    env = environment(postgres)
    print(f"database: {env['database']}")
    print(f"django_jobs {env['django_jobs_commit']} from {env['django_jobs_path']}, Django {env['django']}")

    now = datetime.now(UTC).replace(microsecond=0)
    fill_s = vacuum_s = None
    if args.reuse_db:
        args.rows = JobRecord.objects.count()
        if not args.rows:
            raise SystemExit(f"--reuse-db: {args.db_name!r} has no job rows; run once with --keep-db first.")
        print(f"reusing {args.rows:,} rows")
    else:
        print(f"filling {args.rows:,} rows…", flush=True)
        started = time.perf_counter()
        if postgres:
            fill_postgres(args.rows, now)
        else:
            fill_python(args.rows, now)
        fill_s = time.perf_counter() - started
        started = time.perf_counter()
        with connection.cursor() as cursor:
            if postgres:
                cursor.execute(f"VACUUM (ANALYZE) {TABLE}")
                cursor.execute("VACUUM (ANALYZE) django_jobs_jobdependency")
            else:
                cursor.execute("ANALYZE")
        vacuum_s = time.perf_counter() - started
        print(f"filled in {fill_s:.1f} s ({args.rows / fill_s:,.0f} rows/s); VACUUM ANALYZE {vacuum_s:.1f} s")
    statuses = {
        row["status"]: row["n"]
        for row in JobRecord.objects.order_by().values("status").annotate(n=Count("pk"))
    }
    print("statuses:", ", ".join(f"{k} {v:,}" for k, v in sorted(statuses.items(), key=lambda kv: -kv[1])))

    user = get_user_model().objects.filter(
        username="bench"
    ).first() or get_user_model().objects.create_superuser("bench", "bench@example.com", "bench")
    client = Client()
    client.force_login(user)

    pages = []
    for kind, label, url in pick_pages():
        print(f"  {label} …", end=" ", flush=True)
        page = measure_page(client, kind, label, url, args.repeat, postgres)
        print(f"median {page['median_ms']:.1f} ms")
        pages.append(page)

    print()
    print(
        f"{args.rows:,} rows, {args.repeat} timed requests per page after {WARMUPS} warm-ups; "
        "verdict on p95 (and no flagged query); times are Django's test client, in process"
    )
    print_table(pages)

    plans: dict[str, dict[str, str]] = {}
    if postgres:
        print()
        for page in pages:
            if page["page"] not in ("unfiltered", "status=failed"):
                continue
            plans[page["page"]] = {}
            for name, sql in (("page query", main_listing_query(page)), ("capped count", count_query(page))):
                if sql is None:
                    continue
                plan = explain_analyze(sql)
                plans[page["page"]][name] = plan
                print(f"== EXPLAIN (ANALYZE, BUFFERS), {page['page']}, {name}:\n{sql}\n{plan}\n")
        print("scans per page (EXPLAIN of every query on the jobs table):")
        for page in pages:
            scans = sorted({scan for q in page["sql"] for scan in q.get("scans", [])})
            print(f"  {page['page']:<30} {'; '.join(scans) or '-'}")
        sizes = table_sizes()
        print("\nsizes:", ", ".join(f"{k} {v}" for k, v in sizes.items()))
    else:
        sizes = {}

    if args.json:
        report = {
            "rows": args.rows,
            "repeat": args.repeat,
            "warmups": WARMUPS,
            "fill_seconds": None if fill_s is None else round(fill_s, 2),
            "vacuum_analyze_seconds": None if vacuum_s is None else round(vacuum_s, 2),
            "statuses": statuses,
            "environment": env,
            "targets_ms": TARGETS_MS,
            "pages": pages,
            "plans": plans,
            "sizes": sizes,
        }
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2, default=str)
        print(f"\nwrote {args.json}")
    failed = [page["page"] for page in pages if page["verdict"] == "FAIL"]
    print(
        "\nall pages within their targets" if not failed else f"\nover target or flagged: {', '.join(failed)}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
