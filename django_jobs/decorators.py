"""``@job``: turn a function into a :class:`JobFunction` with ``.delay()``."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from django.core.exceptions import ValidationError

from . import limits, uniqueness
from .bounds import check_timeout, check_ttls
from .cron import validate_schedule
from .enqueue import enqueue, enqueue_many
from .handles import JobHandle
from .registry import registry
from .retries import retry_policy

if TYPE_CHECKING:
    from rq import Retry

P = ParamSpec("P")
R = TypeVar("R")


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
        retry_backoff: bool | float = False,
        retry_backoff_max: float = 600,
        retry_jitter: bool = True,
        retry_on: type[BaseException] | Iterable[type[BaseException]] = (),
        description: str | None = None,
        redact: Iterable[str] = (),
        cron: str | None = None,
        interval: int | None = None,
        schedule_timezone: str | None = None,
        missed_runs: str = "skip",
        unique: bool = False,
        unique_key: Callable[..., str] | None = None,
        unique_for: float | None = None,
        rate_limit: str | None = None,
        concurrency: int | None = None,
    ) -> None:
        qualname = getattr(func, "__qualname__", "")
        if not callable(func) or "<locals>" in qualname or "<lambda>" in qualname:
            raise TypeError(
                f"@job needs a function defined at module level, so that a worker can import it; "
                f"got {func!r}. Move it to the top level of a module (for example yourapp/jobs.py)."
            )
        functools.update_wrapper(self, func)
        self.func = func
        self.name = f"{func.__module__}.{qualname}"
        self.queue_name = queue
        # Validated now: a bad value fails at import, not at the first .delay() or in a worker.
        if timeout is not None:
            check_timeout(f"@job on {self.name}", timeout)
        check_ttls(f"@job on {self.name}", ttl, failure_ttl, result_ttl)
        self.timeout = timeout
        self.result_ttl = result_ttl
        self.ttl = ttl
        self.failure_ttl = failure_ttl
        self.retry = retry
        # Validated now, kept on each row: the worker decides retries from the row alone.
        self.retry_policy = retry_policy(
            f"{self.name}()", retry, retry_backoff, retry_backoff_max, retry_jitter, retry_on
        )
        self.description = description
        if isinstance(redact, str):
            redact = [redact]
        self.redact = frozenset(redact)
        if cron or interval:
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
        # Validated now: a bad value fails at import, not at the first .delay() or in a worker.
        uniqueness.check_options(f"{self.name}()", unique, unique_key, unique_for)
        self.unique = unique or unique_key is not None
        self.unique_key = unique_key
        self.unique_for = unique_for
        self.limit_options = limits.check_options(f"{self.name}()", rate_limit, concurrency)
        self.rate_limit = rate_limit
        self.concurrency = concurrency
        self.signature = inspect.signature(func)
        #: The parameters that gather arguments (``*args``, ``**kwargs``).
        self.gathering = frozenset(
            parameter.name
            for parameter in self.signature.parameters.values()
            if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        )
        registry[self.name] = self

    def __repr__(self) -> str:
        return f"<JobFunction {self.name}>"

    def __call__(self, /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function now, in this process."""
        return self.func(*args, **kwargs)

    def delay(self, /, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        """Enqueue a call on the job's queue; return its handle at once.

        Inside ``transaction.atomic()`` the job is pushed to Redis only when
        the transaction commits, and not at all if it rolls back.
        """
        return JobHandle(enqueue(self, args, kwargs))

    def map(
        self, items: Iterable[tuple[Any, ...] | dict[str, Any]], *, queue: str | None = None
    ) -> list[JobHandle[R]]:
        """Enqueue one job per item, in bulk; return their handles, in order.

        An item is a tuple of positional arguments, ``(1, 2)``, or a dict of
        keyword arguments, ``{"a": 1, "b": 2}``. Every item is checked as
        ``.delay()`` checks its call before anything is written (a bad one
        raises, naming its index); the rows are inserted in bulk and the jobs
        pushed to Redis in one pipeline when the transaction commits.
        """
        return [JobHandle(job_id) for job_id in enqueue_many(self, items, queue=queue)]

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
        return JobHandle(
            enqueue(
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
        )

    def enqueue_in(self, delay: timedelta | float, /, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        """Run the call after ``delay`` (a timedelta or seconds)."""
        return JobHandle(enqueue(self, args, kwargs, countdown=delay))

    def enqueue_at(self, when: datetime, /, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        """Run the call at ``when`` (naive means ``settings.TIME_ZONE``)."""
        return JobHandle(enqueue(self, args, kwargs, eta=when))


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
    retry_backoff: bool | float = False,
    retry_backoff_max: float = 600,
    retry_jitter: bool = True,
    retry_on: type[BaseException] | Iterable[type[BaseException]] = (),
    description: str | None = None,
    redact: Iterable[str] = (),
    cron: str | None = None,
    interval: int | None = None,
    schedule_timezone: str | None = None,
    missed_runs: str = "skip",
    unique: bool = False,
    unique_key: Callable[..., str] | None = None,
    unique_for: float | None = None,
    rate_limit: str | None = None,
    concurrency: int | None = None,
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
    retry_backoff: bool | float = False,
    retry_backoff_max: float = 600,
    retry_jitter: bool = True,
    retry_on: type[BaseException] | Iterable[type[BaseException]] = (),
    description: str | None = None,
    redact: Iterable[str] = (),
    cron: str | None = None,
    interval: int | None = None,
    schedule_timezone: str | None = None,
    missed_runs: str = "skip",
    unique: bool = False,
    unique_key: Callable[..., str] | None = None,
    unique_for: float | None = None,
    rate_limit: str | None = None,
    concurrency: int | None = None,
) -> JobFunction[P, R] | Callable[[Callable[P, R]], JobFunction[P, R]]:
    """Make a function a background job.

    ``@job``, ``@job("emails")`` and ``@job(queue="high", timeout=60,
    result_ttl=3600, ttl=600, retry=3, description="…")`` all work.
    ``timeout`` is the most a run may take (seconds or "5m"), ``result_ttl``
    how long RQ keeps the result in Redis (the row keeps it for good),
    ``ttl`` how long the job may wait in its queue, ``retry`` how many times
    a failed run is retried (or an ``rq.Retry`` with intervals), with
    ``retry_backoff=True`` (or a base in seconds) for exponential waits capped
    at ``retry_backoff_max`` and spread by ``retry_jitter``, and ``retry_on``
    the exception classes worth a retry (any, by default); ``redact``
    the argument names shown as "••••" in the admin and in logs.

    ``cron="0 3 * * *"`` or ``interval=seconds`` also make it a periodic job
    (in ``schedule_timezone``, ``settings.TIME_ZONE`` by default), synced to a
    :class:`~django_jobs.models.PeriodicJob` row when ``rqscheduler`` starts;
    ``missed_runs`` is "skip" (the default) or "run_once".

    ``unique=True`` makes a ``.delay()`` of the same call (same bound
    arguments) return the handle of the job already waiting or running,
    instead of enqueueing another; ``unique_key=callable`` (called with the
    job's arguments, returning a str) says which calls count as the same;
    ``unique_for=seconds`` stops a holder that started (or was enqueued)
    longer ago from blocking new ones. ``rate_limit="10/m"`` ("N/s", "N/m",
    "N/h", "N/d") and ``concurrency=N`` cap how many runs start per period
    and run at once, across all workers; jobs over a limit wait (the
    scheduler queues them again), they are never dropped. See docs/jobs.md.
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
            retry_backoff=retry_backoff,
            retry_backoff_max=retry_backoff_max,
            retry_jitter=retry_jitter,
            retry_on=retry_on,
            description=description,
            redact=redact,
            cron=cron,
            interval=interval,
            schedule_timezone=schedule_timezone,
            missed_runs=missed_runs,
            unique=unique,
            unique_key=unique_key,
            unique_for=unique_for,
            rate_limit=rate_limit,
            concurrency=concurrency,
        )

    return decorate
