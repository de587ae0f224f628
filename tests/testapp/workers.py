"""Worker classes used by the tests through ``rqworker --worker-class``."""

from __future__ import annotations

from rq.executions import Execution
from rq.job import Job

from django_jobs.worker import Worker


class ForkAtDequeue(Worker):
    """Forks each job's process when the job is dequeued, as RQ does (no spare)."""

    prefork = False


class StopsBeforeFork(Worker):
    """Gets a stop request for each job after its start in Redis, before its process has it.

    That is where ``handle.stop()`` lands when it comes a moment after the
    row says ``started``; the request arrives as RQ's pubsub thread passes it on.
    """

    def prepare_execution(self, job: Job) -> Execution:
        execution = super().prepare_execution(job)
        self.request_stop_execution(execution.id)
        return execution


class StopsBeforeForkAtDequeue(StopsBeforeFork):
    prefork = False
