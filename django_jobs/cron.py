"""Pure schedule arithmetic: validate cron/interval schedules, compute the next run."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Any

from croniter import croniter
from django.core.exceptions import ValidationError
from django.utils import timezone

from .bounds import MAX_DELAY
from .payload import argument_error, find_problem


def get_zone(name: str) -> dt.tzinfo:
    """The schedule's time zone (``settings.TIME_ZONE`` when blank)."""
    if not name:
        return timezone.get_default_timezone()
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValidationError(
            {"timezone": f"Unknown time zone {name!r}: use an IANA name such as 'Europe/Paris' or 'UTC'."}
        ) from None


#: The longest interval of a periodic job: as far ahead as a delayed job may be due (100 years).
MAX_INTERVAL = int(MAX_DELAY.total_seconds())


def validate_call(args: Any, kwargs: Any) -> None:
    """Raise ``ValidationError`` for a periodic job's arguments that a ``.delay()`` would refuse."""
    if not isinstance(args, list):
        raise ValidationError({"args": 'The arguments must be a JSON list, such as [1, "a"].'})
    if not isinstance(kwargs, dict):
        raise ValidationError({"kwargs": 'The keyword arguments must be a JSON object, such as {"a": 1}.'})
    for field, value in (("args", args), ("kwargs", kwargs)):
        problem = find_problem(value, field)
        if problem is not None:
            raise ValidationError({field: str(argument_error("This periodic job", problem))})


def validate_schedule(cron: str, interval: int | None, zone: str) -> None:
    """Raise ``ValidationError`` (with a message that says what to write) for a bad schedule."""
    if bool(cron) == bool(interval):
        raise ValidationError(
            "Give exactly one of a cron expression (e.g. '0 3 * * *' for 03:00 every day) "
            "or an interval in seconds."
        )
    if cron and not croniter.is_valid(cron):
        raise ValidationError(
            {
                "cron": f"{cron!r} is not a valid cron expression. Use five fields: minute hour "
                "day-of-month month day-of-week, e.g. '*/15 * * * *' or '0 3 * * 1-5'."
            }
        )
    if interval is not None and (
        isinstance(interval, bool) or not isinstance(interval, int) or not 0 < interval <= MAX_INTERVAL
    ):
        raise ValidationError(
            {"interval": f"The interval must be a whole number of seconds from 1 to {MAX_INTERVAL:,}."}
        )
    get_zone(zone)


def next_cron_run(cron: str, zone: str, after: dt.datetime) -> dt.datetime:
    """The first time strictly after ``after`` that matches ``cron`` in ``zone`` (returned in UTC).

    The expression is evaluated on the wall clock of the zone, so "0 3 * * *"
    stays at 03:00 local time across daylight-saving changes. When the
    clocks go back, wall-clock times repeat: each runs once (the first time).
    """
    tz = get_zone(zone)
    local = after.astimezone(tz)
    wall = local.replace(tzinfo=None)
    iterator = croniter(cron, local)
    while True:
        following: dt.datetime = iterator.get_next(dt.datetime)
        if following.tzinfo is None:
            following = following.replace(tzinfo=tz)
        result = following.astimezone(dt.UTC)
        # Skip a repeated wall-clock time (the hour after the clocks go back).
        if result > after and following.replace(tzinfo=None) > wall:
            return result


def next_run(cron: str, interval: int | None, zone: str, after: dt.datetime) -> dt.datetime:
    """The next run strictly after ``after`` for a cron or interval schedule."""
    if cron:
        return next_cron_run(cron, zone, after)
    assert interval
    return after + dt.timedelta(seconds=interval)
