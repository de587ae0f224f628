"""Retry policies: how often a failed job runs again, and after how long.

A policy is a small JSON dict kept in the row's ``options``, so a retry needs
nothing but the row: the worker decides, the database holds the wait (the
row goes ``scheduled`` with ``scheduled_for``) and the scheduler loop pushes
it when due. RQ's own retry machinery (and its scheduler) is not used.

Keys: ``retry_max`` (retries after the first attempt), ``retry_intervals``
(seconds before retry 1, 2, …; the last one repeats), ``retry_backoff``
(base seconds of exponential backoff, 0 for none), ``retry_backoff_max``,
``retry_jitter`` and ``retry_on`` (dotted names of the exception classes
that may be retried; empty means any).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any


def _dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def retry_policy(
    label: str,
    retry: Any,
    backoff: bool | float = False,
    backoff_max: float = 600,
    jitter: bool = True,
    retry_on: type[BaseException] | Iterable[type[BaseException]] = (),
) -> dict[str, Any]:
    """Validate ``@job``'s retry options; return the policy kept on each row (``{}``: no retries)."""
    if isinstance(retry, bool) or (isinstance(retry, int) and retry < 0):
        raise TypeError(f"@job(retry=…) on {label} takes a number >= 0 or an rq.Retry, not {retry!r}.")
    if retry is not None and not isinstance(retry, int) and not hasattr(retry, "max"):
        raise TypeError(
            f"@job(retry=…) on {label} takes a number of retries or rq.Retry(max=…, interval=…), "
            f"not {type(retry).__name__}."
        )
    if isinstance(retry_on, type):
        retry_on = (retry_on,)
    retry_on = tuple(retry_on)
    for cls in retry_on:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise TypeError(f"@job(retry_on=…) on {label} takes exception classes, not {cls!r}.")
    if isinstance(backoff, bool):
        base = 1.0 if backoff else 0.0
    elif isinstance(backoff, int | float) and backoff > 0:
        base = float(backoff)
    else:
        raise TypeError(f"@job(retry_backoff=…) on {label} is True or seconds > 0, not {backoff!r}.")
    if not isinstance(backoff_max, int | float) or isinstance(backoff_max, bool) or backoff_max <= 0:
        raise TypeError(f"@job(retry_backoff_max=…) on {label} is seconds > 0, not {backoff_max!r}.")

    if retry is None or retry == 0:
        if base or retry_on:
            raise TypeError(
                f"@job on {label}: retry_backoff and retry_on need retries; add retry=N (how many)."
            )
        return {}
    policy: dict[str, Any] = {}
    if isinstance(retry, int):
        policy["retry_max"] = retry
    else:
        policy["retry_max"] = int(retry.max)
        intervals = [int(value) for value in (getattr(retry, "intervals", None) or [0])]
        if any(intervals) and base:
            raise TypeError(
                f"@job on {label}: give the waits as rq.Retry(interval=[…]) or as retry_backoff, not both."
            )
        if any(intervals):
            policy["retry_intervals"] = intervals
    if base:
        policy["retry_backoff"] = base
        policy["retry_backoff_max"] = float(backoff_max)
        policy["retry_jitter"] = bool(jitter)
    if retry_on:
        policy["retry_on"] = [_dotted(cls) for cls in retry_on]
    return policy


def retries_left(options: dict[str, Any], attempts: int) -> int:
    """How many more runs the policy allows after ``attempts`` runs."""
    return max(0, int(options.get("retry_max") or 0) + 1 - attempts)


#: Errors that the same arguments and code would raise again: never retried.
NEVER_RETRIED = frozenset(
    {"django_jobs.exceptions.JobArgumentsError", "django_jobs.exceptions.JobFunctionNotAllowed"}
)


def error_types(error: BaseException | None) -> list[str] | None:
    """The dotted names of ``error``'s classes, most specific first (None for no exception)."""
    if error is None:
        return None
    return [_dotted(cls) for cls in type(error).__mro__ if cls is not object]


def retryable(options: dict[str, Any], types: list[str] | None) -> bool:
    """Whether an error of ``types`` is one the policy retries.

    Any error is, unless ``retry_on`` narrows it; a process that died (no
    exception, ``types`` None) is retried too, as its job never finished.
    """
    if types is None:
        return True
    if NEVER_RETRIED.intersection(types):
        return False
    wanted = options.get("retry_on")
    return not wanted or bool(set(wanted).intersection(types))


def retry_delay(options: dict[str, Any], retry_number: int, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``retry_number`` (1 for the first retry)."""
    intervals = options.get("retry_intervals")
    if intervals:
        return float(intervals[min(retry_number, len(intervals)) - 1])
    base = float(options.get("retry_backoff") or 0)
    if not base:
        return 0.0
    delay = min(float(options.get("retry_backoff_max", 600)), base * float(2 ** (retry_number - 1)))
    if options.get("retry_jitter", True):
        # "Full jitter": anywhere between 0 and the backoff, so that jobs that
        # failed together do not all come back at the same moment.
        delay = float((rng or random).uniform(0, delay))
    return delay
