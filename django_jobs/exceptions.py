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


class JobFunctionNotAllowed(JobError, PermissionError):
    """A job names a function that is neither registered nor allowed: the worker refused it unread."""

    def __init__(self, func_name: str, what: str = "job function") -> None:
        self.func_name = func_name
        super().__init__(
            f"The {what} {func_name!r} is not registered, so the worker refused to run it (its module "
            "was not imported). Either it was renamed, moved or removed after the job was enqueued "
            "(deploy code that defines it, or keep an alias under the old name, then requeue the job), "
            "or it is not a @job function of a module the worker imports (an app's jobs.py or "
            "tasks.py: DJANGO_JOBS['AUTODISCOVER']) nor listed in DJANGO_JOBS['ALLOWED_FUNCTIONS'] "
            "(dotted paths, or module prefixes ending with '.'). If the job is not yours, something "
            "wrote it into Redis: see docs/security.md."
        )


class JobArgumentsError(JobError, TypeError):
    """A job's stored arguments do not fit its function's signature; retrying cannot help."""

    def __init__(self, func_name: str, signature: object, cause: BaseException) -> None:
        self.func_name = func_name
        super().__init__(
            f"The arguments of this job do not fit {func_name}{signature}: {cause}. The function's "
            "signature probably changed after the job was enqueued. Make the function accept the "
            "old arguments (e.g. a parameter with a default), then requeue the job; or delete it."
        )


class JobExited(JobError):
    """The job called ``sys.exit()``; a job should return or raise instead."""

    def __init__(self, code: object) -> None:
        self.code = code
        super().__init__(
            f"The job called sys.exit({code!r}). A job must return a result or raise an exception; "
            "the worker caught the exit and went on with the next job."
        )
