#!/usr/bin/env python
"""The worker's two row writes per job on PostgreSQL, with and without prepared statements.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test python bench/row_writes.py

Writes the start and the end of ``--jobs`` rows, one job after the other:

- as a ``SimpleWorker`` does (``records.mark_started_by_id`` then ``records.mark_finished``),
  once on a connection with Django's default ``prepare_threshold`` (``None``: nothing is
  prepared) and once with ``"OPTIONS": {"prepare_threshold": 5}``;
- as the ``BatchWorker`` does (``records.mark_finished_then_started``: one job's end with the
  next job's start): as one two-statement query through Django's cursor (what it sends where
  Django runs an execute wrapper, forced here with one that only runs the statement), and as a
  libpq pipeline, not prepared and prepared.

The modes take turns for ``--rounds`` rounds. Prints, per job: the wall-clock time, this
process's CPU time and the CPU time of the server process of the connection (read from
``/proc``: the server must run on this machine). Uses a database of its own on the server
(``django_jobs_bench_run``, dropped at the end), as ``bench/run.py`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR), str(BENCH_DIR.parent)]

#: Mode -> (worker, prepare_threshold, through Django's cursor).
MODES: dict[str, tuple[str, int | None, bool]] = {
    "simple, not prepared": ("simple", None, False),
    "simple, prepared": ("simple", 5, False),
    "batch, one query": ("batch", None, True),
    "batch, pipeline": ("batch", None, False),
    "batch, pipeline prepared": ("batch", 5, False),
}


def server_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--jobs", type=int, default=3000, help="rows written per round and mode (default 3000)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each mode once per round (default 3)")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.rounds < 1:
        parser.error("--jobs and --rounds must be at least 1")
    if not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        parser.error("set DATABASE_URL to a PostgreSQL server on this machine (postgres://…)")

    import run as bench
    from admin_1m import create_postgres_database, drop_postgres_database

    database, server = bench.database_settings(bench.parse_args([]), tempfile.mkdtemp())
    assert server is not None
    create_postgres_database(server, bench.BENCH_DB)
    # Redis is not used here: nothing is enqueued, the rows are created directly.
    bench.configure_django(
        {"redis_url": "redis://127.0.0.1:1/0", "database": database, "vendor": "postgresql"}
    )
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone
    from redis import Redis
    from rq.job import Job

    from django_jobs import records
    from django_jobs.models import JobRecord

    try:
        call_command("migrate", verbosity=0, interactive=False)
        ids = [f"row-writes-{index}" for index in range(args.jobs)]
        JobRecord.objects.bulk_create(
            JobRecord(id=job_id, func_name="benchjobs.noop", queue="default", enqueued_at=timezone.now())
            for job_id in ids
        )
        print(f"row writes: {args.jobs:,} jobs' start and end, {args.rounds} rounds", flush=True)
        figures: dict[str, list[tuple[float, float, float]]] = {mode: [] for mode in MODES}
        # The start reads only the job's id: the Redis client is never used (nor connected).
        unused = Redis(port=1)
        jobs = [Job(job_id, connection=unused) for job_id in ids]

        def simple() -> None:
            for job_id in ids:
                records.mark_started_by_id(job_id, "row-writes", timezone.now())
                records.mark_finished(job_id, None, timezone.now())

        def batch() -> None:
            records.mark_started_by_id(ids[0], "row-writes", timezone.now())
            for job_id, following in zip(ids, jobs[1:], strict=False):
                records.mark_finished_then_started(
                    (job_id, None, timezone.now()), following, "row-writes", timezone.now()
                )
            records.mark_finished(ids[-1], None, timezone.now())

        def only_run(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
            return execute(sql, params, many, context)

        for _ in range(args.rounds):
            for mode, (worker, threshold, through_django) in MODES.items():
                connection.close()
                connection.settings_dict["OPTIONS"]["prepare_threshold"] = threshold
                JobRecord.objects.update(status="queued", started_at=None, ended_at=None, attempts=0)
                pid = connection.connection.info.backend_pid
                server_before, cpu_before, began = (
                    server_cpu_seconds(pid),
                    time.process_time(),
                    time.perf_counter(),
                )
                with connection.execute_wrapper(only_run) if through_django else contextlib.nullcontext():
                    simple() if worker == "simple" else batch()
                wall, cpu = time.perf_counter() - began, time.process_time() - cpu_before
                server_cpu = server_cpu_seconds(pid) - server_before
                if JobRecord.objects.filter(status="finished", attempts=1).count() != args.jobs:
                    raise RuntimeError(f"{mode}: not every row was started once and finished")
                per_job = (wall / args.jobs * 1e6, cpu / args.jobs * 1e6, server_cpu / args.jobs * 1e6)
                figures[mode].append(per_job)
                print(
                    f"  {mode:>24}: {per_job[0]:,.0f} µs a job, this process's CPU {per_job[1]:,.0f} µs, "
                    f"the server's {per_job[2]:,.0f} µs",
                    flush=True,
                )
        print("medians:")
        for mode, runs in figures.items():
            wall, cpu, server_cpu = (statistics.median(run[part] for run in runs) for part in range(3))
            print(
                f"  {mode:>24}: {wall:,.0f} µs a job, this process's CPU {cpu:,.0f} µs, "
                f"the server's {server_cpu:,.0f} µs"
            )
    finally:
        connection.close()
        drop_postgres_database(server, bench.BENCH_DB)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
