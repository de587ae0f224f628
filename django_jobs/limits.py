"""Rate limits and concurrency limits, shared by every worker through Redis.

``@job(rate_limit="10/m")`` lets at most 10 runs of the function start in
any 60 seconds; ``@job(concurrency=2)`` lets at most 2 run at once. Both are
checked by the worker, in its main process, right before a dequeued job
runs, with one Lua script, so that every worker process on every machine
sees the same counts:

- the rate limit is a sliding-window log: a sorted set of the start times
  of the last window; a job starts only if fewer than N starts are in it;
- the concurrency limit is a sorted set of the slots of running jobs, each
  scored by when it expires. The worker renews its slot with every
  heartbeat and frees it when the job ends, however it ends; a slot whose
  worker died expires by itself after :data:`SLOT_LEASE` seconds.

A job over a limit does not run and is not dropped: its row becomes
``scheduled`` for when a slot is expected, it leaves Redis, and the
scheduler loop (``manage.py rqscheduler``) queues it again when due. Its
``attempts`` is not counted. The expected time spreads the waiting jobs
over the coming slots, so that they do not all come back at once.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, InterfaceError
from django.utils import timezone

from . import records
from .queues import get_connection

if TYPE_CHECKING:
    from redis import Redis
    from rq import Queue
    from rq.job import Job

logger = logging.getLogger("django_jobs.limits")

#: Where the limits of a job travel in its RQ job's ``meta`` (copied from the row's options).
META_KEY = "django_jobs.limits"

#: Seconds a concurrency slot lives without a heartbeat of its worker (which renews it every 10 s).
SLOT_LEASE = 90.0

#: Bounds of one wait for a concurrency slot, and the guess before any run of the function ended.
MIN_SLOT_WAIT = 0.1
MAX_SLOT_WAIT = 60.0
FIRST_SLOT_WAIT = 1.0

#: A waiting job this late is forgotten when the wait of the next ones is worked out.
STALE_WAITER = 60.0

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*([smhd])\s*$")


def parse_rate_limit(value: str) -> tuple[int, int]:
    """``"10/m"`` → ``(10, 60)``: how many starts in how many seconds. Raises ``ValueError``."""
    match = _RATE.match(value) if isinstance(value, str) else None
    if match is None or int(match.group(1)) < 1:
        raise ValueError(
            f"{value!r} is not a rate limit: write 'N/s', 'N/m', 'N/h' or 'N/d' with N >= 1, "
            "for example '10/m' for at most 10 starts a minute."
        )
    return int(match.group(1)), _UNITS[match.group(2)]


def check_options(label: str, rate_limit: Any, concurrency: Any) -> dict[str, Any]:
    """Validate ``@job(rate_limit=…, concurrency=…)``; return the options kept on each row."""
    options: dict[str, Any] = {}
    if rate_limit is not None:
        try:
            parse_rate_limit(rate_limit)
        except ValueError as exc:
            raise ValueError(f"@job(rate_limit=…) on {label}: {exc}") from None
        options["rate_limit"] = rate_limit.replace(" ", "")
    if concurrency is not None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(
                f"@job(concurrency=…) on {label}: give the most runs at once as an int >= 1 "
                f"(for example concurrency=1 for one at a time), not {concurrency!r}."
            )
        options["concurrency"] = concurrency
    return options


def rq_meta(func_name: str, options: dict[str, Any]) -> dict[str, Any] | None:
    """The RQ job's ``meta`` that tells a worker the job's limits, or None without limits."""
    limits = {key: options[key] for key in ("rate_limit", "concurrency") if options.get(key)}
    if not limits:
        return None
    return {META_KEY: {"key": func_name, **limits}}


def _keys(name: str) -> list[str]:
    # The braces keep one function's keys on one Redis Cluster slot.
    base = f"django_jobs:limit:{{{name}}}"
    return [
        f"{base}:running",
        f"{base}:running:waiting",
        f"{base}:running:stats",
        f"{base}:rate",
        f"{base}:rate:waiting",
    ]


# KEYS: running slots, their waiters, run-time stats, rate log, its waiters.
# ARGV: concurrency (0: none), starts (0: none), window ms, job id, token, lease ms,
#       stale ms, least / most / first wait for a slot (ms).
# Returns {0, ""} when the job may run (its slot and start are recorded), else
# {ms to wait, which limit}. Times come from Redis, the one clock all workers share.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local concurrency, starts, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local job, token, lease, stale = ARGV[4], ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local wait, reasons = 0, {}
if concurrency > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  redis.call('ZREM', KEYS[2], job)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - stale)
  if redis.call('ZCARD', KEYS[1]) >= concurrency then
    local each = tonumber(redis.call('HGET', KEYS[3], 'avg_ms') or ARGV[10])
    each = math.min(math.max(each, tonumber(ARGV[8])), tonumber(ARGV[9]))
    local ahead = redis.call('ZCARD', KEYS[2])
    wait = math.min(each * (math.floor(ahead / concurrency) + 1), tonumber(ARGV[9]))
    table.insert(reasons, 'concurrency')
  end
end
if starts > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - window)
  redis.call('ZREM', KEYS[5], job)
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - stale)
  local logged = redis.call('ZCARD', KEYS[4])
  if logged >= starts then
    -- The waiters ahead take the next slots, as the logged starts leave the window in turn.
    local ahead = redis.call('ZCARD', KEYS[5])
    local index = logged - starts + (ahead % starts)
    local entry = redis.call('ZRANGE', KEYS[4], index, index, 'WITHSCORES')
    local free = tonumber(entry[2]) + window * (math.floor(ahead / starts) + 1) - now
    wait = math.max(wait, free)
    table.insert(reasons, 'rate')
  end
end
if wait > 0 then
  wait = math.ceil(wait)
  local waiting = {}
  if reasons[1] == 'concurrency' then table.insert(waiting, KEYS[2]) end
  if reasons[#reasons] == 'rate' then table.insert(waiting, KEYS[5]) end
  for _, key in ipairs(waiting) do
    redis.call('ZADD', key, now + wait, job)
    local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    redis.call('PEXPIRE', key, math.ceil(tonumber(last[2]) - now + stale))
  end
  return {wait, table.concat(reasons, ',')}
end
if concurrency > 0 then
  redis.call('ZADD', KEYS[1], now + lease, token)
  redis.call('PEXPIRE', KEYS[1], lease)
end
if starts > 0 then
  redis.call('ZADD', KEYS[4], now, job .. ':' .. token)
  redis.call('PEXPIRE', KEYS[4], window)
end
return {0, ''}
"""

