"""The lists of jobs a batch worker took ahead of running them, in Redis.

A :class:`~django_jobs.worker.BatchWorker` moves up to ``batch_size - 1`` jobs
from the front of a queue into a list of its own (``django_jobs:claimed:<worker
name>``) with one script, and notes in :data:`CLAIMS_KEY` which queue they came
from. Recovery gives back the lists of dead workers, and counts their jobs as
held (not lost).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis import Redis

#: Which list each worker holds its jobs taken ahead in: worker name -> queue key.
CLAIMS_KEY = "django_jobs:claims"


def claimed_key(worker_name: str) -> str:
    """The Redis list of the jobs a worker took ahead and has not started."""
    return f"django_jobs:claimed:{worker_name}"


# Take up to ARGV[1] jobs from the front of a queue into the worker's list, and return
# each id followed by its job hash (as RQ's dequeue would read it, in one round trip).
CLAIM_SCRIPT = """
local out = {}
for _ = 1, tonumber(ARGV[1]) do
    local id = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
    if not id then break end
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGETALL', ARGV[3] .. id)
end
if #out > 0 then redis.call('HSET', KEYS[3], ARGV[2], KEYS[1]) end
return out
"""

# Put a worker's jobs taken ahead back at the front of their queue, in their order.
_RELEASE = """
local queue = redis.call('HGET', KEYS[2], ARGV[1])
local moved = 0
if queue then
    while redis.call('LMOVE', KEYS[1], queue, 'RIGHT', 'LEFT') do moved = moved + 1 end
end
redis.call('DEL', KEYS[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return moved
"""


def release_claims(connection: Redis, worker_name: str) -> int:
    """Give a worker's jobs taken ahead back to the front of their queue; return how many."""
    return int(connection.eval(_RELEASE, 2, claimed_key(worker_name), CLAIMS_KEY, worker_name))


def claimers(connection: Redis) -> list[str]:
    """Names of the workers that hold (or held, and died holding) a list of jobs taken ahead."""
    return [name.decode() if isinstance(name, bytes) else name for name in connection.hkeys(CLAIMS_KEY)]


def claimed_job_ids(connection: Redis) -> set[str]:
    """Ids of every job some worker took ahead and has not started."""
    names = claimers(connection)
    if not names:
        return set()
    with connection.pipeline(transaction=False) as pipeline:
        for name in names:
            pipeline.lrange(claimed_key(name), 0, -1)
        lists = pipeline.execute()
    return {job_id.decode() if isinstance(job_id, bytes) else job_id for ids in lists for job_id in ids}
