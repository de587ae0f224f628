"""The worker classes ``rqworker`` runs, each an RQ worker that keeps every job's row up to date.

- :class:`Worker` (``--worker-class fork``, the default): RQ's forking worker; each
  job runs in a process of its own, forked ahead of time (:mod:`.forking`).
- :class:`SimpleWorker` (``simple``): jobs run in the worker's process (:mod:`.simple`).
- :class:`BatchWorker` (``batch``): a ``SimpleWorker`` that takes several jobs at
  a time and shares round trips between them (:mod:`.batch`).

All three write each step of a job to its row through :mod:`.recording`, and
keep their upkeep between jobs lean through :mod:`.upkeep`.
"""

from __future__ import annotations

from ..jobclass import JobsJob
from .batch import BATCH_SIZE, BatchWorker
from .forking import Worker
from .recording import RecordingWorkerMixin, describe_failure, row_result
from .simple import SimpleWorker
from .upkeep import HEARTBEAT_MIN_GAP, JOB_MONITORING_INTERVAL, PUBSUB_WAIT, SPOOL_CHECK_INTERVAL

__all__ = [
    "BATCH_SIZE",
    "HEARTBEAT_MIN_GAP",
    "JOB_MONITORING_INTERVAL",
    "PUBSUB_WAIT",
    "SPOOL_CHECK_INTERVAL",
    "WORKER_CLASS_ALIASES",
    "BatchWorker",
    "JobsJob",
    "RecordingWorkerMixin",
    "SimpleWorker",
    "Worker",
    "describe_failure",
    "row_result",
]

#: The short names ``rqworker --worker-class`` and ``DJANGO_JOBS["WORKER_CLASS"]`` take.
WORKER_CLASS_ALIASES: dict[str, str] = {
    "fork": "django_jobs.worker.Worker",
    "worker": "django_jobs.worker.Worker",
    "simple": "django_jobs.worker.SimpleWorker",
    "batch": "django_jobs.worker.BatchWorker",
}
