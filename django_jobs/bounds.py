"""The bounds of a job's time options, refused at the door with an error that states the rule.

``countdown``/``eta``, ``timeout``, ``ttl``, ``failure_ttl`` and ``result_ttl``
must be finite numbers of seconds (``timeout`` may also be RQ's text form,
``"15m"``) within the bounds below; NaN, infinities, negative values and, except
where it means something, zero are refused with a ``TypeError`` (a value of the
wrong type) or a ``ValueError`` (out of bounds), before anything is written.
docs/jobs.md lists them.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from rq.exceptions import TimeoutFormatError
from rq.utils import parse_timeout

#: How far ahead a delayed job may be due (``countdown``/``eta``): 100 years.
MAX_DELAY = timedelta(days=36525)
#: The longest ``timeout`` a run may have.
MAX_TIMEOUT = int(timedelta(days=30).total_seconds())
#: The longest ``ttl``, ``failure_ttl`` and ``result_ttl``.
MAX_TTL = int(timedelta(days=3650).total_seconds())


def _spelled(seconds: float) -> str:
    days = seconds / 86400
    return f"{seconds:,.0f} s ({days:,.0f} days)" if days >= 1 else f"{seconds:,.0f} s"


def _shown(value: Any) -> str:
    """``repr(value)``; an int beyond any float by its size, as it may be too long to read or even
    to turn into text (past 4,300 digits)."""
    if isinstance(value, int) and value.bit_length() > 1024:
        return f"<an int of {value.bit_length():,} bits>"
    return repr(value)


def check_seconds(
    label: str, name: str, value: Any, *, maximum: float, allow_zero: bool = False, timedelta_ok: bool = False
) -> float:
    """Return ``value`` (seconds, or a timedelta with ``timedelta_ok``) as seconds; raise when it is
    not a number of seconds greater than 0 (or at least 0 with ``allow_zero``) and at most ``maximum``."""
    if timedelta_ok and isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond any float is beyond every bound
            seconds = math.inf if value > 0 else -math.inf
    else:
        kinds = "seconds or a timedelta" if timedelta_ok else "a number of seconds"
        raise TypeError(f"{label}: {name} must be {kinds}, not {type(value).__name__}.")
    lowest = "0 or more" if allow_zero else "greater than 0"
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero) or seconds > maximum:
        raise ValueError(
            f"{label}: {name}={_shown(value)} is out of bounds: give a number of seconds {lowest} and at "
            f"most {_spelled(maximum)}."
        )
    return seconds


def check_timeout(label: str, timeout: Any) -> None:
    """Raise for a ``timeout`` RQ would reject only when pushing, or one out of bounds."""
    if isinstance(timeout, float) and not math.isfinite(timeout):
        # Out of bounds; RQ's int() would raise OverflowError for it, or fail an assert for NaN.
        check_seconds(label, "timeout", timeout, maximum=MAX_TIMEOUT)
    seconds = None
    # Only seconds or RQ's text form: RQ reads True as 1 s, fails an assert for bytes, and takes a
    # Decimal, which the row's JSON could not hold.
    if isinstance(timeout, int | float | str) and not isinstance(timeout, bool):
        try:
            seconds = parse_timeout(timeout)
        except (TimeoutFormatError, ValueError):
            seconds = None
    if seconds is None:
        raise ValueError(
            f"{label}: timeout {timeout!r} is invalid: give seconds as an int, or a string such as "
            "'90', '30s', '15m', '2h' or '1d'."
        )
    check_seconds(label, "timeout", seconds, maximum=MAX_TIMEOUT)


def check_ttls(label: str, ttl: Any, failure_ttl: Any, result_ttl: Any) -> None:
    """Raise for a ``ttl``/``failure_ttl`` that is not greater than 0, or a ``result_ttl`` below 0
    (0 keeps no result in Redis: the row keeps it), or any of them beyond :data:`MAX_TTL`."""
    for name, value in (("ttl", ttl), ("failure_ttl", failure_ttl)):
        if value is not None:
            check_seconds(label, name, value, maximum=MAX_TTL)
    if result_ttl is not None:
        check_seconds(label, "result_ttl", result_ttl, maximum=MAX_TTL, allow_zero=True)


def check_delay(label: str, countdown: Any) -> timedelta:
    """``countdown`` (seconds or a timedelta, 0 or more, at most :data:`MAX_DELAY`) as a timedelta."""
    seconds = check_seconds(
        label, "countdown", countdown, maximum=MAX_DELAY.total_seconds(), allow_zero=True, timedelta_ok=True
    )
    return countdown if isinstance(countdown, timedelta) else timedelta(seconds=seconds)


def check_eta(label: str, eta: datetime, now: datetime) -> None:
    """Raise when ``eta`` (aware) is more than :data:`MAX_DELAY` ahead of ``now``."""
    if eta - now > MAX_DELAY:
        raise ValueError(
            f"{label}: eta {eta.isoformat()} is more than {MAX_DELAY.days:,} days (100 years) ahead, "
            "the most a job may be delayed."
        )