# KEYS: running slots. ARGV: token, lease ms.
_RENEW = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: running slots, run-time stats. ARGV: token, run time ms.
# The stats keep a moving average of run times, to guess the next waits.
_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
local ran = tonumber(ARGV[2])
local avg = redis.call('HGET', KEYS[2], 'avg_ms')
if avg then ran = 0.8 * tonumber(avg) + 0.2 * ran end
redis.call('HSET', KEYS[2], 'avg_ms', tostring(math.floor(ran)))
redis.call('PEXPIRE', KEYS[2], 86400000)
return 0
"""


_scripts: dict[str, Any] = {}


def _run(connection: Redis, source: str, keys: list[str], args: list[Any]) -> Any:
    """Run a Lua script by its hash (EVALSHA), loading it into Redis the first time."""
    script = _scripts.get(source)
    if script is None:
        script = _scripts[source] = connection.register_script(source)
    return script(keys=keys, args=args, client=connection)


@dataclass
class Admission:
    """A worker's answer for one dequeued job: run it now, or wait ``wait`` seconds."""

    connection: Redis | None = None
    key: str = ""
    token: str = ""
    wait: float | None = None
    reason: str = ""
    started: float = 0.0

    @property
    def holds_slot(self) -> bool:
        return self.connection is not None and bool(self.token) and self.wait is None

    def renew(self) -> None:
        """Keep the concurrency slot while the job runs (called with each worker heartbeat)."""
        if self.holds_slot:
            assert self.connection is not None
            _run(self.connection, _RENEW, _keys(self.key)[:1], [self.token, int(SLOT_LEASE * 1000)])

    def release(self) -> None:
        """Free the concurrency slot (the job ended, or its work-horse died)."""
        if not self.holds_slot:
            return
        assert self.connection is not None
        keys = _keys(self.key)
        ran_ms = int((time.monotonic() - self.started) * 1000)
        try:
            _run(self.connection, _RELEASE, [keys[0], keys[2]], [self.token, ran_ms])
        except Exception:
            logger.warning(
                "Could not free the concurrency slot of %s in Redis; it frees itself within %d s.",
                self.key,
                int(SLOT_LEASE),
                exc_info=True,
            )
        self.token = ""


