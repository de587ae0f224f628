"""Exceptions that django_jobs raises to its callers."""

from __future__ import annotations


class JobError(Exception):
    """Base class of django_jobs' errors about a job."""


class JobFailed(JobError):
    """``JobHandle.wait()`` found the job ended without a result."""

    def __init__(self, job_id: str, status: str, error: str) -> None:
        self.job_id = job_id
        self.status = status
        self.error = error
        last_line = error.strip().splitlines()[-1] if error.strip() else "no error recorded"
        super().__init__(f"Job {job_id} ended {status}: {last_line}")


class JobWaitTimeout(JobError, TimeoutError):
    """``JobHandle.wait()`` ran out of time before the job ended."""

    def __init__(self, job_id: str, status: str | None, timeout: float) -> None:
        self.job_id = job_id
        self.status = status
        super().__init__(
            f"Job {job_id} did not end within {timeout:g} s (status: {status or 'unknown'}). "
            "Is a worker running on its queue (python manage.py rqworker <queue>)?"
        )


class JobFunctionImportError(JobError, ImportError):
    """A worker could not import the function a job names."""

    def __init__(self, func_name: str, cause: BaseException) -> None:
        self.func_name = func_name
        super().__init__(
            f"Cannot import the job function {func_name!r}: {type(cause).__name__}: {cause}. "
            "It was probably renamed, moved or removed after the job was enqueued, or the worker "
            "runs older code than the web process. Deploy code that defines it (or keep an alias "
            "under the old name), then requeue the job; or delete the job."
        )
