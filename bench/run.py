#!/usr/bin/env python
"""django_jobs against plain RQ and django-rq, measured side by side in one run.

    python bench/run.py                 # the full run (a few minutes)
    python bench/run.py --quick         # a smoke run of a few hundred jobs (under a minute)
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test python bench/run.py

Redis: ``REDIS_URL`` if set, else a throwaway ``redis-server`` started here
(``django_jobs.redis_server.RedisServer``); it is flushed between measurements, so
never point ``REDIS_URL`` at a Redis that holds anything you want to keep.
Database: a fresh SQLite file in a temporary directory, or, when
``DATABASE_URL`` names a PostgreSQL server, a fresh database of its own on it
(``django_jobs_bench_run``, dropped again at the end; the database in the URL
is only used to connect). Django is configured here, without a settings module.

The three systems run the same functions (bench/benchjobs.py) on the same
Redis with the same serializer (RQ's ``JSONSerializer``, django_jobs'
default, given to plain RQ and django-rq as well) and the same worker
logging level (WARNING). Workers run in subprocesses that wait at a common
start signal, so process start-up is never timed.

Measured:

- enqueue rate, one by one: plain RQ ``Queue.enqueue``; django-rq's
  ``@job`` ``.delay()`` (and ``get_queue().enqueue``); django_jobs ``.delay()``
  (row insert + push), outside any transaction;
- enqueue rate in bulk: ``Queue.enqueue_many`` (both RQ flavours) and
  django_jobs ``.map()``, in calls of 1,000 jobs;
- drain rate of a pre-filled queue in burst mode, from the start signal until
  the last worker process has found its queue empty (before its teardown):
  ``SimpleWorker``, the forking ``Worker``, and several ``SimpleWorker``
  processes at once (``--procs``, default the number of cores);
- pickup latency with an idle worker: one job at a time, from just before the
  enqueue call until the job's first line runs (it writes ``time.time()`` to
  Redis); the next job is enqueued once the worker is idle again;
- database statements and Redis commands per job (enqueue, then a burst of an
  in-process ``SimpleWorker``); transaction control (BEGIN/COMMIT) is not
  counted as a statement, database connections opened are counted apart;
- worker memory (VmRSS of the worker process) after 1k, 5k, 10k and 15k jobs,
  and its growth over the 10,000 jobs that follow a warm-up of 5,000.

Rates are the median of ``--repeat`` runs (the systems take turns within a
run). The table shows each measurement, the ratio django_jobs / plain RQ and
the target with whether it is met; ``--json`` (default
bench/results/latest.json) gets every run's figures and the environment.
``--profile`` also writes cProfile reports of django_jobs' ``.delay()`` and
of its SimpleWorker draining to bench/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import platform
import pstats
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
# benchjobs (the job functions) and the django_jobs of this checkout, installed or not.
sys.path[:0] = [str(BENCH_DIR), str(ROOT)]

import benchjobs  # noqa: E402

ENV_CONFIG = "DJANGO_JOBS_BENCH_CONFIG"
#: django_jobs' options in every process of the bench. The job functions are plain functions
#: (every system runs the same ones), which django_jobs' workers run only when allowed.
JOBS_OPTIONS: dict[str, Any] = {"AUTODISCOVER": (), "ALLOWED_FUNCTIONS": ("benchjobs.",)}
#: Set by --no-hiredis for this process and the worker subprocesses it starts.
ENV_NO_HIREDIS = "DJANGO_JOBS_BENCH_NO_HIREDIS"
BENCH_DB = "django_jobs_bench_run"
GO_KEY = "bench:go:"
SYSTEMS = ("plain", "djrq", "jobs")
TITLES = {"plain": "plain rq", "djrq": "django-rq", "jobs": "django_jobs"}
#: Each system has its own queue on the same Redis.
QUEUE_NAMES = {"plain": "plain", "djrq": "djrq", "jobs": "default"}
BULK_CALL = 1000
MIB = 1024 * 1024


def block_hiredis() -> None:
    """Make redis-py use its pure-Python protocol parser and packer, as without ``hiredis``.

    redis-py looks for ``hiredis`` once, when it is first imported: this must run before.
    """
    if "redis" in sys.modules:
        raise RuntimeError("--no-hiredis: redis-py was imported before hiredis could be hidden from it")
    os.environ[ENV_NO_HIREDIS] = "1"
    sys.modules["hiredis"] = None  # type: ignore[assignment]  # importing it now raises ImportError


def redis_parser() -> str:
    """Which RESP parser redis-py uses in this process: hiredis (C) or its own (Python)."""
    from redis.utils import HIREDIS_AVAILABLE

    if not HIREDIS_AVAILABLE:
        return "Python"
    from importlib.metadata import version

    return f"hiredis {version('hiredis')}"


if os.environ.get(ENV_NO_HIREDIS):
    block_hiredis()


# -- Django -------------------------------------------------------------------------------


def configure_django(config: dict[str, Any]) -> None:
    import django
    from django.conf import settings

    url = config["redis_url"]
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-run-not-secret",
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "django_jobs"],
        DATABASES={"default": config["database"]},
        RQ_QUEUES={name: {"URL": url, "DEFAULT_TIMEOUT": 360} for name in QUEUE_NAMES.values()},
        DJANGO_JOBS={**JOBS_OPTIONS, "SYNCHRONOUS_START": config.get("synchronous_start", False)},
        LOGGING_CONFIG=None,
    )
    django.setup()


def database_settings(args: argparse.Namespace, workdir: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The Django DATABASES entry, and the PostgreSQL server to create it on (None for SQLite)."""
    from admin_1m import postgres_params

    url = os.environ.get("DATABASE_URL", "")
    server = postgres_params(url) if url else None
    if url and server is None:
        raise SystemExit(
            f"DATABASE_URL={url!r}: only postgres:// URLs are supported (or unset it for SQLite)."
        )
    if server is None:
        database: dict[str, Any] = {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.path.join(workdir, "bench.sqlite3"),
            "OPTIONS": {"timeout": 30},
        }
        if args.sqlite_wal:
            database["OPTIONS"]["init_command"] = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
    else:
        database = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": BENCH_DB,
            "USER": server["user"],
            "PASSWORD": server["password"],
            "HOST": server["host"],
            "PORT": str(server["port"]),
            "OPTIONS": {},
        }
        if args.prepared_statements:
            # psycopg's prepared statements, which Django leaves off unless OPTIONS set this:
            # django_jobs then prepares its row writes once per session (see docs/performance.md).
            database["OPTIONS"]["prepare_threshold"] = 5
    database["CONN_MAX_AGE"] = args.conn_max_age
    return database, server


