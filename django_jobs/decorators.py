"""``@job``: turn a function into a :class:`JobFunction` with ``.delay()``."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

if TYPE_CHECKING:
    from rq import Retry

    from .handles import JobHandle

P = ParamSpec("P")
R = TypeVar("R")

#: Every function decorated with ``@job``, by dotted path.
registry: dict[str, JobFunction[Any, Any]] = {}


class JobFunction(Generic[P, R]):
    """A function that can run now (call it) or in a worker (``.delay()``).

    The queue is looked up by name when a job is enqueued, never when the
    module is imported, so settings may change (tests, ``override_settings``).
    """

    def __init__(
        self,
        func: Callable[P, R],
        *,
        queue: str | None = None,
        timeout: int | str | None = None,
        result_ttl: int | None = None,
        ttl: int | None = None,
        failure_ttl: int | None = None,
        retry: int | Retry | None = None,
        description: str | None = None,
        redact: Iterable[str] = (),
        cron: str | None = None,
        interval: int | None = None,
        schedule_timezone: str | None = None,
        missed_runs: str = "skip",
    ) -> None:
        qualname = getattr(func, "__qualname__", "")
        if not callable(func) or "<locals>" in qualname or "<lambda>" in qualname:
            raise TypeError(
                f"@job needs a function defined at module level, so that a worker can import it; "
                f"got {func!r}. Move it to the top level of a module (for example yourapp/jobs.py)."
            )
        if isinstance(retry, bool) or (isinstance(retry, int) and retry < 0):
            raise TypeError(f"@job(retry=…) takes a number of retries >= 0 or an rq.Retry, not {retry!r}.")
        functools.update_wrapper(self, func)
        self.func = func
        self.name = f"{func.__module__}.{qualname}"
        self.queue_name = queue
        self.timeout = timeout
        self.result_ttl = result_ttl
        self.ttl = ttl
        self.failure_ttl = failure_ttl
        self.retry = retry
        self.description = description
        if isinstance(redact, str):
            redact = [redact]
        self.redact = frozenset(redact)
        if cron or interval:
            from django.core.exceptions import ValidationError

            from .schedules import validate_schedule

            try:
                validate_schedule(cron or "", interval, schedule_timezone or "")
            except ValidationError as exc:
                raise ValueError(f"@job on {func.__module__}.{qualname}: {' '.join(exc.messages)}") from None
            if missed_runs not in ("skip", "run_once"):
                raise ValueError(f"@job(missed_runs=…) is 'skip' or 'run_once', not {missed_runs!r}.")
        self.cron = cron
        self.interval = interval
        self.schedule_timezone = schedule_timezone
        self.missed_runs = missed_runs
        self.signature = inspect.signature(func)
        registry[self.name] = self

    def __repr__(self) -> str:
        return f"<JobFunction {self.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function now, in this process."""
        return self.func(*args, **kwargs)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        """Enqueue a call on the job's queue; return its handle at once.

        Inside ``transaction.atomic()`` the job is pushed to Redis only when
        the transaction commits, and not at all if it rolls back.
        """
        from .enqueue import enqueue

        return enqueue(self, args, kwargs)

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        queue: str | None = None,
        job_id: str | None = None,
        depends_on: JobHandle[Any] | str | Iterable[JobHandle[Any] | str] | None = None,
        at_front: bool = False,
        timeout: int | str | None = None,
        countdown: float | timedelta | None = None,
        eta: datetime | None = None,
    ) -> JobHandle[R]:
        """Enqueue a call with per-call options; return its handle at once.

        ``countdown`` (seconds or a timedelta) or ``eta`` (a datetime; naive
        means ``settings.TIME_ZONE``) delay it: the row is ``scheduled`` and
        the scheduler (``manage.py rqscheduler``) queues it when due.
        """
        from .enqueue import enqueue

        return enqueue(
            self,
            tuple(args),
            dict(kwargs or {}),
            queue=queue,
            job_id=job_id,
            depends_on=depends_on,
            at_front=at_front,
            timeout=timeout,
            countdown=countdown,
            eta=eta,
        )

    def enqueue_in(self, delay: timedelta | float, /, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        """Run the call after ``delay`` (a timedelta or seconds)."""
        from .enqueue import enqueue

        return enqueue(self, args, kwargs, countdown=delay)

    def enqueue_at(self, when: datetime, /, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        """Run the call at ``when`` (naive means ``settings.TIME_ZONE``)."""
        from .enqueue import enqueue

        return enqueue(self, args, kwargs, eta=when)


@overload
def job(func_or_queue: Callable[P, R], /) -> JobFunction[P, R]: ...


@overload
def job(
    func_or_queue: str | None = None,
    /,
    *,
    queue: str | None = None,
    timeout: int | str | None = None,
    result_ttl: int | None = None,
    ttl: int | None = None,
    failure_ttl: int | None = None,
    retry: int | Retry | None = None,
    description: str | None = None,
    redact: Iterable[str] = (),
    cron: str | None = None,
    interval: int | None = None,
    schedule_timezone: str | None = None,
    missed_runs: str = "skip",
) -> Callable[[Callable[P, R]], JobFunction[P, R]]: ...


def job(
    func_or_queue: Callable[P, R] | str | None = None,
    /,
    *,
    queue: str | None = None,
    timeout: int | str | None = None,
    result_ttl: int | None = None,
    ttl: int | None = None,
    failure_ttl: int | None = None,
    retry: int | Retry | None = None,
    description: str | None = None,
    redact: Iterable[str] = (),
    cron: str | None = None,
    interval: int | None = None,
    schedule_timezone: str | None = None,
    missed_runs: str = "skip",
) -> JobFunction[P, R] | Callable[[Callable[P, R]], JobFunction[P, R]]:
    """Make a function a background job.

    ``@job``, ``@job("emails")`` and ``@job(queue="high", timeout=60,
    result_ttl=3600, ttl=600, retry=3, description="…")`` all work.
    ``timeout`` is the most a run may take (seconds or "5m"), ``result_ttl``
    how long RQ keeps the result in Redis (the row keeps it for good),
    ``ttl`` how long the job may wait in its queue, ``retry`` how many times
    a failed run is retried (or an ``rq.Retry`` with intervals), ``redact``
    the argument names shown as "••••" in the admin and in logs.

    ``cron="0 3 * * *"`` or ``interval=seconds`` also make it a periodic job
    (in ``schedule_timezone``, ``settings.TIME_ZONE`` by default), synced to a
    :class:`~django_jobs.models.PeriodicJob` row when ``rqscheduler`` starts;
    ``missed_runs`` is "skip" (the default) or "run_once".
    """
    if callable(func_or_queue):
        return JobFunction(func_or_queue)
    if func_or_queue is not None and queue is not None:
        raise TypeError("@job: give the queue once, either @job('name') or @job(queue='name').")
    if func_or_queue is not None and not isinstance(func_or_queue, str):
        raise TypeError(f"@job: the queue name must be a str, not {type(func_or_queue).__name__}.")

    def decorate(func: Callable[P, R]) -> JobFunction[P, R]:
        return JobFunction(
            func,
            queue=func_or_queue or queue,
            timeout=timeout,
            result_ttl=result_ttl,
            ttl=ttl,
            failure_ttl=failure_ttl,
            retry=retry,
            description=description,
            redact=redact,
            cron=cron,
            interval=interval,
            schedule_timezone=schedule_timezone,
            missed_runs=missed_runs,
        )

    return decorate
