"""The job functions that bench/run.py runs with plain RQ, django-rq and django_jobs alike.

Plain functions with no Django import, so that a plain RQ worker imports
this module as it is; bench/run.py wraps the same functions with
``django_rq.job`` and with django_jobs' ``JobFunction``, so every system runs
the same function body.
"""

from __future__ import annotations

import time

#: Where :func:`stamp` leaves the time at which it started, for the latency measurement.
STAMPS_KEY = "bench:stamps"


def noop() -> None:
    """Do nothing: what is measured is the cost of the job machinery alone."""
    return None


def small(a: int, b: int) -> str:
    """A little work: add two numbers and format a short string."""
    return f"{a} + {b} = {a + b}"


def stamp() -> None:
    """Record in Redis when this job started to run (``time.time()``), with its id."""
    from rq import get_current_job

    started = time.time()
    job = get_current_job()
    assert job is not None
    job.connection.rpush(STAMPS_KEY, f"{job.id} {started!r}")
