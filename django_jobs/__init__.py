"""Background jobs for Django on RQ and Redis, with a database row for every job."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "JobFailed",
    "JobFunction",
    "JobHandle",
    "JobStatus",
    "JobWaitTimeout",
    "UnknownQueueError",
    "get_current_job",
    "get_job",
    "get_queue",
    "job",
    "set_progress",
]

if TYPE_CHECKING:
    from .decorators import JobFunction, job
    from .exceptions import JobFailed, JobWaitTimeout
    from .handles import JobHandle, get_job
    from .models import JobStatus
    from .progress import get_current_job, set_progress
    from .queues import UnknownQueueError, get_queue

_LAZY = {
    "job": "decorators",
    "JobFunction": "decorators",
    "JobFailed": "exceptions",
    "JobWaitTimeout": "exceptions",
    "JobHandle": "handles",
    "get_job": "handles",
    "JobStatus": "models",
    "UnknownQueueError": "queues",
    "get_queue": "queues",
    "get_current_job": "progress",
    "set_progress": "progress",
}


def __getattr__(name: str) -> Any:
    # Lazy: `import django_jobs` (and so any of its modules) loads none of the others, and
    # needs no settings; a name is imported when it is first used.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'django_jobs' has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)
