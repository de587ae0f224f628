"""Fault injection: a few hundred jobs while workers die, Redis restarts empty and the database goes away.

Real workers (forking and simple) and a real scheduler run mixed jobs (fast,
slow, failing, retrying, poison) enqueued in waves, while the test kills workers
in the middle of a job, with their work-horses, by SIGKILL, restarts Redis empty
(enqueuing while it is down) and makes the database unavailable for a few
seconds. At the end every job must have its row, in its expected final
state, and the runs that the jobs logged must show no more duplicates than
docs/reliability.md allows. The figures are printed at the end of the run.

A poison job raises an error no database stores as it is (NUL, a lone
surrogate): it must end failed with its error escaped, and when its outcome is
kept in Redis during a database outage, it must not hold back the outcomes
behind it. A few jobs written with plain RQ name functions that are not
registered, one of them ``os.system``: each must end failed, refused, with no
worker running the function or importing its module.

The schedule and the job mix come from a seed, printed with the figures:
``DJANGO_JOBS_FAULTS_SEED=7 pytest tests/faults`` runs another schedule.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test.utils import override_settings
from rq import Queue
from rq.serializers import JSONSerializer

from django_jobs import spool
from django_jobs.models import FINAL_STATUSES, JobRecord
from django_jobs.queues import get_connection
from django_jobs.scheduler import LEADER_KEY
from django_jobs.testing import RedisServer
from tests.faultkit import FAST, children, database_outage_for_worker, start
from tests.processes import ROOT, terminate, wait_for
from tests.testapp.jobs import fault_failing, fault_fast, fault_poison, fault_retrying, fault_slow
from tests.testapp.unregistered import IMPORT_MARKER_ENV

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SEED = int(os.environ.get("DJANGO_JOBS_FAULTS_SEED") or 20_250_611)

#: One enqueue wave before each fault; a few more jobs while Redis is down.
WAVE_SIZE = 20
ENQUEUED_WHILE_REDIS_DOWN = 5
FAULTS = {"kill": 8, "redis": 5, "database": 5}
#: Share of each kind of job in a wave.
KINDS = {"fast": 0.37, "slow": 0.2, "failing": 0.13, "retrying": 0.23, "poison": 0.07}
#: A poison job's error as its row keeps it: NUL and the lone surrogate escaped.
ESCAPED_POISON = "bad\\x00value \\ud800"
#: Before each database outage, one poison job sleeping this long: the outage begins while it
#: runs and lasts until its outcome is kept in Redis, so that one goes through the spool each time.
POISON_SECONDS = 1.0
#: Jobs written with plain RQ that name an unregistered function of the test app (and one more,
#: naming os.system).
UNREGISTERED = 3
UNREGISTERED_FUNCTION = "tests.testapp.unregistered.leave_trace"
QUEUES = ("high", "default", "low")
#: The worker fleet: a killed worker is replaced by one of the same class.
WORKER_CLASSES = ("fork", "simple", "fork", "simple")
REDIS_DOWN_SECONDS = 1.5
DATABASE_DOWN_SECONDS = (2.5, 3.0)
#: A duplicate run counts as explained when the job's first run completed this close to a worker
#: kill or a Redis outage (the window of the fault, widened by this many seconds on each side).
EXPLAINED_WITHIN = 5.0
#: A generous bound for every job to reach its final state once the faults stop.
SETTLE_SECONDS = 300


@dataclass
class Fleet:
    """The processes of the run, kept going as a process manager would.

    ``kill()`` SIGKILLs a worker with its work-horse and starts a replacement;
    ``replace_exited()`` restarts any process that exited on its own (a
    worker quits when Redis goes away under a job it runs, as RQ's do).
    """

    directory: Path
    env: dict[str, str]
    processes: dict[str, subprocess.Popen[str]] = field(default_factory=dict)
    classes: dict[str, str] = field(default_factory=dict)
    killed: list[str] = field(default_factory=list)
    #: The jobs (by key) whose run a kill ended.
    killed_jobs: set[str] = field(default_factory=set)
    exited: list[str] = field(default_factory=list)
    started: int = 0

    def spawn(self, kind: str) -> str:
        """Start a worker of class ``kind`` ("fork", "simple"), or the scheduler ("scheduler")."""
        self.started += 1
        name = f"{kind}-{self.started}"
        if kind == "scheduler":
            args: tuple[str, ...] = ("rqscheduler",)
        else:
            args = ("rqworker", *QUEUES, "--name", name, "--worker-class", kind)
        self.processes[name] = start(*args, env=self.env, output=self.directory / f"{name}.log", options=FAST)
        self.classes[name] = kind
        return name

    def workers(self) -> list[str]:
        return sorted(name for name in self.processes if self.classes[name] != "scheduler")

    def ready(self) -> bool:
        """Whether every worker has registered in Redis and a scheduler leads."""
        redis = get_connection()
        return bool(redis.exists(LEADER_KEY)) and all(
            redis.exists(f"rq:worker:{name}") for name in self.workers()
        )

    def running(self, log_path: Path) -> list[tuple[str, int, str]]:
        """(worker, pid, job key) of the slow jobs running now: a run that logged its start and
        not its end."""
        ends: Counter[tuple[str, str]] = Counter()
        for line in log_path.read_text().splitlines() if log_path.exists() else []:
            key, pid, event, _at = line.split()
            ends[key, pid] += {"started": 1, "done": -1}.get(event, 0)
        keys = {int(pid): key for (key, pid), count in ends.items() if count > 0}
        found = []
        for name in self.workers():
            worker = self.processes[name].pid
            # A forking worker runs jobs in its work-horse, a simple one in itself.
            ours = {worker, *children(worker)}
            found += [(name, pid, key) for pid, key in keys.items() if pid in ours]
        return found

    def kill(self, rng: random.Random, log_path: Path, enqueue_slow: Callable[[], None]) -> str:
        """SIGKILL a worker in the middle of a job, and its work-horse, at once; start a replacement.

        The worker is frozen (SIGSTOP) first and killed only if its job is still
        running: a worker killed between taking a job from Redis and starting it
        is another case (see test_recovery.py). A job is killed once at most: each kill
        takes one of its attempts, and a job killed as often as it may run ends ``failed``,
        rightly, where this test expects every slow job to finish.
        """
        began = time.monotonic()
        added = False
        while True:
            candidates = [entry for entry in self.running(log_path) if entry[2] not in self.killed_jobs]
            rng.shuffle(candidates)
            for entry in candidates:
                name, _pid, key = entry
                process = self.processes[name]
                os.kill(process.pid, signal.SIGSTOP)
                if entry in self.running(log_path):
                    for victim in (process.pid, *children(process.pid)):
                        os.kill(victim, signal.SIGKILL)
                    process.wait()
                    del self.processes[name]
                    self.killed.append(name)
                    self.killed_jobs.add(key)
                    return self.spawn(self.classes[name])
                os.kill(process.pid, signal.SIGCONT)
            waited = time.monotonic() - began
            if waited > 60:
                raise AssertionError("no worker ran a slow job within 60 s: nothing to kill")
            if not candidates and not added and waited > 3:
                enqueue_slow()  # the wave's slow jobs are over: bring one
                added = True
            time.sleep(0.1)

    def replace_exited(self) -> None:
        for name, process in list(self.processes.items()):
            if process.poll() is not None:
                del self.processes[name]
                self.exited.append(name)
                self.spawn(self.classes[name])

    def unexplained_exits(self) -> list[str]:
        """Exits not caused by Redis going away (a worker must survive everything else)."""
        return [
            name
            for name in self.exited
            if not re.search(r"redis\.exceptions\.ConnectionError|Cannot reach Redis", self.output_of(name))
        ]

    def output_of(self, name: str) -> str:
        return (self.directory / f"{name}.log").read_text()

    def stop(self) -> None:
        for process in self.processes.values():
            terminate(process)

    def log(self) -> str:
        return "".join(path.read_text() for path in sorted(self.directory.glob("*.log")))


@dataclass
class Run:
    """The jobs enqueued so far, and what each must end as."""

    directory: Path
    rng: random.Random
    expected: dict[str, tuple[str, str]] = field(default_factory=dict)  # job id -> (kind, key)

    @property
    def log_path(self) -> str:
        return str(self.directory / "executions.log")

    def enqueue(self, count: int) -> None:
        kinds, weights = zip(*KINDS.items(), strict=True)
        for _ in range(count):
            kind = self.rng.choices(kinds, weights)[0]
            key = f"{kind}-{len(self.expected)}"
            queue = self.rng.choice(QUEUES)
            if kind == "fast":
                handle = fault_fast.apply_async([self.log_path, key], queue=queue)
            elif kind == "slow":
                seconds = round(self.rng.uniform(0.5, 2.0), 2)
                handle = fault_slow.apply_async([self.log_path, key, seconds], queue=queue)
            elif kind == "failing":
                handle = fault_failing.apply_async([self.log_path, key], queue=queue)
            elif kind == "poison":
                handle = fault_poison.apply_async([self.log_path, key], queue=queue)
            else:
                marker = str(self.directory / f"{key}.calls")
                failures = self.rng.randint(1, 2)
                handle = fault_retrying.apply_async([self.log_path, marker, key, failures], queue=queue)
            self.expected[handle.id] = (kind, key)

    def enqueue_slow(self) -> None:
        """One more slow job, drawing nothing from the seed (the mix stays the same)."""
        key = f"slow-{len(self.expected)}"
        handle = fault_slow.apply_async([self.log_path, key, 2.0], queue="high")
        self.expected[handle.id] = ("slow", key)

    def enqueue_poison(self) -> tuple[str, str]:
        """One more poison job that sleeps first, drawing nothing from the seed; (job id, key)."""
        key = f"poison-{len(self.expected)}"
        handle = fault_poison.apply_async([self.log_path, key, POISON_SECONDS], queue="high")
        self.expected[handle.id] = ("poison", key)
        return handle.id, key

    def enqueue_unregistered(self) -> None:
        """Jobs written with plain RQ, as anyone who can write to Redis could, naming functions that
        are neither registered nor allowed: one of the test app that would log its run, and
        os.system with a command that would create a file."""
        connection = get_connection()
        for index in range(UNREGISTERED + 1):
            key = f"unregistered-{len(self.expected)}"
            queue = Queue(QUEUES[index % len(QUEUES)], connection=connection, serializer=JSONSerializer)
            if index < UNREGISTERED:
                job = queue.enqueue(UNREGISTERED_FUNCTION, self.log_path, key)
            else:
                job = queue.enqueue("os.system", f"touch {shlex.quote(str(self.os_system_trace))}")
            self.expected[job.id] = ("unregistered", key)

    @property
    def os_system_trace(self) -> Path:
        return self.directory / "os-system-ran"

    @property
    def import_marker(self) -> Path:
        """The file an import of the unregistered function's module appends to."""
        return self.directory / "unregistered-imported"

    def events(self, key: str) -> dict[str, float]:
        """What the runs of job ``key`` logged: each event and when it came last."""
        path = Path(self.log_path)
        found = {}
        for line in path.read_text().splitlines() if path.exists() else []:
            logged, _pid, event, at = line.split()
            if logged == key:
                found[event] = float(at)
        return found

    def completed_runs(self) -> dict[str, list[float]]:
        """When each run of each job key completed its side effect (failing and poison jobs: raised)."""
        runs: dict[str, list[float]] = {}
        path = Path(self.log_path)
        for line in path.read_text().splitlines() if path.exists() else []:
            key, _pid, event, at = line.split()
            if event == "done" or (event == "raised" and key.startswith(("failing-", "poison-"))):
                runs.setdefault(key, []).append(float(at))
        return runs


def not_final() -> dict[str, str]:
    rows = JobRecord.objects.exclude(status__in=FINAL_STATUSES).values_list("pk", "status")
    return dict(rows)


def kept_in_redis() -> set[tuple[str, str]]:
    """(job id, step) of each outcome kept in Redis (the spool) now."""
    items = [json.loads(raw) for raw in get_connection().lrange(spool.SPOOL_KEY, 0, -1)]
    return {(str(item.get("job_id")), str(item.get("step"))) for item in items}


def poison_outage(run: Run, fleet: Fleet, outage: Any, seconds: float) -> str | None:
    """Make the database unavailable for ``seconds`` while a poison job runs, and on until its
    failure is kept in Redis; return its key if it was (not if it raised before the database
    went away)."""
    job_id, key = run.enqueue_poison()

    def began() -> bool:
        fleet.replace_exited()
        return "began" in run.events(key)

    wait_for(began)
    with outage():  # nothing is enqueued meanwhile: SQLite is locked for the test too
        cut_at = time.time()
        time.sleep(seconds)

        def kept_or_missed() -> bool:
            return (job_id, "failed") in kept_in_redis() or run.events(key).get("raised", cut_at) < cut_at

        with suppress(AssertionError):  # a poison outcome neither kept nor written shows below
            wait_for(kept_or_missed)
        return key if (job_id, "failed") in kept_in_redis() else None


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis for this test alone, to restart empty; the test process and its workers use it."""
    server = RedisServer().start()
    queues = {name: {"URL": server.url} for name in (*QUEUES, "emails")}
    queues["default"]["DEFAULT_TIMEOUT"] = 60  # type: ignore[assignment]
    try:
        with override_settings(RQ_QUEUES=queues):
            yield server
    finally:
        server.stop()


def test_no_job_is_lost_under_faults(tmp_path: Path, own_redis: RedisServer, capsys: Any) -> None:
    # One stream of random numbers per purpose, so that the job mix and the schedule do not
    # depend on what the processes did meanwhile.
    rng = random.Random(f"{SEED}-schedule")
    schedule = [kind for kind, count in FAULTS.items() for _ in range(count)]
    rng.shuffle(schedule)
    run = Run(tmp_path, random.Random(f"{SEED}-jobs"))
    victims = random.Random(f"{SEED}-victims")
    injected: Counter[str] = Counter()
    windows: list[tuple[str, float, float]] = []  # (fault, began, ended), wall-clock time
    poison_kept: list[str] = []  # the poison jobs whose failure an outage kept in Redis

    with database_outage_for_worker() as (db_env, outage):
        env = {"REDIS_URL": own_redis.url, IMPORT_MARKER_ENV: str(run.import_marker), **db_env}
        fleet = Fleet(tmp_path / "processes", env)
        fleet.directory.mkdir()
        for kind in ("scheduler", *WORKER_CLASSES):
            fleet.spawn(kind)
        try:
            wait_for(fleet.ready)
            began = time.monotonic()
            for fault in schedule:
                run.enqueue(WAVE_SIZE)
                time.sleep(rng.uniform(0.5, 2.0))  # let the workers get into the wave
                fleet.replace_exited()
                fault_began = time.time()
                if fault == "kill":
                    fleet.kill(victims, Path(run.log_path), run.enqueue_slow)
                elif fault == "redis":
                    own_redis.stop()
                    down_since = time.monotonic()
                    run.enqueue(ENQUEUED_WHILE_REDIS_DOWN)  # rows kept with needs_push
                    time.sleep(max(0.0, REDIS_DOWN_SECONDS - (time.monotonic() - down_since)))
                    own_redis.start()  # same port, empty
                    if injected["redis"] == FAULTS["redis"] - 1:
                        # A job written with plain RQ has no row until a worker takes it: Redis
                        # restarted empty before that loses it, as RQ loses any job then (RQ's loss,
                        # not ours). So these come after the last restart, never before one.
                        run.enqueue_unregistered()
                else:
                    kept = poison_outage(run, fleet, outage, rng.uniform(*DATABASE_DOWN_SECONDS))
                    poison_kept += [kept] if kept else []
                injected[fault] += 1
                windows.append((fault, fault_began, time.time()))
                time.sleep(rng.uniform(3.0, 5.0))  # let recovery begin before the next fault
            faults_done = time.monotonic()

            def settled() -> bool:
                fleet.replace_exited()
                return not not_final() and not spool.pending(get_connection())

            with suppress(AssertionError):  # reported below, with the rows that did not settle
                wait_for(settled, timeout=SETTLE_SECONDS)
            took = time.monotonic() - began
        finally:
            fleet.stop()

    fields = ("pk", "status", "result", "error", "error_history", "attempts", "worker_name", "needs_push")
    rows = {row["pk"]: row for row in JobRecord.objects.values(*fields)}
    missing = sorted(job_id for job_id in run.expected if job_id not in rows)
    stuck = [
        f"{run.expected[job_id][1]} {job_id}: {row['status']}, attempts {row['attempts']}, "
        f"worker {row['worker_name']!r}, needs_push {row['needs_push']}"
        for job_id, row in rows.items()
        if row["status"] not in FINAL_STATUSES
    ]
    runs = run.completed_runs()

    def near_fault(at: float, faults: tuple[str, ...] = ("kill", "redis")) -> bool:
        """Whether ``at`` falls in one of these faults (widened by EXPLAINED_WITHIN on each side)."""
        return any(
            fault in faults and began - EXPLAINED_WITHIN <= at <= ended + EXPLAINED_WITHIN
            for fault, began, ended in windows
        )

    wrong, never_ran = [], []
    poison_escaped, poison_died, refused, unregistered_ran = 0, 0, 0, []
    for job_id, (kind, key) in run.expected.items():
        row = rows.get(job_id)
        if kind == "unregistered" and key in runs:
            unregistered_ran.append(f"{key} {job_id}")
        if row is None or row["status"] not in FINAL_STATUSES:
            continue
        if kind == "failing":
            if row["status"] != "failed":
                wrong.append(f"{key} {job_id}: {row['status']}")
        elif kind == "poison":
            # Its own error, escaped; or a fault ended its only run before it could be recorded
            # (its worker exited as Redis went away), and the run was recovered as an orphan.
            escaped = f"ValueError: {key} {ESCAPED_POISON}" in row["error"]
            died = "died while running this job" in row["error"] and any(
                near_fault(at, ("redis",)) for at in runs.get(key, [])
            )
            poison_escaped += escaped
            poison_died += died
            if row["status"] != "failed" or not (escaped or died):
                wrong.append(f"{key} {job_id}: {row['status']} {row['error'][-300:]!r}")
        elif kind == "unregistered":
            # Refused once, never retried.
            if (row["status"], row["attempts"]) == ("failed", 1) and "is not registered" in row["error"]:
                refused += 1
            else:
                error = row["error"][-300:]
                wrong.append(f"{key} {job_id}: {row['status']}, attempts {row['attempts']} {error!r}")
        elif (row["status"], row["result"]) != ("finished", key):
            wrong.append(f"{key} {job_id}: {row['status']} {row['result']!r} {row['error_history']}")
        elif key not in runs:
            never_ran.append(f"{key} {job_id}")
    duplicated = {key: times for key, times in runs.items() if len(times) > 1}
    duplicates = sum(len(times) - 1 for times in duplicated.values())
    # A job runs again only because of a fault that hit it as its first run ended.
    unexplained_duplicates = [key for key, times in duplicated.items() if not near_fault(times[0])]
    # docs/reliability.md: a killed worker can run again the one job it was running; a Redis
    # restart, each job running at that moment (one per worker). A database outage, none.
    bound = injected["kill"] + injected["redis"] * len(WORKER_CLASSES)
    orphans = sum(
        "died while running this job" in entry["error"]
        for row in rows.values()
        for entry in row["error_history"] or []
    )
    log = fleet.log()
    pushed_again = sum(int(n) for n in re.findall(r"Pushed (\d+) job\(s\) again that Redis had lost", log))
    spooled = log.count("keeping it in Redis until the database is back")
    kept_jobs = {job_id for _step, job_id in re.findall(r"Could not record (\w+) of job (\S+) \(", log)}
    poison_through_spool = sum(
        job_id in kept_jobs for job_id, (kind, _key) in run.expected.items() if kind == "poison"
    )
    imports = run.import_marker.read_text().split() if run.import_marker.exists() else []
    unexplained = fleet.unexplained_exits()
    kinds = Counter(kind for kind, _key in run.expected.values())
    lost = len(missing) + len(stuck)

    summary = (
        f"fault injection on {connection.vendor}, seed {SEED}: {len(run.expected)} jobs "
        f"({', '.join(f'{kinds[kind]} {kind}' for kind in KINDS)}, "
        f"{kinds['unregistered']} unregistered via plain RQ), "
        f"{sum(injected.values())} faults ({injected['kill']} worker SIGKILLs, "
        f"{injected['redis']} Redis restarts, {injected['database']} database outages); "
        f"lost {lost}, wrong outcome {len(wrong)}, duplicates {duplicates} (bound {bound}); "
        f"orphans recovered {orphans}, pushed again after Redis lost them {pushed_again}, "
        f"outcomes kept in Redis during outages {spooled}; processes restarted after they exited "
        f"{len(fleet.exited)} ({len(unexplained)} not caused by Redis going away); "
        f"poison: {poison_escaped} failed with their error escaped, {poison_died} recovered as orphans "
        f"after a Redis outage, {poison_through_spool} through the spool ({len(poison_kept)} of "
        f"{injected['database']} held there by an outage); unregistered: {refused} refused, "
        f"{len(unregistered_ran)} ran, "
        f"their module imported {len(imports)} times; "
        f"{took:.0f} s, {took - (faults_done - began):.0f} s of it to settle after the last fault"
    )
    with capsys.disabled():
        print("\n" + summary)
        for key, times in sorted(duplicated.items()):
            print(f"  duplicate: {key} ran {len(times)} times, first at {times[0]:.1f}")

    assert not missing, f"jobs without a row: {missing}"
    assert not stuck, f"rows not final {SETTLE_SECONDS} s after the last fault:\n" + "\n".join(stuck)
    assert not wrong, f"jobs with the wrong outcome: {wrong}"
    assert not never_ran, f"finished jobs that never ran: {never_ran}"
    assert duplicates <= bound, summary
    assert not unexplained_duplicates, f"duplicates no fault explains: {unexplained_duplicates} ({windows})"
    assert not unexplained, "\n".join(f"{name}:\n{fleet.output_of(name)[-3000:]}" for name in unexplained)
    assert injected == FAULTS
    assert kinds["unregistered"] == UNREGISTERED + 1, "the unregistered jobs were never enqueued"
    assert not unregistered_ran, f"unregistered functions that ran: {unregistered_ran}"
    assert not run.os_system_trace.exists(), "a worker ran os.system"
    assert not imports, f"workers imported the unregistered function's module: pids {imports}"
    assert poison_kept or not injected["database"], "no outage held a poison outcome in Redis"
    # The marker would have told: importing the module, with its variable set, leaves it.
    env = {**os.environ, IMPORT_MARKER_ENV: str(run.import_marker)}
    module = UNREGISTERED_FUNCTION.rpartition(".")[0]
    subprocess.run([sys.executable, "-c", f"import {module}"], env=env, cwd=ROOT, check=True)
    assert run.import_marker.exists()