# -- worker subprocesses ------------------------------------------------------------------


def vmrss_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds() -> float:
    """CPU time (user and system) of this process and of its children it has waited for: for
    a forking worker, that includes its work-horses."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def redis_cpu_seconds(redis: Any) -> float:
    """The CPU time the Redis server has used since it started (``INFO cpu``), all its threads."""
    info = redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def sqlite_memory_bytes() -> int | None:
    """What SQLite's own allocator holds in this process (``sqlite3_status64`` with
    ``SQLITE_STATUS_MEMORY_USED``): mostly its connections' page caches, each bounded by the
    connection's ``cache_size`` (2 MiB by default). None where it cannot be read."""
    import ctypes

    try:
        import _sqlite3

        status = ctypes.CDLL(_sqlite3.__file__).sqlite3_status64
    except (ImportError, OSError, AttributeError):
        return None
    counter = ctypes.POINTER(ctypes.c_int64)
    status.argtypes = [ctypes.c_int, counter, counter, ctypes.c_int]
    current, highest = ctypes.c_int64(), ctypes.c_int64()
    if status(0, ctypes.byref(current), ctypes.byref(highest), 0) != 0:
        return None
    return current.value


def worker_main(spec: dict[str, Any]) -> int:
    """Run in a subprocess: build the worker, say "ready", wait for the start signal, work."""
    from redis import Redis
    from rq.serializers import JSONSerializer

    config = json.loads(os.environ[ENV_CONFIG])
    # "batch": django_jobs' BatchWorker; plain RQ and django-rq have none and use SimpleWorker.
    system, simple = spec["system"], spec["worker"] in ("simple", "batch")
    make: Callable[[type[Any]], Any]
    if system == "plain":
        from rq import Queue, SimpleWorker, Worker

        connection = Redis.from_url(config["redis_url"])
        queues = [Queue(QUEUE_NAMES["plain"], connection=connection, serializer=JSONSerializer)]
        cls: type[Any] = SimpleWorker if simple else Worker

        def make(cls: type[Any]) -> Any:
            return cls(queues, connection=connection, serializer=JSONSerializer)

    elif system == "djrq":
        configure_django(config)
        import django_rq
        from rq import SimpleWorker, Worker

        cls = SimpleWorker if simple else Worker

        def make(cls: type[Any]) -> Any:
            return django_rq.get_worker(QUEUE_NAMES["djrq"], worker_class=cls, serializer=JSONSerializer)

    else:
        configure_django(config)
        from django_jobs import worker as jobs_worker
        from django_jobs.queues import get_queues, resolve_serializer

        jobs_queues = get_queues([QUEUE_NAMES["jobs"]])
        cls = jobs_worker.SimpleWorker if simple else jobs_worker.Worker
        if spec["worker"] == "batch":
            from django_jobs.worker import BatchWorker

            cls = BatchWorker
        elif spec["worker"] == "fork-at-dequeue":

            class ForkAtDequeue(jobs_worker.Worker):
                prefork = False

            cls = ForkAtDequeue

        def make(cls: type[Any]) -> Any:
            return cls(jobs_queues, connection=jobs_queues[0].connection, serializer=resolve_serializer())

    rss: dict[str, int] = {}
    sqlite: dict[str, int | None] = {}
    checkpoints = set(spec.get("rss_at") or ())
    if checkpoints:
        base = cls

        class Counting(base):  # type: ignore[misc, valid-type]
            done = 0

            def execute_job(self, job: Any, queue: Any) -> Any:
                result = super().execute_job(job, queue)
                self.done += 1
                if self.done in checkpoints:
                    rss[str(self.done)] = vmrss_bytes()
                    sqlite[str(self.done)] = sqlite_memory_bytes()
                return result

        cls = Counting
    worker = make(cls)
    if system != "plain":
        from django.db import connections

        connections.close_all()  # as both rqworker commands do before working
    go = Redis.from_url(config["redis_url"])
    print("ready", flush=True)
    if go.blpop([GO_KEY + spec["run"]], timeout=600) is None:
        return 3
    # The clock stops when the worker starts its teardown, having found its queue empty: RQ's
    # teardown joins the worker's pub/sub thread with a timeout of 1 s, and now and then waits
    # all of it (the thread waits up to 60 s for a subscription once the worker unsubscribed),
    # for every system alike; a drain of a second or two would count that second as work.
    stopped: list[float] = []
    teardown = worker.teardown

    def timed_teardown() -> None:
        stopped.append(time.time())
        teardown()

    worker.teardown = timed_teardown
    start, cpu_start = time.time(), cpu_seconds()
    worker.work(burst=spec["burst"], logging_level="WARNING")
    end, cpu = time.time(), cpu_seconds() - cpu_start
    report = {"start": start, "end": stopped[0] if stopped else end, "exited": end, "cpu": cpu}
    print(json.dumps({**report, "rss": rss, "sqlite": sqlite}), flush=True)
    return 0


@dataclass
class WorkerProcess:
    process: subprocess.Popen[str]
    run: str
    report: dict[str, Any] = field(default_factory=dict)


class Workers:
    """Start worker subprocesses, release them together, collect what they report."""

    def __init__(self, config: dict[str, Any], redis: Any) -> None:
        self.env = {**os.environ, ENV_CONFIG: json.dumps(config), "PYTHONPATH": str(ROOT)}
        self.redis = redis

    @contextlib.contextmanager
    def started(
        self, system: str, worker: str, count: int = 1, burst: bool = True, rss_at: list[int] | None = None
    ) -> Iterator[list[WorkerProcess]]:
        run = uuid.uuid4().hex
        spec = {"system": system, "worker": worker, "burst": burst, "run": run, "rss_at": rss_at or []}
        procs = [
            WorkerProcess(
                subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "--worker-spec", json.dumps(spec)],
                    env=self.env,
                    stdout=subprocess.PIPE,
                    text=True,
                ),
                run,
            )
            for _ in range(count)
        ]
        try:
            for proc in procs:
                line = proc.process.stdout.readline() if proc.process.stdout else ""
                if line.strip() != "ready":
                    raise RuntimeError(f"{system} {worker} worker did not start (exit {proc.process.wait()})")
            self.redis.rpush(GO_KEY + run, *(["go"] * count))
            yield procs
        finally:
            for proc in procs:
                if proc.process.poll() is None and not burst:
                    proc.process.terminate()  # a warm shutdown: the worker finishes its job first
            for proc in procs:
                try:
                    out, _ = proc.process.communicate(timeout=600 if burst else 60)
                except subprocess.TimeoutExpired:
                    proc.process.kill()
                    out, _ = proc.process.communicate()
                lines = [line for line in out.splitlines() if line.startswith("{")]
                if lines:
                    proc.report = json.loads(lines[-1])
                elif burst:
                    raise RuntimeError(f"{system} {worker} worker exited {proc.process.returncode}")


