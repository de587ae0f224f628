"""Worker classes used by the tests through ``rqworker --worker-class``."""

from __future__ import annotations

from django_jobs.worker import Worker


class ForkAtDequeue(Worker):
    """Forks each job's process when the job is dequeued, as RQ does (no spare)."""

    prefork = False
