"""Pure schedule arithmetic: validate cron/interval schedules, compute the next run."""

from __future__ import annotations

import datetime as dt
import zoneinfo

from croniter import croniter
from django.core.exceptions import ValidationError
from django.utils import timezone


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
    if interval is not None and interval <= 0:
        raise ValidationError({"interval": "The interval must be a positive number of seconds."})
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