# -- measurements -------------------------------------------------------------------------


@dataclass
class Row:
    key: str
    label: str
    unit: str  # "rate", "ms", "us", "count", "mib"
    values: dict[str, float | None]
    runs: dict[str, list[float]] = field(default_factory=dict)
    note: str = ""
    target: str = ""
    met: bool | None = None
    ratio: float | None = None


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


class StatementCounter:
    """A Django execute wrapper counting statements; BEGIN/COMMIT/SAVEPOINT are transaction control."""

    CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")

    def __init__(self) -> None:
        self.statements: list[str] = []
        self.connections = 0

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        # One request may carry several statements (the batch worker's on PostgreSQL): each counts,
        # and executemany() runs its statement once per set of parameters.
        times = len(params) if many else 1
        for statement in sql.split("; "):
            if statement.strip() and not statement.lstrip().upper().startswith(self.CONTROL):
                self.statements.extend([statement] * times)
        return execute(sql, params, many, context)

    def connected(self, **kwargs: Any) -> None:
        self.connections += 1

    @contextlib.contextmanager
    def counting(self) -> Iterator[StatementCounter]:
        from django.db import connection
        from django.db.backends.signals import connection_created

        connection_created.connect(self.connected, weak=False)
        try:
            with connection.execute_wrapper(self):
                yield self
        finally:
            connection_created.disconnect(self.connected)


