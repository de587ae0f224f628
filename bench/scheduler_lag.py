"""How late do delayed jobs start? Lag from ``scheduled_for`` to ``started_at``.

Starts a throwaway Redis (unless REDIS_URL is set), a SQLite database in a
temp directory (or PostgreSQL with DATABASE_URL), one ``rqscheduler`` and one
worker, schedules jobs a few seconds ahead at random sub-second offsets, and
prints the lag percentiles.

    python bench/scheduler_lag.py [--jobs 60] [--interval 1.0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--interval", type=float, default=1.0, help="rqscheduler --interval")
    args = parser.parse_args()

    from django_jobs.redis_server import RedisServer

    server = None
    if not os.environ.get("REDIS_URL"):
        server = RedisServer().start()
        os.environ["REDIS_URL"] = server.url
    workdir = tempfile.mkdtemp(prefix="django-jobs-lag-")
    os.environ["DJANGO_JOBS_TEST_DB_DIR"] = workdir
    os.environ["DJANGO_JOBS_TEST_DB_NAME"] = os.path.join(workdir, "lag.sqlite3")
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    os.environ["PYTHONPATH"] = str(ROOT)
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    if connection.vendor != "sqlite":
        os.environ["DJANGO_JOBS_TEST_DB_NAME"] = str(connection.settings_dict["NAME"])
    call_command("migrate", verbosity=0)
    from django_jobs.models import JobRecord
    from tests.testapp.jobs import add

    JobRecord.objects.all().delete()
    manage = [sys.executable, str(ROOT / "manage.py")]
    scheduler = subprocess.Popen(
        [*manage, "rqscheduler", "--interval", str(args.interval)], stderr=subprocess.DEVNULL
    )
    worker = subprocess.Popen(
        [*manage, "rqworker", "default", "--worker-class", "simple"], stderr=subprocess.DEVNULL
    )
    try:
        handles = []
        for index in range(args.jobs):
            handles.append(add.apply_async((index, 0), countdown=3 + (index % 10) * 0.37 + index * 0.05))
        deadline = time.monotonic() + 120
        while JobRecord.objects.filter(pk__in=[h.id for h in handles], status="finished").count() < args.jobs:
            if time.monotonic() > deadline:
                raise SystemExit("jobs did not all finish within 120 s")
            time.sleep(0.5)
        lags = sorted(
            (row.started_at - row.scheduled_for).total_seconds()
            for row in JobRecord.objects.filter(pk__in=[h.id for h in handles])
        )
    finally:
        for process in (scheduler, worker):
            process.terminate()
            process.wait(timeout=30)
        if server is not None:
            server.stop()
    quantiles = statistics.quantiles(lags, n=100)
    print(f"{args.jobs} delayed jobs, rqscheduler --interval {args.interval}, {connection.vendor}")
    print(
        f"lag from scheduled_for to started_at (s): min {lags[0]:.3f}  p50 {quantiles[49]:.3f}  "
        f"p95 {quantiles[94]:.3f}  max {lags[-1]:.3f}"
    )


if __name__ == "__main__":
    main()
