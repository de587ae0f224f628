"""Jobs used by the tests; imported by the worker through autodiscovery."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from rq import Retry

from django_jobs import job
from django_jobs.models import JobRecord


@job
def add(a: int, b: int) -> int:
    return a + b


@job("high")
def echo(value: Any) -> Any:
    return value


@job(queue="low", timeout=30, result_ttl=600, ttl=300, description="fails on purpose")
def explode(message: str) -> None:
    raise ValueError(message)


@job("emails", retry=2)
def flaky(marker_path: str) -> str:
    """Fail until called a third time (the attempt count lives in a file)."""
    count = 1
    if os.path.exists(marker_path):
        with open(marker_path) as handle:
            count = int(handle.read()) + 1
    with open(marker_path, "w") as handle:
        handle.write(str(count))
    if count < 3:
        raise RuntimeError(f"attempt {count} fails")
    return f"ok after {count}"


@job
def returns_object() -> Any:
    return object()


@job
def count_rows() -> int:
    """Touch the database from inside a job."""
    return JobRecord.objects.count()


@job
def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@job
def pid() -> int:
    return os.getpid()


@job
def asks_for_retry() -> Any:
    """Ask RQ to run it again, every time (RQ gives up after Retry.max)."""
    from rq import Retry

    return Retry(max=1)


@job(redact=["card_number"])
def charge(order_id: int, card_number: str, *, cvv: str = "") -> str:
    return f"charged {order_id}"


@job
def crunch(steps: int) -> int:
    """Report progress on every step (the helper throttles the writes)."""
    from django_jobs import set_progress

    writes = 0
    for step in range(1, steps + 1):
        writes += set_progress(step, steps, message=f"step {step}")
    return writes


@job("low", cron="0 3 * * *", schedule_timezone="Europe/Paris")
def nightly_cleanup() -> str:
    return "cleaned"


# --- reliability ---------------------------------------------------------------------------------


def _count_call(marker_path: str) -> int:
    """Count this call in a file; return the call's number (1 for the first)."""
    count = 1
    if os.path.exists(marker_path):
        with open(marker_path) as handle:
            count = int(handle.read() or 0) + 1
    with open(marker_path, "w") as handle:
        handle.write(str(count))
    return count


@job(retry=Retry(max=1, interval=[30]))
def fails_once_then_waits(marker_path: str) -> str:
    """Fail the first call; the retry comes 30 s later."""
    if _count_call(marker_path) == 1:
        raise RuntimeError("first call fails")
    return "second call"


@job(retry=3, retry_on=(ConnectionError,))
def picky(marker_path: str, kind: str) -> None:
    """Raise ``kind`` on every call: only ConnectionError is worth a retry."""
    _count_call(marker_path)
    raise ConnectionError("network down") if kind == "connection" else ValueError("bad input")


@job(timeout=1)
def overruns(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@job
def calls_sys_exit(code: int) -> None:
    sys.exit(code)


@job
def calls_os_exit(code: int) -> None:
    os._exit(code)


@job(retry=1)
def hangs_first_time(marker_path: str, pid_path: str) -> str:
    """The first call writes its pid and hangs (a test kills it); the retry returns."""
    if _count_call(marker_path) == 1:
        with open(pid_path, "w") as handle:
            handle.write(str(os.getpid()))
        time.sleep(600)
    return "recovered"


@job
def hangs(pid_path: str) -> None:
    """Write the pid, then hang until killed."""
    with open(pid_path, "w") as handle:
        handle.write(str(os.getpid()))
    time.sleep(600)


# -- unique jobs, rate limits and concurrency limits (tests/test_limits.py) -----------


@job(unique=True)
def unique_add(a: int, b: int = 0) -> int:
    return a + b


@job(unique=True, unique_for=1)
def unique_briefly(name: str) -> str:
    return name


def account_key(account_id: int, **options: Any) -> str:
    return f"account-{account_id}"


@job(unique_key=account_key)
def sync_account(account_id: int, full: bool = False) -> int:
    return account_id


def _note(log_key: str, value: str) -> None:
    from django_jobs.queues import get_connection

    get_connection().rpush(log_key, value)


@job(concurrency=1)
def one_at_a_time(log_key: str, seconds: float) -> None:
    """Note when it ran, as "start end" in a Redis list."""
    start = time.time()
    time.sleep(seconds)
    _note(log_key, f"{start} {time.time()}")


@job(concurrency=1)
def holds_the_slot(die: bool) -> str:
    if die:
        os._exit(1)  # the work-horse dies while the job holds its slot
    return "ran"


@job(rate_limit="5/s")
def five_a_second() -> str:
    return "ran"


@job(rate_limit="2/m")
def twice_a_minute() -> str:
    return "ran"


# -- hardening (tests/test_hardening.py) ---------------------------------------------------------


@job
def raises_unstorable_text() -> None:
    """Raises an error whose message holds text no database stores as it is."""
    raise ValueError("bad\x00value and a lone \ud800 surrogate")


@job
def takes_options(**options: Any) -> dict[str, Any]:
    return options


def rq_success_callback(job: Any, connection: Any, result: Any) -> None:
    """An RQ success callback (not a @job): it runs only when ALLOWED_FUNCTIONS lists it."""
    job.meta["callback_saw"] = result
    job.save_meta()


# -- fault injection (tests/faults/) -----------------------------------------------------------------
# Each run appends "<job key> <pid> <event> <time>" to an execution log once its side effect is
# done, so that the suite can count how often each job really ran.


def _log_execution(log_path: str, key: str, event: str) -> None:
    line = f"{key} {os.getpid()} {event} {time.time():.3f}\n".encode()
    descriptor = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line)  # one write with O_APPEND: lines of concurrent runs never mix
    finally:
        os.close(descriptor)