@contextlib.contextmanager
def signals_kept() -> Iterator[None]:
    """An in-process RQ worker installs its own SIGINT/SIGTERM handlers: put ours back after it."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


class Bench:
    def __init__(self, args: argparse.Namespace, config: dict[str, Any]) -> None:
        import django_rq
        from redis import Redis
        from rq import Queue
        from rq.serializers import JSONSerializer

        from django_jobs.decorators import JobFunction
        from django_jobs.queues import get_connection

        self.args = args
        self.config = config
        self.redis = get_connection(QUEUE_NAMES["jobs"])
        self.plain_connection = Redis.from_url(config["redis_url"])
        self.plain = Queue(QUEUE_NAMES["plain"], connection=self.plain_connection, serializer=JSONSerializer)
        self.djrq = django_rq.get_queue(QUEUE_NAMES["djrq"], serializer=JSONSerializer)
        names = ("noop", "small", "stamp")
        # JobFunction first: django-rq's decorator sets .delay on the function object itself.
        self.jobs = {name: JobFunction(getattr(benchjobs, name)) for name in names}
        self.djrq_jobs = {name: django_rq.job(self.djrq)(getattr(benchjobs, name)) for name in names}
        self.workers = Workers(config, self.redis)
        self.rows: list[Row] = []

    # -- helpers

    def flush(self) -> None:
        from django.db import connection

        self.redis.flushdb()
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM django_jobs_jobrecord")

    def queue(self, system: str) -> Any:
        from django_jobs.queues import get_queue

        return {"plain": self.plain, "djrq": self.djrq, "jobs": None}[system] or get_queue(
            QUEUE_NAMES["jobs"]
        )

    def call(self, function: str, index: int) -> tuple[Any, ...]:
        return () if function in ("noop", "stamp") else (index, 1)

    def enqueue_one(self, system: str, function: str) -> Callable[[int], Any]:
        func = getattr(benchjobs, function)
        if system == "plain":
            return lambda i: self.plain.enqueue(func, *self.call(function, i))
        if system == "djrq":
            return lambda i: self.djrq_jobs[function].delay(*self.call(function, i))
        if system == "djrq-queue":
            return lambda i: self.djrq.enqueue(func, *self.call(function, i))
        return lambda i: self.jobs[function].delay(*self.call(function, i))

    def enqueue_bulk(self, system: str, function: str, count: int) -> None:
        from rq import Queue

        func = getattr(benchjobs, function)
        for start in range(0, count, BULK_CALL):
            indexes = range(start, min(count, start + BULK_CALL))
            if system == "jobs":
                self.jobs[function].map([self.call(function, i) for i in indexes])
            else:
                queue = self.plain if system == "plain" else self.djrq
                queue.enqueue_many([Queue.prepare_data(func, self.call(function, i)) for i in indexes])

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def say(self, message: str) -> None:
        print(f"  {message}", flush=True)

    # -- enqueue

    def measure_enqueue(self) -> None:
        from django.db import transaction
        from django.test.utils import override_settings

        from django_jobs import pusher

        n, repeat = self.args.jobs, self.args.repeat
        print(f"enqueue: {n} jobs one by one, {n * 2} in bulk, {repeat} runs each", flush=True)
        for function in ("noop", "small"):
            kinds = (
                "plain",
                "djrq",
                "djrq-queue",
                "jobs",
                "jobs-atomic",
                "jobs-background",
                "jobs-redis-first",
            )
            one: dict[str, list[float]] = {kind: [] for kind in kinds}
            bulk: dict[str, list[float]] = {s: [] for s in SYSTEMS}
            for _ in range(repeat):
                for kind in kinds:
                    self.flush()
                    system, _, variant = kind.partition("-")
                    enqueue = self.enqueue_one(kind if system == "djrq" else system, function)
                    # "jobs-atomic": every .delay() in one transaction, so the rows share one commit.
                    block = transaction.atomic() if variant == "atomic" else contextlib.nullcontext()
                    # "jobs-background" and "jobs-redis-first": DJANGO_JOBS["PUSH"]; the clock stops
                    # once every job is in Redis and every row is written (pusher.flush()), not when
                    # the last .delay() returns.
                    mode = variant if variant in ("background", "redis-first") else "immediate"
                    with override_settings(DJANGO_JOBS={**JOBS_OPTIONS, "PUSH": mode}):
                        started = time.perf_counter()
                        with block:
                            for i in range(n):
                                enqueue(i)
                        pusher.flush(timeout=None)
                        one[kind].append(n / (time.perf_counter() - started))
                for system in SYSTEMS:
                    self.flush()
                    started = time.perf_counter()
                    self.enqueue_bulk(system, function, n * 2)
                    bulk[system].append(n * 2 / (time.perf_counter() - started))
            self.flush()
            self.add(
                Row(
                    f"enqueue.one.{function}",
                    f"enqueue one by one, {function} (jobs/s)",
                    "rate",
                    {s: median(one[s]) for s in SYSTEMS},
                    runs=one,
                    note="Queue.enqueue | @job .delay() | .delay()",
                )
            )
            self.add(
                Row(
                    f"enqueue.queue.{function}",
                    f"  django-rq get_queue().enqueue, {function}",
                    "rate",
                    {"plain": None, "djrq": median(one["djrq-queue"]), "jobs": None},
                )
            )
            for mode, until in (
                ("background", "every job is in Redis"),
                ("redis-first", "every job is in Redis and every row is written"),
            ):
                self.add(
                    Row(
                        f"enqueue.{mode}.{function}",
                        f"  .delay() with PUSH='{mode}', {function}",
                        "rate",
                        {
                            "plain": median(one["plain"]),
                            "djrq": median(one["djrq"]),
                            "jobs": median(one[f"jobs-{mode}"]),
                        },
                        runs={"jobs": one[f"jobs-{mode}"]},
                        note=f"the rate counts until {until}",
                    )
                )
            self.add(
                Row(
                    f"enqueue.atomic.{function}",
                    f"  .delay() x{n} in one atomic(), {function}",
                    "rate",
                    {"plain": None, "djrq": None, "jobs": median(one["jobs-atomic"])},
                )
            )
            self.add(
                Row(
                    f"enqueue.bulk.{function}",
                    f"enqueue in bulk, {function} (jobs/s)",
                    "rate",
                    {s: median(bulk[s]) for s in SYSTEMS},
                    runs=bulk,
                    note=f"enqueue_many | enqueue_many | .map(), {BULK_CALL} per call",
                )
            )
            self.say(f"{function}: done")

    # -- drain

    def drain_once(self, system: str, worker: str, count: int, procs: int) -> tuple[float, float, float]:
        """Drain ``count`` no-op jobs: the rate (jobs/s), and the CPU time per job (µs) of the
        worker processes (with their work-horses) and of the Redis server."""
        self.flush()
        self.enqueue_bulk(system, "noop", count)
        redis_before = redis_cpu_seconds(self.redis)
        with self.workers.started(system, worker, count=procs) as started:
            pass
        redis_cpu = redis_cpu_seconds(self.redis) - redis_before
        start = min(p.report["start"] for p in started)
        end = max(p.report["end"] for p in started)
        worker_cpu = sum(p.report["cpu"] for p in started)
        self.check_drained(system, count)
        return count / (end - start), worker_cpu / count * 1e6, redis_cpu / count * 1e6

    def check_drained(self, system: str, count: int) -> None:
        from django_jobs.models import JobRecord

        queue = self.queue(system)
        finished = queue.finished_job_registry.count
        if queue.count or finished != count:
            raise RuntimeError(
                f"{system}: {queue.count} jobs left in the queue, {finished} of {count} finished"
            )
        if system == "jobs":
            rows = JobRecord.objects.filter(status="finished").count()
            if rows != count:
                raise RuntimeError(f"django_jobs: {rows} of {count} rows are finished")

    def measure_drain(self) -> None:
        repeat, procs = self.args.repeat, self.args.procs
        # (worker, title, jobs, processes, whether django_jobs' BatchWorker runs beside it).
        # Plain RQ and django-rq have no batch worker: its row compares it with their
        # SimpleWorker's runs of the same plan, which it takes turns with.
        # Also django_jobs' forking Worker with prefork = False (forks at dequeue, as RQ
        # does): the same plan, so the gain of the spare shows in the table.
        plans = [
            ("simple", "SimpleWorker", self.args.drain_jobs, 1, "batch"),
            ("fork", "forking Worker", self.args.fork_jobs, 1, "fork-at-dequeue"),
            ("simple", f"{procs} SimpleWorker processes", self.args.drain_jobs, procs, "batch"),
        ]
        for worker, title, count, workers, extra in plans:
            if extra == "batch":
                name = "BatchWorker" if workers == 1 else f"{workers} BatchWorkers"
                label = f"drain, {name} (plain: Simple) (jobs/s)"
            else:
                name = "forking Worker, prefork off"
                label = f"  {name}"
            print(f"drain: {title} (and django_jobs' {name}), {count} no-op jobs, {repeat} runs", flush=True)
            # Per run: (rate, worker CPU per job, Redis CPU per job).
            runs: dict[str, list[tuple[float, float, float]]] = {s: [] for s in SYSTEMS}
            extra_runs: list[tuple[float, float, float]] = []
            for _ in range(repeat):
                for system in SYSTEMS:
                    runs[system].append(self.drain_once(system, worker, count, workers))
                extra_runs.append(self.drain_once("jobs", extra, count, workers))
            self.flush()
            rates = {s: [run[0] for run in runs[s]] for s in SYSTEMS}
            extra_rates = [run[0] for run in extra_runs]
            values = {s: median(rates[s]) for s in SYSTEMS}
            self.add(Row(f"drain.{worker}.{workers}", f"drain, {title} (jobs/s)", "rate", values, runs=rates))
            self.say(", ".join(f"{TITLES[s]} {values[s]:,.0f}/s" for s in SYSTEMS))
            self.add_cpu_rows(f"drain.{worker}.{workers}", runs)
            values = {**values, "jobs": median(extra_rates)}
            key = f"drain.{extra}.{workers}"
            self.add(Row(key, label, "rate", values, runs={**rates, "jobs": extra_rates}))
            self.say(f"django_jobs {name} {values['jobs']:,.0f}/s")
            self.add_cpu_rows(key, {**runs, "jobs": extra_runs})

    def add_cpu_rows(self, key: str, runs: dict[str, list[tuple[float, float, float]]]) -> None:
        """Lines for information, under the drain's own: CPU time per job of the worker processes
        and of Redis, the medians of its runs (what bounds N processes on a machine with N cores)."""
        for index, part, what in ((1, "worker", "worker CPU"), (2, "redis", "Redis CPU")):
            per_run = {s: [run[index] for run in r] for s, r in runs.items()}
            values = {s: median(v) for s, v in per_run.items()}
            self.add(Row(f"cpu.{part}.{key}", f"  {what} per job (µs)", "us", values, runs=per_run))

    # -- latency

    def measure_latency(self) -> None:
        samples = self.args.latency_samples
        for worker, title in (("simple", "SimpleWorker"), ("fork", "forking Worker")):
            print(f"latency: idle {title}, {samples} jobs one at a time", flush=True)
            results: dict[str, list[float]] = {}
            for system in SYSTEMS:
                self.flush()
                results[system] = self.latency_of(system, worker, samples)
            self.flush()
            for name, fraction in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
                self.add(
                    Row(
                        f"latency.{worker}.{name}",
                        f"pickup latency, idle {title}, {name}",
                        "ms",
                        {s: percentile(results[s], fraction) * 1000 for s in SYSTEMS},
                        runs={s: [round(v * 1000, 3) for v in results[s]] for s in SYSTEMS},
                    )
                )
            self.say(
                ", ".join(f"{TITLES[s]} p50 {percentile(results[s], 0.5) * 1000:.2f} ms" for s in SYSTEMS)
            )
            # And django_jobs' .delay() with PUSH = "redis-first" (the job first, its row after).
            self.extra_latency(results, worker, f"{worker}-redis-first", f"{title}, PUSH='redis-first'")
            if worker == "fork":  # and django_jobs' forking Worker with prefork = False
                self.extra_latency(
                    results, "fork-at-dequeue", "fork-at-dequeue", "forking Worker, prefork off"
                )
        print("latency: one round trip to Redis and to the database, idle and busy", flush=True)
        self.measure_idle_round_trips()

    def measure_idle_round_trips(self) -> None:
        """What one round trip costs when the other side sat idle, as it does before a pickup."""
        from django.db import connection

        from django_jobs.models import JobRecord

        samples, gap = self.args.latency_samples, 0.02
        JobRecord.objects.create(id="bench-idle", func_name="benchjobs.noop", queue="default")
        update = f"UPDATE {JobRecord._meta.db_table} SET worker_name = %s WHERE id = %s"

        def timed(step: Callable[[], Any], pause: float) -> float:
            took = []
            for _ in range(samples):
                time.sleep(pause)
                began = time.perf_counter()
                step()
                took.append(time.perf_counter() - began)
            return median(took) * 1000

        with connection.cursor() as cursor:
            steps: dict[str, Callable[[], Any]] = {
                "redis": self.redis.ping,
                "db": lambda: cursor.execute(update, ["w", "bench-idle"]),
            }
            figures = {
                (name, pause): timed(step, pause) for name, step in steps.items() for pause in (gap, 0)
            }
        self.flush()
        for name, title in (("redis", "Redis PING"), ("db", "DB one-row UPDATE")):
            for pause, when in ((gap, f"after {gap * 1000:.0f} ms idle"), (0, "back to back")):
                self.add(
                    Row(
                        f"idle.{name}.{'idle' if pause else 'busy'}",
                        f"  {title} {when}, p50",
                        "ms",
                        {"plain": None, "djrq": None, "jobs": figures[name, pause]},
                    )
                )
        said = (f"{name} {'idle' if pause else 'busy'} {ms:.2f} ms" for (name, pause), ms in figures.items())
        self.say(", ".join(said))

    def extra_latency(self, results: dict[str, list[float]], worker: str, key: str, title: str) -> None:
        """A variant of django_jobs measured after the three systems: its p50 and p99 lines."""
        from django.test.utils import override_settings

        from django_jobs import pusher

        push = "redis-first" if key.endswith("-redis-first") else "immediate"
        self.flush()
        with override_settings(DJANGO_JOBS={**JOBS_OPTIONS, "PUSH": push}):
            latencies = self.latency_of("jobs", worker, self.args.latency_samples)
            pusher.flush(timeout=None)
        self.flush()
        for name, fraction in (("p50", 0.5), ("p99", 0.99)):
            values = {s: percentile(results[s], fraction) * 1000 for s in SYSTEMS}
            values["jobs"] = percentile(latencies, fraction) * 1000
            self.add(Row(f"latency.{key}.{name}", f"  {title}, {name}", "ms", values))
        self.say(f"django_jobs, {title}: p50 {percentile(latencies, 0.5) * 1000:.2f} ms")

    def latency_of(self, system: str, worker: str, samples: int) -> list[float]:
        enqueue = self.enqueue_one(system, "stamp")
        warmup = 5
        latencies: list[float] = []
        with self.workers.started(system, worker, burst=False):
            time.sleep(0.5)  # the worker is now blocked on its queue
            for index in range(samples + warmup):
                before = time.time()
                enqueue(index)
                popped = self.redis.blpop([benchjobs.STAMPS_KEY], timeout=60)
                if popped is None:
                    raise RuntimeError(f"{system}: a job did not start within 60 s")
                job_id, started = popped[1].decode().split()
                if index >= warmup:
                    latencies.append(float(started) - before)
                self.wait_idle(job_id)
        return latencies

    def wait_idle(self, job_id: str) -> None:
        """Wait until the job is finished in Redis, then a little more for the worker's last writes."""
        deadline = time.monotonic() + 60
        while self.redis.hget(f"rq:job:{job_id}", "status") != b"finished":
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} did not finish within 60 s")
            time.sleep(0.001)
        time.sleep(0.02)

    # -- statements and commands

    def redis_calls(self) -> int:
        stats = self.redis.info("commandstats")
        return sum(
            int(value["calls"])
            for name, value in stats.items()
            if name not in ("cmdstat_info", "cmdstat_config")
        )

    def run_in_process(self, system: str, batch: bool = False) -> int:
        """Run the queue's jobs with a SimpleWorker (``batch``: django_jobs' BatchWorker) in this
        process; return the worker's Redis round trips (requests sent, a pipeline being one)."""
        from redis.connection import AbstractConnection
        from rq import SimpleWorker
        from rq.serializers import JSONSerializer

        from django_jobs import worker as jobs_worker
        from django_jobs.queues import resolve_serializer
        from django_jobs.worker import BatchWorker

        queue = self.queue(system)
        if system == "jobs":
            cls = BatchWorker if batch else jobs_worker.SimpleWorker
            worker = cls([queue], connection=queue.connection, serializer=resolve_serializer())
        else:
            worker = SimpleWorker([queue], connection=queue.connection, serializer=JSONSerializer)
        sent = 0
        send = AbstractConnection.send_packed_command

        def counting_send(connection: Any, *args: Any, **kwargs: Any) -> Any:
            nonlocal sent
            sent += 1
            return send(connection, *args, **kwargs)

        AbstractConnection.send_packed_command = counting_send  # type: ignore[method-assign]
        try:
            with signals_kept():
                worker.work(burst=True, logging_level="WARNING")
        finally:
            AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
        return sent

    def measure_counts(self) -> None:
        count = self.args.count_jobs
        print(f"counts: database statements and Redis commands, {count} small jobs", flush=True)
        enqueue_cmds: dict[str, float] = {}
        bulk_cmds: dict[str, float] = {}
        work_cmds: dict[str, float] = {}
        trips: dict[str, float] = {}
        statements: dict[str, dict[str, float]] = {}
        batch_trips = batch_cmds = batch_statements = 0.0
        for system in SYSTEMS:
            # Bulk first (its jobs are thrown away), then one by one, then the worker.
            self.flush()
            self.redis.config_resetstat()
            self.enqueue_bulk(system, "small", count)
            bulk_cmds[system] = self.redis_calls() / count
            self.flush()
            counter = StatementCounter()
            with counter.counting():
                self.enqueue_bulk(system, "small", count)
            bulk_statements = len(counter.statements) / count
            self.flush()
            enqueue = self.enqueue_one(system, "small")
            self.redis.config_resetstat()
            counter = StatementCounter()
            with counter.counting():
                for i in range(count):
                    enqueue(i)
            enqueue_cmds[system] = self.redis_calls() / count
            enqueue_statements = len(counter.statements) / count
            self.redis.config_resetstat()
            counter = StatementCounter()
            with counter.counting():
                trips[system] = self.run_in_process(system) / count
            work_cmds[system] = self.redis_calls() / count
            self.check_drained(system, count)
            if system == "jobs":
                # The same jobs again, for django_jobs' BatchWorker.
                self.flush()
                for i in range(count):
                    enqueue(i)
                self.redis.config_resetstat()
                batch_counter = StatementCounter()
                with batch_counter.counting():
                    batch_trips = self.run_in_process(system, batch=True) / count
                batch_cmds = self.redis_calls() / count
                self.check_drained(system, count)
                batch_statements = len(batch_counter.statements) / count
            statements[system] = {
                "enqueue": enqueue_statements,
                "bulk": bulk_statements,
                "worker": len(counter.statements) / count,
                "connections": counter.connections / count,
            }
            if system == "jobs":
                sample = sorted({" ".join(sql.split()[:3]) for sql in counter.statements})
                self.say(f"django_jobs worker statements: {', '.join(sample)}")
        self.flush()
        self.add(
            Row(
                "db.enqueue",
                "DB statements per job: .delay()",
                "count",
                {s: statements[s]["enqueue"] for s in SYSTEMS},
            )
        )
        self.add(
            Row(
                "db.bulk", "DB statements per job: bulk", "count", {s: statements[s]["bulk"] for s in SYSTEMS}
            )
        )
        self.add(
            Row(
                "db.worker",
                "DB statements per job: worker",
                "count",
                {s: statements[s]["worker"] for s in SYSTEMS},
            )
        )
        self.add(
            Row(
                "db.worker.batch",
                "  the same, BatchWorker (plain: Simple)",
                "count",
                {s: statements[s]["worker"] for s in SYSTEMS} | {"jobs": batch_statements},
            )
        )
        self.add(
            Row(
                "db.total",
                "DB statements per job lifecycle",
                "count",
                {s: statements[s]["enqueue"] + statements[s]["worker"] for s in SYSTEMS},
            )
        )
        self.add(
            Row(
                "db.connections",
                "DB connections opened per job: worker",
                "count",
                {s: statements[s]["connections"] for s in SYSTEMS},
                note=f"CONN_MAX_AGE={self.args.conn_max_age}",
            )
        )
        self.add(Row("redis.enqueue", "Redis commands per job: enqueue", "count", enqueue_cmds))
        self.add(Row("redis.bulk", "Redis commands per job: bulk enqueue", "count", bulk_cmds))
        self.add(Row("redis.worker", "Redis commands per job: worker", "count", work_cmds))
        self.add(
            Row(
                "redis.worker.batch",
                "  the same, BatchWorker (plain: Simple)",
                "count",
                {**work_cmds, "jobs": batch_cmds},
            )
        )
        self.add(Row("redis.trips", "Redis round trips per job: worker", "count", trips))
        self.add(
            Row(
                "redis.trips.batch",
                "  the same, BatchWorker (plain: Simple)",
                "count",
                {**trips, "jobs": batch_trips},
            )
        )
        self.add(
            Row(
                "redis.total",
                "Redis commands per job lifecycle",
                "count",
                {s: enqueue_cmds[s] + work_cmds[s] for s in SYSTEMS},
            )
        )
        self.say(", ".join(f"{TITLES[s]} {enqueue_cmds[s] + work_cmds[s]:.1f} commands" for s in SYSTEMS))

    # -- memory

    def measure_memory(self) -> None:
        warm_up, span = self.args.memory_warm_up, self.args.memory_jobs
        total = warm_up + span
        # RSS after 10,000 jobs (the figure asked for), and its growth over the --memory-jobs jobs
        # that come after a warm-up: every worker's RSS grows over its first few thousand jobs
        # (allocator arenas, caches, SQLite's pages) and then stays flat; a leak keeps growing.
        checkpoints = sorted({max(1, warm_up // 5), warm_up, min(10_000, total), total})
        print(
            f"memory: SimpleWorker RSS over {total:,} small jobs ({warm_up:,} to warm up, then {span:,}; "
            f"at {checkpoints})",
            flush=True,
        )
        # The three workers run at the same time (each on its own queue): only their memory
        # is measured here, and the section takes a third of the time.
        self.flush()
        for system in SYSTEMS:
            self.enqueue_bulk(system, "small", total)
        with contextlib.ExitStack() as stack:
            started = {
                system: stack.enter_context(self.workers.started(system, "simple", rss_at=checkpoints))
                for system in SYSTEMS
            }
        for system in SYSTEMS:
            self.check_drained(system, total)
        rss = {system: started[system][0].report["rss"] for system in SYSTEMS}
        in_sqlite = {system: started[system][0].report["sqlite"] for system in SYSTEMS}
        self.flush()
        for point in checkpoints:
            self.add(
                Row(
                    f"rss.{point}",
                    f"worker RSS after {point:,} jobs (MiB)",
                    "mib",
                    {s: rss[s][str(point)] / MIB for s in SYSTEMS},
                )
            )

        def growth(first: int, last: int, less_sqlite: bool = False) -> dict[str, float]:
            grown = {}
            for s in SYSTEMS:
                value = rss[s][str(last)] - rss[s][str(first)]
                if less_sqlite:
                    held = in_sqlite[s][str(last)], in_sqlite[s][str(first)]
                    if held[0] is None or held[1] is None:
                        continue
                    value -= held[0] - held[1]
                grown[s] = value / MIB
            return grown

        first = checkpoints[0]
        if first < warm_up:
            self.add(
                Row(
                    "rss.warm-up",
                    f"worker RSS growth {first:,} -> {warm_up:,} jobs (MiB)",
                    "mib",
                    growth(first, warm_up),
                )
            )
        title = f"worker RSS growth {warm_up:,} -> {total:,} jobs (MiB)"
        self.add(Row("rss.growth", title, "mib", growth(warm_up, total)))
        if self.config["vendor"] == "sqlite" and in_sqlite["jobs"][str(total)] is not None:
            # SQLite's page cache fills as the table grows, up to its cache_size: what the
            # worker's RSS grew by besides it is what a leak would show.
            self.add(
                Row(
                    "rss.growth.less-sqlite",
                    "  the same, less SQLite's own memory (MiB)",
                    "mib",
                    growth(warm_up, total, less_sqlite=True),
                )
            )
            held = [f"{in_sqlite['jobs'][str(point)] / MIB:.2f} MiB at {point:,}" for point in checkpoints]
            self.say(f"SQLite's own memory in django_jobs' worker: {', '.join(held)}")
        self.say(
            f"over the {span:,} jobs after the warm-up: "
            + ", ".join(f"{TITLES[s]} {value:+.2f} MiB" for s, value in growth(warm_up, total).items())
        )

    # -- profile

    def profile(self, results_dir: Path) -> dict[str, str]:
        count = self.args.profile_jobs
        print(f"profile: django_jobs .delay() and SimpleWorker over {count} small jobs", flush=True)
        paths = {}
        self.flush()
        enqueue = self.enqueue_one("jobs", "small")
        for name, work in (
            ("enqueue", lambda: [enqueue(i) for i in range(count)]),
            ("worker", lambda: self.run_in_process("jobs")),
        ):
            profiler = cProfile.Profile()
            profiler.enable()
            work()
            profiler.disable()
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats("tottime").print_stats(30)
            stats.sort_stats("cumulative").print_stats(40)
            path = results_dir / f"profile-{name}-{self.config['vendor']}.txt"
            path.write_text(out.getvalue())
            paths[name] = str(path)
            self.say(f"{name}: {path}")
        self.flush()
        return paths


# -- targets and the table ----------------------------------------------------------------


def ratio(row: Row, base: str = "plain") -> float | None:
    jobs, other = row.values.get("jobs"), row.values.get(base)
    if jobs is None or not other:
        return None
    return jobs / other


def apply_targets(rows: list[Row]) -> None:
    for row in rows:
        # A ratio of two growths near zero says nothing.
        row.ratio = None if row.key.startswith(("rss.growth", "rss.warm-up")) else ratio(row)
        jobs = row.values.get("jobs")
        if jobs is None:
            continue
        if row.key.startswith(("enqueue.one.", "enqueue.background.", "enqueue.redis-first.")):
            versus = ratio(row, "djrq")
            row.target = f">= 0.8x django-rq .delay() ({versus:.2f}x)" if versus is not None else ""
            row.met = versus is not None and versus >= 0.8
        elif row.key.startswith("enqueue.bulk."):
            row.target = ">= 4,000/s"
            row.met = jobs >= 4000
        elif row.key.startswith("drain.batch."):
            # Same number of processes on both sides: the ratio is also the ratio per core.
            row.target = ">= 2x plain rq, per core"
            row.met = row.ratio is not None and row.ratio >= 2
        elif row.key.startswith(("drain.fork-at-dequeue.", "latency.fork-at-dequeue.")):
            continue  # shown for comparison: the default is the forking Worker's own row
        elif row.key.startswith("drain."):
            row.target = ">= 0.9x plain rq"
            row.met = row.ratio is not None and row.ratio >= 0.9
        elif row.key.startswith("latency.") and row.key.endswith(".p50"):
            row.target = "<= 5 ms"
            row.met = jobs <= 5
        elif row.key.startswith("latency.") and row.key.endswith(".p99"):
            row.target = "<= 20 ms"
            row.met = jobs <= 20
        elif row.key == "db.total":
            row.target = "<= 3"
            row.met = jobs <= 3
        elif row.key in ("rss.growth", "rss.growth.less-sqlite"):
            row.target = "<= 1 MiB (no leak)"
            row.met = jobs <= 1


def cell(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "rate":
        return f"{value:,.0f}/s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "us":
        return f"{value:,.0f} µs"
    if unit == "mib":
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return f"{value:.2f}"


def print_table(rows: list[Row]) -> None:
    header = ("measurement", *(TITLES[s] for s in SYSTEMS), "jobs/plain", "target", "")
    widths = (48, 12, 12, 12, 10, 34, 1)
    line = "  ".join(
        f"{name:<{width}}" if index in (0, 5, 6) else f"{name:>{width}}"
        for index, (name, width) in enumerate(zip(header, widths, strict=True))
    )
    print(line.rstrip())
    print("-" * len(line.rstrip()))
    for row in rows:
        met = "" if row.met is None else ("✓" if row.met else "✗")
        cells = (
            row.label,
            *(cell(row.values.get(s), row.unit) for s in SYSTEMS),
            f"{row.ratio:.2f}x" if row.ratio is not None else "-",
            row.target,
            met,
        )
        print(
            "  ".join(
                f"{text:<{width}}" if index in (0, 5, 6) else f"{text:>{width}}"
                for index, (text, width) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()
        )


def environment(config: dict[str, Any], redis: Any) -> dict[str, Any]:
    from importlib.metadata import version

    from django.db import connection

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "redis_server": redis.info("server").get("redis_version"),
        "redis_parser": redis_parser(),
    }
    for package in ("django", "rq", "django-rq", "redis", "psycopg"):
        try:
            info[package] = version(package)
        except Exception:
            info[package] = None
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT version()")
            info["database"] = cursor.fetchone()[0]
        else:
            cursor.execute("SELECT sqlite_version()")
            info["database"] = "SQLite " + cursor.fetchone()[0]
    try:
        info["django_jobs_commit"] = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["django_jobs_commit"] = "unknown"
    return info


# -- main ---------------------------------------------------------------------------------

SECTIONS = ("enqueue", "drain", "latency", "counts", "memory")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure django_jobs against plain RQ and django-rq, side by side.",
        epilog="Set DATABASE_URL=postgres://… for PostgreSQL, REDIS_URL to use a running Redis "
        "(it is flushed).",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few hundred jobs")
    parser.add_argument("--jobs", type=int, help="jobs per enqueue run (default 2000; --quick 200)")
    parser.add_argument("--repeat", type=int, help="runs per rate measurement (default 3; --quick 1)")
    parser.add_argument(
        "--procs", type=int, default=os.cpu_count() or 2, help="worker processes for the N-process drain"
    )
    parser.add_argument(
        "--memory-jobs",
        type=int,
        help="jobs over which the worker's RSS must not grow, after the warm-up (default 10000; --quick 500)",
    )
    parser.add_argument(
        "--memory-warm-up",
        type=int,
        help="jobs each worker runs before that span starts (default 5000; --quick 250)",
    )
    parser.add_argument(
        "--only", help=f"comma-separated sections to run: {', '.join(SECTIONS)} (default: all)"
    )
    parser.add_argument(
        "--conn-max-age",
        type=int,
        default=60,
        help="CONN_MAX_AGE of the database (default 60: persistent connections, as docs/performance.md "
        "recommends for workers; 0 is Django's default)",
    )
    parser.add_argument(
        "--sqlite-wal",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="SQLite in WAL mode with synchronous=NORMAL, as docs/performance.md recommends (the default); "
        "--no-sqlite-wal for Django's default, a rollback journal that syncs every commit",
    )
    parser.add_argument(
        "--prepared-statements",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="PostgreSQL: OPTIONS['prepare_threshold'] = 5, as docs/performance.md recommends (the "
        "default): django_jobs' row writes are prepared once per session; --no-prepared-statements "
        "for Django's default, no prepared statements",
    )
    parser.add_argument(
        "--json", metavar="PATH", help="where to write the results (default bench/results/latest.json)"
    )
    parser.add_argument("--profile", action="store_true", help="also profile django_jobs' enqueue and worker")
    parser.add_argument(
        "--synchronous-start",
        action="store_true",
        help="PostgreSQL: DJANGO_JOBS['SYNCHRONOUS_START'] = True (the worker's start write waits for "
        "its flush to disk, as it did before it was made asynchronous)",
    )
    parser.add_argument(
        "--no-hiredis",
        action="store_true",
        help="redis-py's pure-Python protocol parser for every system, as if hiredis were not installed",
    )
    parser.add_argument("--worker-spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    args.jobs = args.jobs or (200 if quick else 2000)
    args.repeat = args.repeat or (1 if quick else 3)
    if args.jobs < 10 or args.repeat < 1 or args.procs < 1:
        parser.error("--jobs must be at least 10, --repeat and --procs at least 1")
    args.drain_jobs = args.jobs // 2
    args.fork_jobs = max(20, args.jobs // 10)
    args.latency_samples = 30 if quick else 200
    args.count_jobs = 50 if quick else 200
    args.memory_jobs = (500 if quick else 10_000) if args.memory_jobs is None else args.memory_jobs
    args.memory_warm_up = (250 if quick else 5_000) if args.memory_warm_up is None else args.memory_warm_up
    if min(args.memory_jobs, args.memory_warm_up) < 1:
        parser.error("--memory-jobs and --memory-warm-up must be at least 1")
    args.profile_jobs = 200 if quick else 1000
    sections = (args.only or ",".join(SECTIONS)).split(",")
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--only: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    args.sections = [name for name in SECTIONS if name in sections]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.no_hiredis and not os.environ.get(ENV_NO_HIREDIS):
        block_hiredis()
    if args.worker_spec:
        return worker_main(json.loads(args.worker_spec))

    from admin_1m import create_postgres_database, drop_postgres_database

    from django_jobs.redis_server import RedisServer

    workdir = tempfile.mkdtemp(prefix="django-jobs-bench-")
    database, server = database_settings(args, workdir)
    redis_server = None
    redis_url = os.environ.get("REDIS_URL", "")
    if not redis_url:
        redis_server = RedisServer().start()
        redis_url = redis_server.url
    if server is not None:
        create_postgres_database(server, BENCH_DB)
    config = {
        "redis_url": redis_url,
        "database": database,
        "vendor": "postgresql" if server is not None else "sqlite",
        "synchronous_start": args.synchronous_start,
    }
    try:
        return run(args, config)
    finally:
        from django.db import connections

        connections.close_all()
        if redis_server is not None:
            redis_server.stop()
        if server is not None:
            drop_postgres_database(server, BENCH_DB)
        for name in os.listdir(workdir):
            os.remove(os.path.join(workdir, name))
        os.rmdir(workdir)


def run(args: argparse.Namespace, config: dict[str, Any]) -> int:
    configure_django(config)
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    bench = Bench(args, config)
    env = environment(config, bench.redis)
    began = time.monotonic()
    print(
        f"django_jobs bench: {env['database']}, Redis {env['redis_server']} (redis-py's parser: "
        f"{env['redis_parser']}), {env['cpus']} CPUs, "
        f"load {env['loadavg_start'][0]:.2f}; JSONSerializer for every system, workers at WARNING, "
        f"CONN_MAX_AGE={args.conn_max_age}"
        f"{', SQLite WAL' if args.sqlite_wal and config['vendor'] == 'sqlite' else ''}"
        f"{', SYNCHRONOUS_START' if args.synchronous_start else ''}"
        f"{', prepare_threshold=5' if args.prepared_statements and config['vendor'] == 'postgresql' else ''}",
        flush=True,
    )
    for section in args.sections:
        getattr(bench, f"measure_{section}")()
    results_dir = BENCH_DIR / "results"
    profiles = {}
    if args.profile:
        results_dir.mkdir(exist_ok=True)
        profiles = bench.profile(results_dir)
    env["loadavg_end"] = os.getloadavg()
    env["seconds"] = round(time.monotonic() - began, 1)

    apply_targets(bench.rows)
    print()
    load = f"load {env['loadavg_start'][0]:.2f} at the start and {env['loadavg_end'][0]:.2f} at the end"
    took = f"{env['seconds']:.0f} s"
    print(
        f"Results ({config['vendor']}, redis-py's parser: {env['redis_parser']}, {took}, {load}; "
        f"rates: medians of {args.repeat} runs):"
    )
    print_table(bench.rows)
    missed = [row.label.strip() for row in bench.rows if row.met is False]
    print()
    print(f"targets met: {sum(row.met is True for row in bench.rows)}, missed: {len(missed)}")

    path = Path(args.json) if args.json else results_dir / "latest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "environment": env,
        "settings": {
            key: value for key, value in vars(args).items() if key not in ("worker_spec", "json", "only")
        },
        "rows": [
            {
                "key": row.key,
                "label": row.label.strip(),
                "unit": row.unit,
                "values": row.values,
                "ratio_jobs_plain": row.ratio,
                "target": row.target,
                "met": row.met,
                "note": row.note,
                "runs": row.runs,
            }
            for row in bench.rows
        ],
        "profiles": profiles,
    }
    path.write_text(json.dumps(payload, indent=2))
    print(f"JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
