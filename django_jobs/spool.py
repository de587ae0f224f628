"""Outcomes a worker could not write to the database, kept in Redis until it can.

When the database is unreachable as a job starts or ends, the worker tries
the write a few times, then appends the outcome to a Redis list and goes on
with its next job (see :func:`django_jobs.outcomes.record`). Workers (between
jobs) and the scheduler loop write the list back to the database, oldest first,
as soon as it answers again (:func:`django_jobs.outcomes.replay_spool`); one
process at a time, under a short lock, so the order of a job's writes is kept.
This module keeps the list; what an item means is :mod:`django_jobs.outcomes`'.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from .db.connections import refused_item, reset_database_connections

logger = logging.getLogger("django_jobs.spool")

SPOOL_KEY = "django_jobs:unwritten"
LOCK_KEY = "django_jobs:unwritten:lock"

# Pop the head only if it is still the item that was applied and we still hold the lock.
_POP_IF = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
if redis.call('LINDEX', KEYS[1], 0) == ARGV[2] then
  redis.call('LPOP', KEYS[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def encode(step: str, **fields: Any) -> str:
    """One outcome as a line of JSON (datetimes as ISO strings)."""
    fields["step"] = step
    for key, value in fields.items():
        if isinstance(value, datetime):
            fields[key] = value.isoformat()
    return json.dumps(fields, default=str)


def save(connection: Redis, step: str, **fields: Any) -> bool:
    """Append one outcome to the spool; return False if Redis refused it too."""
    try:
        connection.rpush(SPOOL_KEY, encode(step, **fields))
    except (RedisError, OSError):
        logger.exception("Could not keep the outcome %s of job %s in Redis either; it is lost.", step, fields)
        return False
    return True


def pending(connection: Redis) -> int:
    return int(connection.llen(SPOOL_KEY))


def job_ids(connection: Redis) -> set[str]:
    """The jobs with outcomes waiting here: they ran, and only their rows are behind."""
    found: set[str] = set()
    for raw in connection.lrange(SPOOL_KEY, 0, -1):
        try:
            found.add(str(json.loads(raw)["job_id"]))
        except (ValueError, KeyError, TypeError):
            continue  # drain() reports and drops unreadable items
    return found


def drain(
    connection: Redis,
    apply: Callable[[dict[str, Any]], Any],
    limit: int = 10_000,
    lock_ttl: float = 30.0,
) -> int:
    """Hand the kept outcomes to ``apply``, oldest first, each dropped once applied; return how
    many were.

    Stops at the first error that says the database cannot be used now (the rest waits for the
    next call); an item that ``apply`` cannot store for what it holds is logged and dropped, and
    the drain goes on (``apply`` escapes what it can first: ``outcomes.write_storable``).
    """
    token = uuid.uuid4().hex
    ttl_ms = int(lock_ttl * 1000)
    if not connection.set(LOCK_KEY, token, nx=True, px=ttl_ms):
        return 0  # another process is draining
    pop_if: Callable[..., Any] = connection.register_script(_POP_IF)
    written = 0
    try:
        while written < limit:
            raw = connection.lindex(SPOOL_KEY, 0)
            if raw is None:
                break
            try:
                item = json.loads(raw)
            except ValueError:
                logger.error("Unreadable item in %s; dropped: %r", SPOOL_KEY, raw)
                item = None
            if item is not None:
                try:
                    apply(item)
                except Exception as exc:
                    reset_database_connections()
                    if not refused_item(exc):
                        logger.warning(
                            "Database still unavailable (%s: %s); %d outcome(s) wait.",
                            type(exc).__name__,
                            exc,
                            pending(connection),
                        )
                        break
                    # This item, not the database: it must not hold back the ones behind it.
                    logger.error(
                        "Outcome in %s that cannot be stored (%s: %s); dropped: %r",
                        SPOOL_KEY,
                        type(exc).__name__,
                        exc,
                        raw,
                    )
            if pop_if(keys=[SPOOL_KEY, LOCK_KEY], args=[token, raw, ttl_ms]) == -1:
                break  # the lock expired under us: stop, someone else may drain now
            written += 1
    finally:
        connection.register_script(_RELEASE)(keys=[LOCK_KEY], args=[token])
    if written:
        logger.info("Wrote %d outcome(s) kept in Redis while the database was unavailable.", written)
    return written


class Backoff:
    """When to try again after a failure: 1 s, 2 s, 4 s … up to ``cap``; at once after a success."""

    def __init__(self, first: float = 1.0, cap: float = 30.0) -> None:
        self.first, self.cap = first, cap
        self.delay = 0.0
        self.next_at = 0.0

    def due(self) -> bool:
        return time.monotonic() >= self.next_at

    def failed(self) -> None:
        self.delay = min(self.cap, self.delay * 2 if self.delay else self.first)
        self.next_at = time.monotonic() + self.delay

    def succeeded(self, wait: float = 0.0) -> None:
        self.delay = 0.0
        self.next_at = time.monotonic() + wait
