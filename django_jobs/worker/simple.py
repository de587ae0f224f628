"""The worker that runs jobs in its own process: :class:`SimpleWorker`."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from redis.exceptions import RedisError
from rq import Queue
from rq import SimpleWorker as RQSimpleWorker
from rq import Worker as RQWorker
from rq.executions import Execution
from rq.job import Job

from .recording import RecordingWorkerMixin
from .upkeep import JOB_MONITORING_INTERVAL

logger = logging.getLogger("django_jobs.worker")


class SimpleWorker(RecordingWorkerMixin, RQSimpleWorker):
    """RQ's in-process worker: no fork per job (faster, no isolation between jobs)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("job_monitoring_interval", JOB_MONITORING_INTERVAL)
        super().__init__(*args, **kwargs)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        # RQ keeps a SimpleWorker alive for the job's whole timeout, as it cannot beat while
        # the job runs; this one beats from a thread (below), so a dead one is noticed sooner.
        return RQWorker.get_heartbeat_ttl(self, job, working_time)

    _running: tuple[Job, Execution, float] | None = None
    _beater: threading.Thread | None = None

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        if self._beater is None or not self._beater.is_alive():
            self._beater = threading.Thread(target=self._beat_while_running, name="heartbeat", daemon=True)
            self._beater.start()
        self._running = (job, execution, time.monotonic())
        try:
            return super().perform_job(job, queue, execution)
        finally:
            self._running = None

    def _beat_while_running(self) -> None:
        """Beat for a job that runs longer than a heartbeat interval (one thread per worker)."""
        interval = self.job_monitoring_interval
        while True:
            time.sleep(interval / 2)
            running = self._running
            if running is None or time.monotonic() - running[2] < interval / 2:
                continue
            try:
                self.maintain_heartbeats(running[0], running[1])
            except (RedisError, OSError):
                logger.warning("Heartbeat of worker %s failed; trying again", self.name)

    def run_in_process(self, job: Job, queue: Queue) -> None:
        """Run one job with the recording hooks but without touching database connections (the
        inline run of an ``"ASYNC": False`` queue, inside the caller's request or test)."""
        RQSimpleWorker.execute_job(self, job, queue)
