"""System checks for django_jobs' settings. No network I/O.

=====================  =========================================================
id                     problem
=====================  =========================================================
django_jobs.E001       ``RQ_QUEUES`` is missing, empty or not a dict
django_jobs.E002       a queue in ``RQ_QUEUES`` says nothing about where Redis is
django_jobs.E003       ``DJANGO_JOBS`` has a key django_jobs does not know
django_jobs.E004       ``DJANGO_JOBS`` is not a dict, or an option has a bad value
django_jobs.E005       ``DJANGO_JOBS["DEFAULT_QUEUE"]`` is not in ``RQ_QUEUES``
django_jobs.E006       a queue's connection settings are incomplete (e.g. ``HOST`` without ``PORT``)
django_jobs.E007       a queue sets its own ``SERIALIZER`` (django_jobs uses one for all queues)
django_jobs.E008       ``DJANGO_JOBS["RETENTION"]`` is malformed (its shape, a status or a duration)
django_jobs.E009       ``DJANGO_JOBS["ALLOWED_FUNCTIONS"]`` is malformed (not a list of dotted names)
django_jobs.E010       an entry of ``DJANGO_JOBS["SCHEDULE"]`` is malformed (function, schedule, arguments)
django_jobs.W001       ``django_rq`` is listed before ``django_jobs`` in ``INSTALLED_APPS``
django_jobs.W002       a pickle serializer is configured
django_jobs.W003       ``DJANGO_JOBS["ALLOWED_FUNCTIONS"]`` allows every function (a bare wildcard)
=====================  =========================================================
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any

from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import ValidationError

from .conf import CONNECTION_KEYS, DEFAULTS, conf, retention_problems
from .cron import validate_call, validate_schedule
from .queues import resolve_serializer
from .registry import registry

# Keys django-rq reads unconditionally once a connection style is chosen
# (the style is the first of CONNECTION_KEYS present, as django-rq picks it).
REQUIRED_WITH = {"HOST": ("PORT",), "UNIX_SOCKET_PATH": ("DB",), "SENTINELS": ("MASTER_NAME",)}

EXAMPLE_QUEUES = 'RQ_QUEUES = {"default": {"URL": "redis://127.0.0.1:6379/0"}}'


def _is_pickle(value: Any) -> bool:
    if value is None:
        return False
    text = (
        value
        if isinstance(value, str)
        else f"{getattr(value, '__module__', '')}.{getattr(value, '__name__', '')}"
    )
    return "pickle" in text.lower()


@register(Tags.compatibility)
def check_queues(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    queues = conf.raw_queues
    if not isinstance(queues, dict) or not queues:
        return [
            Error(
                "RQ_QUEUES is missing or empty: django_jobs has no queue to put jobs on.",
                hint=f"Declare your queues in settings, for example {EXAMPLE_QUEUES}.",
                id="django_jobs.E001",
            )
        ]
    messages: list[CheckMessage] = []
    for name, config in queues.items():
        if not isinstance(config, dict) or not any(key in config for key in CONNECTION_KEYS):
            messages.append(
                Error(
                    f"Queue {name!r} in RQ_QUEUES has no connection settings.",
                    hint=f"Give it one of {', '.join(CONNECTION_KEYS)}, for example "
                    f'RQ_QUEUES[{name!r}] = {{"URL": "redis://127.0.0.1:6379/0"}}.',
                    id="django_jobs.E002",
                )
            )
            continue
        style = next(key for key in CONNECTION_KEYS if key in config)
        missing = [key for key in REQUIRED_WITH.get(style, ()) if key not in config]
        if missing:
            messages.append(
                Error(
                    f"Queue {name!r} in RQ_QUEUES sets {style} but not {' or '.join(missing)}; "
                    "django-rq needs both to connect.",
                    hint=f"Add {', '.join(missing)} to RQ_QUEUES[{name!r}] (or use a URL).",
                    id="django_jobs.E006",
                )
            )
        if "SERIALIZER" in config:
            messages.append(
                Error(
                    f"Queue {name!r} in RQ_QUEUES sets its own SERIALIZER, which django_jobs does not use: "
                    "every queue shares DJANGO_JOBS['SERIALIZER'] (JSON by default).",
                    hint=f"Remove RQ_QUEUES[{name!r}]['SERIALIZER'] and set DJANGO_JOBS['SERIALIZER'] "
                    "if you need another serializer.",
                    id="django_jobs.E007",
                )
            )
    return messages


@register(Tags.compatibility)
def check_options(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    options = conf.raw_options
    if not isinstance(options, dict):
        return [
            Error(
                f"DJANGO_JOBS must be a dict, not {type(options).__name__}.",
                hint='For example DJANGO_JOBS = {"DEFAULT_QUEUE": "default"}.',
                id="django_jobs.E004",
            )
        ]
    messages: list[CheckMessage] = []
    for key in options:
        if key not in DEFAULTS:
            close = difflib.get_close_matches(str(key), DEFAULTS, n=1)
            hint = f"Did you mean {close[0]!r}? " if close else ""
            messages.append(
                Error(
                    f"DJANGO_JOBS has an unknown key {key!r}; it would be ignored.",
                    hint=f"{hint}Known keys: {', '.join(sorted(DEFAULTS))} (see docs/configuration.md).",
                    id="django_jobs.E003",
                )
            )
    try:
        serializer = resolve_serializer()
        if not (hasattr(serializer, "dumps") and hasattr(serializer, "loads")):
            raise TypeError("it has no dumps()/loads()")
    except Exception as exc:
        messages.append(
            Error(
                f"DJANGO_JOBS['SERIALIZER'] = {conf.serializer!r} is not usable: {exc}.",
                hint='Use "json" (the default), "pickle", or the dotted path of an object '
                "with dumps() and loads().",
                id="django_jobs.E004",
            )
        )
    for key in (
        "WAIT_POLL_INTERVAL",
        "PROGRESS_INTERVAL",
        "PAUSE_CHECK_INTERVAL",
        "RECONCILE_INTERVAL",
        "ORPHAN_GRACE",
    ):
        seconds = options.get(key, DEFAULTS[key])
        if (
            not isinstance(seconds, int | float)
            or isinstance(seconds, bool)
            or not math.isfinite(seconds)
            or seconds <= 0
        ):
            messages.append(
                Error(
                    f"DJANGO_JOBS[{key!r}] must be a positive number of seconds, not {seconds!r}.",
                    hint=f"For example {DEFAULTS[key]}.",
                    id="django_jobs.E004",
                )
            )
    push = options.get("PUSH", DEFAULTS["PUSH"])
    if push not in ("immediate", "background", "redis-first"):
        messages.append(
            Error(
                f"DJANGO_JOBS['PUSH'] must be 'immediate', 'background' or 'redis-first', not {push!r}.",
                hint="'immediate' (the default) pushes in the caller's thread; 'background' in a "
                "thread of its own, many jobs per round trip; 'redis-first' pushes before the row "
                "is written, and a thread writes the rows.",
                id="django_jobs.E004",
            )
        )
    limit = options.get("MAX_PAYLOAD_BYTES", DEFAULTS["MAX_PAYLOAD_BYTES"])
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0):
        messages.append(
            Error(
                f"DJANGO_JOBS['MAX_PAYLOAD_BYTES'] must be a positive int or None, not {limit!r}.",
                hint="For example 1048576 (1 MiB, the default), or None for no limit.",
                id="django_jobs.E004",
            )
        )
    redact = options.get("REDACT", ())
    if isinstance(redact, str) or not all(isinstance(name, str) for name in redact or ()):
        messages.append(
            Error(
                f"DJANGO_JOBS['REDACT'] must be a list of argument names, not {redact!r}.",
                hint='For example ["password", "card_number"].',
                id="django_jobs.E004",
            )
        )
    synchronous_start = options.get("SYNCHRONOUS_START", DEFAULTS["SYNCHRONOUS_START"])
    if not isinstance(synchronous_start, bool):
        messages.append(
            Error(
                f"DJANGO_JOBS['SYNCHRONOUS_START'] must be True or False, not {synchronous_start!r}.",
                hint="False (the default) lets the worker's write of a job's start on PostgreSQL "
                "commit without waiting for its flush to disk; True makes it wait, as every other "
                "commit does.",
                id="django_jobs.E004",
            )
        )
    worker_class = options.get("WORKER_CLASS", DEFAULTS["WORKER_CLASS"])
    if not isinstance(worker_class, str):
        messages.append(
            Error(
                f"DJANGO_JOBS['WORKER_CLASS'] must be a str, not {type(worker_class).__name__}.",
                hint='Use "fork", "simple" or a dotted path.',
                id="django_jobs.E004",
            )
        )
    queues = conf.queues
    if queues and conf.default_queue not in queues:
        messages.append(
            Error(
                f"DJANGO_JOBS['DEFAULT_QUEUE'] is {conf.default_queue!r}, which RQ_QUEUES does not define.",
                hint=f"Add it to RQ_QUEUES or set DEFAULT_QUEUE to one of: {', '.join(queues)}.",
                id="django_jobs.E005",
            )
        )
    return messages


@register(Tags.compatibility)
def check_retention(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    options = conf.raw_options
    if not isinstance(options, dict) or "RETENTION" not in options:
        return []
    return [
        Error(
            problem,
            hint='Map final statuses to how long their rows are kept, for example {"finished": '
            'timedelta(days=7), "failed": timedelta(days=30), "canceled": None} (None keeps them forever).',
            id="django_jobs.E008",
        )
        for problem in retention_problems(options["RETENTION"])
    ]


@register(Tags.compatibility)
def check_app_order(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    apps = [app.split(".apps.")[0] for app in conf.installed_apps]
    if "django_rq" in apps and "django_jobs" in apps and apps.index("django_rq") < apps.index("django_jobs"):
        return [
            Warning(
                "django_rq is listed before django_jobs in INSTALLED_APPS, so `manage.py rqworker` "
                "runs django-rq's command, whose workers do not record jobs in the database.",
                hint="Move 'django_jobs' above 'django_rq' in INSTALLED_APPS (or remove django_rq).",
                id="django_jobs.W001",
            )
        ]
    return []


@register(Tags.security)
def check_serializer(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    places = []
    options = conf.raw_options
    if isinstance(options, dict) and _is_pickle(options.get("SERIALIZER")):
        places.append("DJANGO_JOBS['SERIALIZER']")
    for name, config in conf.queues.items():
        if isinstance(config, dict) and _is_pickle(config.get("SERIALIZER")):
            places.append(f"RQ_QUEUES[{name!r}]['SERIALIZER']")
    if not places:
        return []
    return [
        Warning(
            f"A pickle serializer is configured ({', '.join(places)}). Anyone who can write to "
            "your Redis can then run code in your workers, and job rows hold only a text form of "
            "the arguments.",
            hint="Use the default JSON serializer and pass primary keys instead of objects; "
            "keep pickle only if Redis is private to this project.",
            id="django_jobs.W002",
        )
    ]


_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(\.|\.\*)?$")


@register(Tags.security)
def check_allowed_functions(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    options = conf.raw_options
    value = options.get("ALLOWED_FUNCTIONS", ()) if isinstance(options, dict) else ()
    entries = [value] if isinstance(value, str) else value
    if entries is None:
        return []
    example = (
        'For example ["legacy.jobs.send_email", "legacy.reports."] '
        "(a trailing '.' allows the functions of a module)."
    )
    if not isinstance(entries, list | tuple | set | frozenset):
        return [
            Error(
                "DJANGO_JOBS['ALLOWED_FUNCTIONS'] must be a list of dotted names, "
                f"not {type(value).__name__}.",
                hint=example,
                id="django_jobs.E009",
            )
        ]
    messages: list[CheckMessage] = []
    for entry in entries:
        if entry == "*":
            messages.append(
                Warning(
                    "DJANGO_JOBS['ALLOWED_FUNCTIONS'] contains '*': workers run any importable function "
                    "a job names, so anyone who can write to your Redis can run code on them "
                    "(os.system, subprocess.getoutput…).",
                    hint="List the functions (or module prefixes) that jobs enqueued outside django_jobs "
                    "call, or decorate them with @job; see docs/security.md.",
                    id="django_jobs.W003",
                )
            )
        elif not isinstance(entry, str) or not _DOTTED.match(entry):
            messages.append(
                Error(
                    f"DJANGO_JOBS['ALLOWED_FUNCTIONS'] has {entry!r}, which is not a dotted function "
                    "name or module prefix.",
                    hint=example,
                    id="django_jobs.E009",
                )
            )
    return messages


def schedule_problems(name: str, entry: Any) -> list[str]:
    """What is wrong with one entry of ``DJANGO_JOBS["SCHEDULE"]``, a sentence each; [] if nothing."""
    if not isinstance(entry, dict):
        return [f"DJANGO_JOBS['SCHEDULE'][{name!r}] must be a dict, not {type(entry).__name__}."]
    found = []
    func = entry.get("func")
    if not isinstance(func, str) or func not in registry:
        found.append(
            f"DJANGO_JOBS['SCHEDULE'][{name!r}]['func'] is {func!r}, which is not a @job function of this "
            "project (workers run only those)."
        )
    try:
        validate_schedule(entry.get("cron") or "", entry.get("interval"), entry.get("timezone") or "")
        validate_call(entry.get("args", []), entry.get("kwargs", {}))
    except ValidationError as exc:
        found.extend(f"DJANGO_JOBS['SCHEDULE'][{name!r}]: {message}" for message in exc.messages)
    return found


@register(Tags.compatibility)
def check_schedule(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    options = conf.raw_options
    value = options.get("SCHEDULE", {}) if isinstance(options, dict) else {}
    if not isinstance(value, dict):
        problems = [
            f"DJANGO_JOBS['SCHEDULE'] must be a dict of name to schedule, not {type(value).__name__}."
        ]
    else:
        problems = [problem for name, entry in value.items() for problem in schedule_problems(name, entry)]
    return [
        Error(
            problem,
            hint='For example {"nightly-report": {"func": "reports.jobs.build", "cron": "0 3 * * *", '
            '"args": [], "kwargs": {}}} (or "interval": seconds instead of "cron"); see docs/scheduling.md.',
            id="django_jobs.E010",
        )
        for problem in problems
    ]
