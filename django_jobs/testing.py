"""Helpers for tests: a throwaway real Redis server, and running queued jobs now.

``RedisServer`` (from :mod:`django_jobs.redis_server`, which needs no Django
settings) starts a real ``redis-server`` in a temporary directory on a free
port; :func:`run_burst` runs the jobs waiting in the queues in this process.
"""

from __future__ import annotations

from typing import Any

from .pusher import flush
from .queues import get_connection, get_queues, queue_names, resolve_serializer
from .redis_server import RedisServer, RedisServerError, find_redis_server, free_port
from .worker import SimpleWorker

__all__ = ["RedisServer", "RedisServerError", "find_redis_server", "free_port", "run_burst"]


def run_burst(queues: list[str] | None = None, **worker_kwargs: Any) -> bool:
    """Run every queued job now in this process with a SimpleWorker; return whether any ran.

    Meant for tests that use real Redis; the rows must be committed (for
    pytest-django, ``@pytest.mark.django_db(transaction=True)``). Pushes
    still waiting in the background (``DJANGO_JOBS["PUSH"] = "background"``)
    are made first, and so are the row writes of ``"redis-first"``.
    """
    flush(timeout=None)
    names = queues or queue_names()
    worker = SimpleWorker(
        get_queues(names),
        connection=get_connection(names[0]),
        serializer=resolve_serializer(),
        **worker_kwargs,
    )
    return bool(worker.work(burst=True, logging_level="WARNING"))
