"""``rqworker --pool N``: N worker processes, each a ``manage.py rqworker``, under one supervisor.

A child that ends is started again at once (not with ``--burst``, nor once the pool stops), so the
pool keeps its size. One that crashed (a non-zero status, a signal) is started under a new name,
``<name>-<i>.<n>``, for two reasons:

- the dead worker's key in Redis (``rq:worker:<name>``) lives until its heartbeat expires, and RQ
  refuses a second worker of that name meanwhile;
- recovery finds the job the dead worker was running by its name, once that key is gone
  (``recovery.OrphanWatch``): a live worker of the same name would hide it.

The dead worker's key is left to expire: its work-horse may still be running the job, and writes
to that key when the job ends; a key deleted now would come back without an expiry, and the dead
worker would look alive for good. Its entries in RQ's lists of workers go at once.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq.worker import BaseWorker
from rq.worker_registration import REDIS_WORKER_KEYS, WORKERS_BY_QUEUE_KEY

logger = logging.getLogger("django_jobs.worker")

#: A child that crashes sooner than this after its start has "crashed at once".
QUICK_CRASH = 10.0

#: The longest wait before the next start of a child that keeps crashing at once.
MAX_BACKOFF = 30.0

#: Seconds between two looks at the children.
POLL = 0.2


@dataclass
class Slot:
    """One of the pool's N places, and the child process that fills it."""

    index: int
    generation: int = 0  # children of this slot that crashed so far: the next one's name
    name: str = ""
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    quick_crashes: int = 0  # crashes at once in a row
    due: float | None = 0.0  # when to start the next child (None: never again)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class Pool:
    """Run ``size`` children of ``command`` (which takes ``--name``), supervised; see the module."""

    def __init__(
        self,
        command: Sequence[str],
        size: int,
        prefix: str,
        *,
        connection: Redis,
        queue_names: Sequence[str],
        env: Mapping[str, str],
        burst: bool = False,
    ) -> None:
        self.command = list(command)
        self.prefix = prefix
        self.connection = connection
        self.queue_names = list(queue_names)
        self.env = dict(env)
        self.burst = burst
        self.slots = [Slot(index) for index in range(1, size + 1)]
        self.stopping = False
        self.signals = 0  # SIGTERM/SIGINT received
        self.forwarded = 0  # of which passed on to the children
        self.failed = 0

    def run(self) -> int:
        """Start the children and watch them until all have ended (``--burst``) or the pool is
        stopped (SIGTERM, SIGINT: passed on to every child as SIGTERM, a warm shutdown).

        Returns how many children of a ``--burst`` pool ended in error; a stopped pool
        returns 0 once its children have ended, whatever happened to them before.
        """
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while True:
                self._forward_signals()
                now = time.monotonic()
                for slot in self.slots:
                    if slot.process is not None:
                        code = slot.process.poll()
                        if code is None:
                            continue
                        self._ended(slot, code, now)
                    if not self.stopping and slot.due is not None and slot.due <= now:
                        self._start(slot)
                live = [slot for slot in self.slots if slot.process is not None]
                if not live and (self.stopping or all(slot.due is None for slot in self.slots)):
                    return 0 if self.stopping else self.failed
                time.sleep(POLL)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Only noted here: the loop passes it on, also to a child started while it arrived.
        self.stopping = True
        self.signals += 1

    def _forward_signals(self) -> None:
        if self.forwarded == self.signals:
            return
        self.forwarded = self.signals
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is None:
                slot.process.send_signal(signal.SIGTERM)

    def _start(self, slot: Slot) -> None:
        slot.name = self.name_for(slot)
        try:
            slot.process = subprocess.Popen([*self.command, "--name", slot.name], env=self.env)
        except OSError as exc:
            slot.quick_crashes += 1
            slot.due = time.monotonic() + self._backoff(slot)
            logger.warning("Could not start worker %s (%s); trying again.", slot.name, exc)
            return
        slot.started_at = time.monotonic()
        slot.due = None

    def _ended(self, slot: Slot, code: int, now: float) -> None:
        slot.process = None
        if code != 0:
            # It did not unregister itself (killed; or stopped by the pool before RQ's own signal
            # handlers were in place, which may be after it registered).
            self._unregister(slot.name)
        if self.stopping:
            if code not in (0, -signal.SIGTERM, -signal.SIGINT):
                logger.warning("Worker %s %s as the pool stopped.", slot.name, describe_exit(code))
            return
        if self.burst:
            self.failed += code != 0
            return
        if code == 0:
            # It ended by itself (--max-jobs, --max-idle-time): replaced, the pool keeps its size.
            # It unregistered itself, so its successor may take its name.
            logger.info("Worker %s ended; starting another in its place.", slot.name)
            slot.quick_crashes = 0
            slot.due = now
            return
        slot.quick_crashes = slot.quick_crashes + 1 if now - slot.started_at < QUICK_CRASH else 0
        slot.generation += 1
        delay = self._backoff(slot)
        slot.due = now + delay
        logger.warning(
            "Worker %s %s; starting another in its place%s.",
            slot.name,
            describe_exit(code),
            f" in {delay:g} s (it keeps crashing)" if delay else "",
        )

    @staticmethod
    def _backoff(slot: Slot) -> float:
        """Nothing after one crash (or a crash after a long run); then 1, 2, 4 … 30 s."""
        return 0.0 if slot.quick_crashes <= 1 else min(MAX_BACKOFF, 2.0 ** (slot.quick_crashes - 2))

    def name_for(self, slot: Slot) -> str:
        """The slot's name for its next child: ``<prefix>-<i>``, after a crash ``<prefix>-<i>.<n>``,
        skipping any name a live worker holds in Redis (from an earlier run of this pool)."""
        base = f"{self.prefix}-{slot.index}"
        for _ in range(1000):
            name = base if slot.generation == 0 else f"{base}.{slot.generation}"
            key = BaseWorker.redis_worker_namespace_prefix + name
            try:
                with self.connection.pipeline(transaction=False) as pipeline:
                    pipeline.exists(key)
                    pipeline.hexists(key, "death")
                    exists, dead = pipeline.execute()
            except (RedisError, OSError):
                return name  # the child will find out about Redis itself
            if not exists or dead:
                return name
            slot.generation += 1
        return name

    def _unregister(self, name: str) -> None:
        """Take a dead child out of RQ's lists of workers (as its own clean exit would have)."""
        key = BaseWorker.redis_worker_namespace_prefix + name
        try:
            with self.connection.pipeline(transaction=False) as pipeline:
                pipeline.srem(REDIS_WORKER_KEYS, key)
                for queue_name in self.queue_names:
                    pipeline.srem(WORKERS_BY_QUEUE_KEY % queue_name, key)
                pipeline.execute()
        except (RedisError, OSError) as exc:
            logger.warning("Could not take dead worker %s out of RQ's lists of workers (%s).", name, exc)
