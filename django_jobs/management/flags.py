"""The types of the management commands' flags: each takes what its command can use and refuses the
rest, with a message that says what it takes.

They are argparse ``type=`` functions: a refused value raises ``argparse.ArgumentTypeError``,
which Django's parser turns into a usage error (exit status 2, no traceback) on the command line,
and into a ``CommandError`` under ``call_command``. Either way the message reads
``argument --flag: expected …, not 'value'``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from django.utils.module_loading import import_string
from rq.worker import BaseWorker

from django_jobs.worker import WORKER_CLASS_ALIASES, RecordingWorkerMixin

#: The most seconds a flag of seconds takes where a larger value would break something (a timer,
#: a Redis expiry): a day is already far more than any of them needs.
DAY = 86_400

#: The levels ``--logging-level`` takes (in either case).
LOGGING_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

WORKER_CLASSES_ACCEPTED = (
    "Use 'fork' (the default), 'simple', 'batch', or the dotted path of a subclass of "
    "django_jobs.worker.Worker or django_jobs.worker.SimpleWorker."
)


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) or not value.is_integer() else f"{int(value):,}"


def _range(low: float, high: float | None) -> str:
    return f"of at least {_number(low)}" if high is None else f"from {_number(low)} to {_number(high)}"


def whole_number(low: int = 1, high: int | None = None, *, note: str = "") -> Callable[[str], int]:
    """A type for a whole number from ``low`` to ``high`` (no bound above when None).

    ``note`` (what the number counts, why the bound) is said in the message after the range.
    """
    accepted = _range(low, high) + (f" ({note})" if note else "")

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or number < low or (high is not None and number > high):
            raise argparse.ArgumentTypeError(f"expected a whole number {accepted}, not {value!r}")
        return number

    return parse


def seconds(low: float, high: float = DAY) -> Callable[[str], float]:
    """A type for a finite number of seconds from ``low`` to ``high`` (fractions allowed)."""
    accepted = _range(low, high)

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        # NaN compares false with everything: it fails the range test below as it should.
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"expected a number of seconds {accepted}, not {value!r}")
        return number

    return parse


def logging_level(value: str) -> str:
    """A type for a logging level's name, in either case; returns it in capitals."""
    level = value.strip().upper()
    if level not in LOGGING_LEVELS:
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(LOGGING_LEVELS)} (in either case), not {value!r}"
        )
    return level


def load_worker_class(value: str) -> type[Any]:
    """Return the worker class for an alias ("fork", "simple", "batch") or a dotted path.

    Raises ``ValueError`` saying why ``value`` is not one, and what is.
    """
    if not value.strip():
        raise ValueError(f"{value!r} names no class. {WORKER_CLASSES_ACCEPTED}")
    path = WORKER_CLASS_ALIASES.get(value, value)
    try:
        cls = import_string(path)
    # A path that is not there raises ImportError; a malformed one (".x", "..") the other two.
    except (ImportError, ValueError, TypeError) as exc:
        raise ValueError(f"{value!r} cannot be imported ({exc}). {WORKER_CLASSES_ACCEPTED}") from None
    if not (isinstance(cls, type) and issubclass(cls, BaseWorker)):
        raise ValueError(f"{value!r} is not an RQ worker class. {WORKER_CLASSES_ACCEPTED}")
    if not issubclass(cls, RecordingWorkerMixin):
        raise ValueError(
            f"{value!r} does not record jobs in the database. Subclass django_jobs.worker.Worker "
            "or django_jobs.worker.SimpleWorker instead of RQ's classes."
        )
    return cls


def worker_class(value: str) -> str:
    """A type for ``--worker-class``: an alias or the dotted path of a worker class that
    records jobs; returns the value as given (the pool hands it on to its workers)."""
    try:
        load_worker_class(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value
