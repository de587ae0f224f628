"""The worker's upkeep between jobs, with fewer round trips than RQ's: pauses, heartbeats,
suspension checks, the command channel, and the spool.

:class:`UpkeepMixin` goes before RQ's worker class in every worker of django_jobs.
RQ makes several round trips per job for its upkeep (the suspension flag before
every job, up to three heartbeats, "idle" written twice); here each is made at
most once a second, or rides on a round trip RQ makes anyway. It also skips
paused queues (``django_jobs.pauses``) and writes back steps kept in the spool
while the database was away.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from rq import Queue
from rq import Worker as RQWorker

from .. import outcomes, pauses, spool
from ..conf import conf

#: Seconds between two heartbeats of a worker (RQ: 30). Its key in Redis
#: lives three beats, so a dead worker's key is gone within 30 s, and its
#: started jobs are recovered ``ORPHAN_GRACE`` later (see recovery.py).
JOB_MONITORING_INTERVAL = 10

#: Least seconds between two heartbeats (or looks at RQ's suspension flag) of a busy worker.
HEARTBEAT_MIN_GAP = 1.0

#: Seconds the thread that listens to a worker's command channel waits at a time (RQ: 60).
PUBSUB_WAIT = 0.2

#: Least seconds between two looks at the spool of unwritten outcomes.
SPOOL_CHECK_INTERVAL = 5.0

# Typed against RQ's Worker, which every class using this mixin also derives from.
if TYPE_CHECKING:
    _Base = RQWorker
else:
    _Base = object


class UpkeepMixin(_Base):
    """RQ's upkeep between jobs, in fewer round trips; paused queues skipped; the spool drained."""

    _ordered_queues: list[Queue]
    _paused: frozenset[str] = frozenset()
    _pauses_read_at = float("-inf")
    _full_order: list[Queue] | None = None
    _beat_at = float("-inf")
    _state_written: str | None = None
    _suspension_checked_at = float("-inf")
    _spool_backoff: spool.Backoff | None = None

    def _skip_paused_queues(self) -> bool:
        """Leave paused queues out of the dequeue order; return whether any queue is left."""
        now = time.monotonic()
        if now - self._pauses_read_at >= conf.pause_check_interval:
            self._paused = frozenset(pauses.paused(self.connection))
            self._pauses_read_at = now
        if not self._paused:
            if self._full_order is not None:
                self._ordered_queues, self._full_order = self._full_order, None
            return True
        if self._full_order is None:
            self._full_order = list(self._ordered_queues)
        self._ordered_queues = [queue for queue in self._full_order if queue.name not in self._paused]
        return bool(self._ordered_queues)

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        """RQ's dequeue, skipping paused queues and noticing a pause or resume within seconds."""
        dequeue = super().dequeue_job_and_maintain_ttl
        self.drain_spool()
        if timeout is None:  # burst: one pass over the queues that are not paused
            return dequeue(None, max_idle_time) if self._skip_paused_queues() else None
        idle_since = time.monotonic()
        while True:
            # Come back at least every heartbeat interval, to beat (see heartbeat()).
            window = max(1, math.ceil(min(conf.pause_check_interval, self.job_monitoring_interval)))
            if max_idle_time is not None:
                left = max_idle_time - (time.monotonic() - idle_since)
                if left <= 0:
                    return None
                window = min(window, math.ceil(left))
            self.drain_spool()
            if not self._skip_paused_queues():
                self.heartbeat()
                time.sleep(window)
                continue
            # Come back after `window` idle seconds to look at the pauses again.
            result = dequeue(min(timeout, window), max_idle_time=window)
            if result is not None:
                return result

    def subscribe(self) -> None:
        """RQ's subscription to the worker's command channel, its listening thread waiting
        :data:`PUBSUB_WAIT` seconds at a time instead of RQ's 60.

        On leaving, RQ unsubscribes, then stops that thread and waits up to a second for it; a
        thread that read the unsubscribe's confirmation first sits out one whole wait, and the
        ``--burst`` exit or warm shutdown with it. A short wait keeps that join short. Messages
        (a stop request) still reach the thread as soon as they arrive.
        """
        self.log.info(
            "Worker %s: subscribing to channel %s",
            self.name,
            self.pubsub_channel_name,
        )
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        # RQ's BaseWorker declares pubsub_thread as None (set in __init__); it holds this thread.
        self.pubsub_thread = self.pubsub.run_in_thread(  # type: ignore[assignment]
            sleep_time=PUBSUB_WAIT,
            daemon=True,
            exception_handler=self._pubsub_exception_handler,
        )

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        # RQ lets a worker's key live 60 s past each beat (480 s when idle); a dead worker is
        # noticed only when its key expires, so keep it to three beats.
        cap = 3 * self.job_monitoring_interval
        timeout = min(timeout or cap, cap)
        if pipeline is not None:  # rides on a round trip RQ makes anyway
            super().heartbeat(timeout, pipeline)
            self._beat_at = time.monotonic()
            return
        # RQ beats up to three times per job, three commands each. The key lives 30 s: one
        # beat a second is plenty, and one round trip carries it.
        now = time.monotonic()
        if now - self._beat_at < HEARTBEAT_MIN_GAP:
            return
        with self.connection.pipeline(transaction=False) as beat:
            super().heartbeat(timeout, beat)
            beat.execute()
        self._beat_at = now

    def set_state(self, state: str, pipeline: Any = None) -> None:
        # RQ writes "idle" both after a job and before the next dequeue: once is enough.
        if pipeline is None and state == self._state_written:
            self._state = state
            return
        super().set_state(state, pipeline)
        self._state_written = state

    def check_for_suspension(self, burst: bool) -> None:
        # RQ reads the suspension flag before every job; once a second is soon enough.
        now = time.monotonic()
        if now - self._suspension_checked_at >= HEARTBEAT_MIN_GAP:
            self._suspension_checked_at = now
            super().check_for_suspension(burst)

    def drain_spool(self) -> None:
        """Write back outcomes kept in Redis during a database outage (with backoff while it lasts)."""
        backoff = self._spool_backoff
        if backoff is None:
            backoff = self._spool_backoff = spool.Backoff()
        if not backoff.due():
            return
        connection = self.connection
        try:
            if spool.pending(connection):
                outcomes.replay_spool(connection)
            if spool.pending(connection):
                backoff.failed()
            else:
                backoff.succeeded(wait=SPOOL_CHECK_INTERVAL)
        except (RedisError, OSError):
            backoff.failed()
