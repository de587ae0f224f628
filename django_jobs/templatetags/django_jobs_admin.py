"""Template tags for the jobs admin."""

from __future__ import annotations

import calendar
import datetime
from typing import Any

from django import template
from django.contrib.admin.templatetags.base import InclusionAdminNode
from django.db import models
from django.utils import formats, timezone
from django.utils.text import capfirst
from django.utils.translation import gettext as _

from ..status import TONE

register = template.Library()


@register.filter
def status_tone(status: str) -> str:
    """The tone of a status's badge (its CSS class ``dj-tone-<tone>``), from ``status.TONE``."""
    return TONE.get(status, "unknown")


def jobs_date_hierarchy(cl: Any) -> dict[str, Any]:
    """Django's date drill-down, with choices from the Min/Max range instead of a DISTINCT.

    The admin's own tag lists the years, months or days that have rows with
    ``SELECT DISTINCT``, a scan of the whole table; Min and Max come from the
    ``enqueued_at`` index, and every year, month or day between them is offered.
    """
    field_name = cl.date_hierarchy
    year_field, month_field, day_field = (f"{field_name}__{part}" for part in ("year", "month", "day"))
    year, month, day = (cl.params.get(name) for name in (year_field, month_field, day_field))

    def link(filters: dict[str, Any]) -> str:
        result: str = cl.get_query_string(filters, [f"{field_name}__"])
        return result

    def value(param: Any) -> int:
        return int(param[-1] if isinstance(param, list) else param)

    span = cl.queryset.aggregate(first=models.Min(field_name), last=models.Max(field_name))
    if not span["first"]:
        return {"show": False}
    first, last = (timezone.localtime(span[key]) for key in ("first", "last"))
    if not (year or month or day) and first.year == last.year:
        year = first.year
        if first.month == last.month:
            month = first.month
    if year and month and day:
        chosen = datetime.date(value(year), value(month), value(day))
        return {
            "show": True,
            "back": {
                "link": link({year_field: value(year), month_field: value(month)}),
                "title": capfirst(formats.date_format(chosen, "YEAR_MONTH_FORMAT")),
            },
            "choices": [{"title": capfirst(formats.date_format(chosen, "MONTH_DAY_FORMAT"))}],
        }
    if year and month:
        y, m = value(year), value(month)
        days = range(1, calendar.monthrange(y, m)[1] + 1)
        if (first.year, first.month) == (y, m):
            days = range(first.day, days.stop)
        if (last.year, last.month) == (y, m):
            days = range(days.start, last.day + 1)
        return {
            "show": True,
            "back": {"link": link({year_field: y}), "title": str(y)},
            "choices": [
                {
                    "link": link({year_field: y, month_field: m, day_field: d}),
                    "title": capfirst(formats.date_format(datetime.date(y, m, d), "MONTH_DAY_FORMAT")),
                }
                for d in days
            ],
        }
    if year:
        y = value(year)
        months = range(first.month if first.year == y else 1, (last.month if last.year == y else 12) + 1)
        return {
            "show": True,
            "back": {"link": link({}), "title": _("All dates")},
            "choices": [
                {
                    "link": link({year_field: y, month_field: m}),
                    "title": capfirst(formats.date_format(datetime.date(y, m, 1), "YEAR_MONTH_FORMAT")),
                }
                for m in months
            ],
        }
    return {
        "show": True,
        "back": None,
        "choices": [
            {"link": link({year_field: str(y)}), "title": str(y)} for y in range(first.year, last.year + 1)
        ],
    }


@register.tag(name="jobs_date_hierarchy")
def jobs_date_hierarchy_tag(parser: Any, token: Any) -> InclusionAdminNode:
    # django-stubs types InclusionAdminNode's __init__ without the func and template_name that
    # Django's own admin tags pass to it.
    return InclusionAdminNode(  # type: ignore[call-arg]
        parser, token, func=jobs_date_hierarchy, template_name="date_hierarchy.html", takes_context=False
    )
