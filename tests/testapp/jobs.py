"""Jobs used by the tests; imported by the worker through autodiscovery."""

from __future__ import annotations

import os
import time
from typing import Any

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