#: What a job without limits gets: run it, nothing to free.
UNLIMITED = Admission()


def limits_of(job: Job) -> dict[str, Any] | None:
    """The limits an RQ job carries in its meta, or None."""
    meta = getattr(job, "meta", None) or {}
    limits = meta.get(META_KEY)
    return limits if isinstance(limits, dict) and limits.get("key") else None


def admit(job: Job) -> Admission:
    """Take a start and a slot for ``job`` if its limits allow it now; else say how long to wait.

    The counts live in the Redis of the default queue, whatever queue the
    job is on, so that every worker of the project shares them.
    """
    limits = limits_of(job)
    if limits is None:
        return UNLIMITED
    connection = get_connection()
    try:
        concurrency = int(limits.get("concurrency") or 0)
        starts, window = parse_rate_limit(limits["rate_limit"]) if limits.get("rate_limit") else (0, 0)
    except (TypeError, ValueError) as exc:  # a row edited by hand: run it rather than stop the worker
        logger.error(
            "Job %s (%s) has unusable limits %r (%s); it runs unlimited.", job.id, job.func_name, limits, exc
        )
        return UNLIMITED
    token = uuid.uuid4().hex
    wait_ms, reason = _run(
        connection,
        _ADMIT,
        _keys(limits["key"]),
        [
            concurrency,
            starts,
            window * 1000,
            job.id,
            token,
            int(SLOT_LEASE * 1000),
            int(STALE_WAITER * 1000),
            int(MIN_SLOT_WAIT * 1000),
            int(MAX_SLOT_WAIT * 1000),
            int(FIRST_SLOT_WAIT * 1000),
        ],
    )
    admission = Admission(connection, limits["key"], token if concurrency else "", started=time.monotonic())
    if int(wait_ms) > 0:
        admission.wait = int(wait_ms) / 1000
        admission.reason = reason.decode() if isinstance(reason, bytes) else str(reason)
        admission.token = ""
    return admission


def defer(job: Job, queue: Queue, admission: Admission) -> None:
    """Put a job that is over a limit back in the database, due when a slot is expected.

    Redis forgets the job first (its queue entries and its hash), then the row
    becomes ``scheduled``; the scheduler loop pushes it again from the row.
    In that order a push by the scheduler can never be undone here. Should
    the row write fail, the job goes back into its queue instead.
    """
    assert admission.wait is not None
    with queue.connection.pipeline() as pipeline:
        pipeline.lrem(queue.intermediate_queue_key, 0, job.id)
        pipeline.lrem(queue.key, 0, job.id)
        pipeline.delete(job.key)
        pipeline.execute()
    until = timezone.now() + timedelta(seconds=admission.wait)
    try:
        waiting = records.mark_waiting_for_limit(job.id, until)
    except (DatabaseError, InterfaceError) as exc:
        logger.warning(
            "Job %s (%s) is over its %s limit, and its row could not be updated (%s); "
            "it goes back into queue %r.",
            job.id,
            job.func_name,
            admission.reason,
            exc,
            queue.name,
        )
        queue.enqueue_job(job)
        time.sleep(1.0)  # the database is away: do not spin on this job meanwhile
        return
    if waiting:
        logger.info(
            "Job %s (%s) is over its %s limit: it waits %.2f s, until %s.",
            job.id,
            job.func_name,
            admission.reason,
            admission.wait,
            until.isoformat(),
        )
    else:
        logger.info("Job %s (%s) was canceled or deleted while queued; not run.", job.id, job.func_name)