@job(retry=3, retry_backoff=0.5)
def fault_fast(log_path: str, key: str) -> str:
    _log_execution(log_path, key, "done")
    return key


@job(retry=3, retry_backoff=0.5)
def fault_slow(log_path: str, key: str, seconds: float) -> str:
    _log_execution(log_path, key, "started")  # the suite kills workers in the middle of these
    time.sleep(seconds)
    _log_execution(log_path, key, "done")
    return key


@job
def fault_failing(log_path: str, key: str) -> None:
    """Always raises; no retries, so it must end failed."""
    _log_execution(log_path, key, "raised")
    raise RuntimeError(f"{key} fails on purpose")


@job(retry=3, retry_backoff=0.5)
def fault_retrying(log_path: str, marker_path: str, key: str, failures: int) -> str:
    """Raise on the first ``failures`` calls (counted in a marker file), then return."""
    call = _count_call(marker_path)
    if call <= failures:
        _log_execution(log_path, key, "raised")
        raise RuntimeError(f"{key}: call {call} fails on purpose")
    _log_execution(log_path, key, "done")
    return key


#: What a poison job's error holds that no database stores as it is: PostgreSQL refuses NUL in
#: text and JSON, and a lone surrogate is not valid Unicode, so it cannot be written as UTF-8.
POISON = "bad\x00value \ud800"


@job
def fault_poison(log_path: str, key: str, seconds: float = 0.0) -> None:
    """Raise, after ``seconds``, an error whose message holds :data:`POISON`; no retries, so it must
    end failed, its error stored escaped."""
    if seconds:
        # The suite cuts the database while it sleeps ("began", not "started": it kills workers
        # only in the middle of slow jobs).
        _log_execution(log_path, key, "began")
        time.sleep(seconds)
    _log_execution(log_path, key, "raised")
    raise ValueError(f"{key} {POISON}")


# -- for the batch worker -----------------------------------------------------------------


@job
def note(log_key: str, value: str) -> str:
    """Append ``value`` to a Redis list: the order jobs ran in, and how often each ran."""
    _note(log_key, value)
    return value


@job
def cancels(job_id: str) -> str:
    """Cancel another job (one the batch worker has taken ahead) from inside a job."""
    from django_jobs import JobHandle

    JobHandle(job_id).cancel()
    return job_id


@job
def queue_length_after(seconds: float, queue: str) -> int:
    """Sleep, then return how many jobs wait in ``queue`` (given back by a batch worker or not)."""
    from django_jobs import get_queue

    time.sleep(seconds)
    return len(get_queue(queue))


@job
def kills_own_worker() -> None:
    """SIGKILL the process that runs this job: a batch worker dying with jobs taken ahead."""
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


_bumps = 0


@job
def bump() -> list[int]:
    """Count this call in module state; return [count, pid]: a fresh process always says 1."""
    global _bumps
    _bumps += 1
    return [_bumps, os.getpid()]


def child_processes(parent: int) -> set[int]:
    """Live (not zombie) child processes of ``parent``, read from /proc."""
    from pathlib import Path

    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")".
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == parent and state != "Z":
            found.add(int(entry.name))
    return found


@job
def worker_children(seconds: float) -> int:
    """After ``seconds``, how many processes the worker running this job has (this one included)."""
    time.sleep(seconds)
    return len(child_processes(os.getppid()))


@job(timeout=45, description="seen from inside")
def seen_from_inside(value: int) -> dict[str, Any]:
    """What the running job's RQ job says about itself (the work-horse's copy of it)."""
    from rq import get_current_job

    current = get_current_job()
    assert current is not None
    return {
        "id": current.id,
        "args": list(current.args),
        "timeout": current.timeout,
        "description": current.description,
        "origin": current.origin,
        "status": current.get_status(refresh=False).value,
        "worker_name": current.worker_name,
        "environ": os.environ.get("RQ_JOB_ID"),
    }


def whole_view(value: int) -> dict[str, Any]:
    """What the running job's RQ job says of the options it was enqueued with (for jobs enqueued
    with plain RQ)."""
    from rq import get_current_job

    current = get_current_job()
    assert current is not None
    return {
        "args": list(current.args),
        "meta": current.meta,
        "description": current.description,
        "timeout": current.timeout,
        "result_ttl": current.result_ttl,
        "ttl": current.ttl,
        "failure_ttl": current.failure_ttl,
        "retries_left": current.retries_left,
        "retry_intervals": current.retry_intervals,
        "dependency_ids": current._dependency_ids,
    }


@job
def enqueue_echo(value: Any) -> str:
    """Enqueue echo(value) from inside a job; return its id."""
    return echo.delay(value).id


# -- fuzz (tests/test_fuzz.py) ----------------------------------------------------------------------


@job
def echo_call(*args: Any, **kwargs: Any) -> list[Any]:
    """Return what it was called with, as [args, kwargs]: any keyword name is welcome."""
    return [list(args), kwargs]
