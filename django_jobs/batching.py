"""The batch worker's former home: ``django_jobs.batching.BatchWorker`` in settings and on
``rqworker --worker-class`` keeps working. The class lives in :mod:`django_jobs.worker.batch`."""

from __future__ import annotations

from .worker.batch import BATCH_SIZE, SLOW_JOB, BatchWorker

__all__ = ["BATCH_SIZE", "SLOW_JOB", "BatchWorker"]
