"""The one reader of Django settings for django_jobs.

Two settings are read:

``RQ_QUEUES``
    The queues, in django-rq's format: ``{"default": {"URL": "redis://…",
    "DEFAULT_TIMEOUT": 360}, …}``. Every connection key django-rq knows keeps
    working (``URL``, ``HOST``/``PORT``/``DB``/``USERNAME``/``PASSWORD``,
    ``SSL``/``SSL_CERT_REQS``, ``UNIX_SOCKET_PATH``, ``SENTINELS`` with
    ``MASTER_NAME``/``SENTINEL_KWARGS``/``CONNECTION_KWARGS``/``SOCKET_TIMEOUT``,
    ``REDIS_CLIENT_KWARGS``, ``USE_REDIS_CACHE``), as do ``DEFAULT_TIMEOUT`` and
    ``DEFAULT_RESULT_TTL``.

``DJANGO_JOBS``
    django_jobs' own options, one dict; every key is optional and documented
    in :data:`DEFAULTS` below and in ``docs/configuration.md``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from .status import FINAL_STATUSES, JobStatus

#: Every option of ``DJANGO_JOBS`` with its default.
DEFAULTS: dict[str, Any] = {
    # How job arguments, keyword arguments and results travel through Redis:
    # "json" (the default, safe) or "pickle" (opt-in; any Python object, but
    # unpickling data from Redis can run code: see check django_jobs.W002).
    # A dotted path to an object with dumps()/loads() is accepted too.
    "SERIALIZER": "json",
    # The queue that ``@job`` without a queue name uses.
    "DEFAULT_QUEUE": "default",
    # Modules imported from every installed app at startup so that their
    # @job functions are registered (admin, schedules, checks).
    "AUTODISCOVER": ("jobs", "tasks"),
    # Functions a worker may run besides those decorated with @job, for jobs
    # enqueued by other means (plain RQ, django-rq): dotted paths
    # ("legacy.jobs.send") or module prefixes ending with "." or ".*"
    # ("legacy.jobs."). A worker refuses every other function without importing
    # it. "*" allows any importable callable, so that anyone who can write to
    # Redis can run code on the workers (check django_jobs.W003).
    "ALLOWED_FUNCTIONS": (),
    # The worker class ``rqworker`` uses without --worker-class: a dotted
    # path or one of the aliases "fork" (RQ's forking Worker) and "simple"
    # (SimpleWorker: jobs in the worker process).
    "WORKER_CLASS": "fork",
    # Seconds between two reads of the job's row while JobHandle.wait() polls.
    "WAIT_POLL_INTERVAL": 0.05,
    # Argument names shown as "••••" in the admin and in worker logs, for every
    # job (add per-job names with @job(redact=[…])). The stored payload stays
    # complete, so the job still runs with the real values.
    "REDACT": (),
    # Least seconds between two progress writes of one job (set_progress()).
    "PROGRESS_INTERVAL": 0.5,
    # Seconds a worker may take to notice that a queue was paused or resumed.
    "PAUSE_CHECK_INTERVAL": 2.0,
    # How long the rows of jobs that ended are kept, per final status, counted
    # from the job's end: seconds or a timedelta; None keeps them forever.
    # Statuses left out keep these defaults; RETENTION = None keeps every row.
    # Older rows are deleted by the scheduler loop and by `manage.py rqprune`,
    # in batches of at most 10,000 rows (see django_jobs/retention.py).
    "RETENTION": {
        "finished": timedelta(days=7),
        "failed": timedelta(days=30),
        "canceled": timedelta(days=7),
        "stopped": timedelta(days=7),
    },
    # Periodic jobs declared in settings, synced to PeriodicJob rows when the
    # scheduler starts: {"name": {"func": "app.jobs.f", "cron": "0 3 * * *"
    # or "interval": 60, "args": [], "kwargs": {}, "queue": "", "timezone": "",
    # "missed_runs": "skip" | "run_once"}}.
    "SCHEDULE": {},
    # Seconds between two full reconciliations by the scheduler loop: every
    # queued or deferred row whose job Redis no longer has is pushed again.
    # (A Redis that lost its data is noticed at once, on every tick.)
    "RECONCILE_INTERVAL": 300,
    # The most bytes a job's arguments may take as JSON; a bigger .delay()
    # raises ValueError at once (None: no limit). Arguments live in Redis and
    # in the database while the job waits, so large data belongs elsewhere.
    "MAX_PAYLOAD_BYTES": 1024 * 1024,
    # When .delay() pushes the job to Redis after the commit: "immediate" (in
    # the caller's thread; the job is in Redis when .delay() returns outside
    # atomic()) or "background" (a thread pushes many jobs per round trip;
    # .delay() returns once the row is committed). Or "redis-first": outside
    # atomic(), .delay() pushes the job at once and a thread writes its row
    # right after, many rows per statement (inside atomic() as "immediate").
    # See docs/performance.md.
    "PUSH": "immediate",
    # Seconds a worker's heartbeat key must stay missing before its started
    # jobs count as orphaned (retried if attempts are left, else failed). A
    # killed worker's key expires 3 heartbeats (30 s) after its last one; RQ
    # keeps the key of a worker that stopped for 60 s.
    "ORPHAN_GRACE": 20,
    # On PostgreSQL, whether the worker's write of a job's start, made on its
    # own outside any transaction, waits for the server to flush it to disk
    # like every other commit (True), or commits asynchronously (False: the
    # write returns without that wait; it reaches the disk within 0.6 s with
    # PostgreSQL's defaults, or with the next ordinary commit, such as the
    # job's end). A server crash in between can lose the start, never the end.
    "SYNCHRONOUS_START": False,
}

#: Queue keys that say where Redis is; a queue needs at least one. In
#: django-rq's order of precedence: the first one present wins.
CONNECTION_KEYS = ("URL", "USE_REDIS_CACHE", "UNIX_SOCKET_PATH", "SENTINELS", "HOST")


#: The statuses whose rows ``RETENTION`` prunes, in the order they are pruned.
RETENTION_STATUSES: tuple[str, ...] = tuple(status.value for status in JobStatus if status in FINAL_STATUSES)

RETENTION_SETTING = "DJANGO_JOBS['RETENTION']"
RETENTION_EXAMPLE = (
    'for example {"finished": timedelta(days=7), "failed": timedelta(days=30), "canceled": None}'
)


def retention_problems(value: Any) -> list[str]:
    """What is wrong with a ``RETENTION`` value, one sentence each saying how to fix it; [] if nothing."""
    if value is None:
        return []
    if not isinstance(value, Mapping):
        return [
            f"{RETENTION_SETTING} must be a dict of status to seconds or timedelta ({RETENTION_EXAMPLE}), "
            f"not {type(value).__name__}."
        ]
    found = []
    for status, keep in value.items():
        if status not in RETENTION_STATUSES:
            if status in JobStatus.values:
                found.append(
                    f"{RETENTION_SETTING} has the status {status!r}, whose rows are never pruned: "
                    f"only rows of jobs that ended ({', '.join(RETENTION_STATUSES)}) are. Remove that key."
                )
            else:
                close = difflib.get_close_matches(str(status), RETENTION_STATUSES, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                found.append(
                    f"{RETENTION_SETTING} has an unknown status {status!r}: {hint}"
                    f"Use {', '.join(RETENTION_STATUSES)}."
                )
        elif not _valid_duration(keep):
            found.append(
                f"{RETENTION_SETTING}[{status!r}] is {keep!r}: give seconds (e.g. {7 * 86400} for a week), "
                "a timedelta (e.g. timedelta(days=7)), or None to keep these rows forever."
            )
    return found


def _valid_duration(keep: Any) -> bool:
    if keep is None:
        return True
    if isinstance(keep, timedelta):
        return keep >= timedelta(0)
    if isinstance(keep, bool) or not isinstance(keep, int | float):
        return False
    return math.isfinite(keep) and 0 <= keep <= timedelta.max.total_seconds()


def parse_retention(value: Any) -> dict[str, timedelta | None]:
    """``RETENTION`` as written → how long each final status is kept (None: forever).

    Statuses the value leaves out keep their default (forever, for a final status that
    :data:`DEFAULTS` does not name); ``None`` instead of a dict keeps every row forever. A
    malformed value raises ``ImproperlyConfigured`` (check ``django_jobs.E008`` reports it
    earlier).
    """
    found = retention_problems(value)
    if found:
        raise ImproperlyConfigured(" ".join(found))
    if value is None:
        return dict.fromkeys(RETENTION_STATUSES, None)
    merged = {**DEFAULTS["RETENTION"], **value}
    return {status: _as_timedelta(merged.get(status)) for status in RETENTION_STATUSES}


def _as_timedelta(keep: float | timedelta | None) -> timedelta | None:
    if keep is None or isinstance(keep, timedelta):
        return keep
    return timedelta(seconds=keep)


class JobsSettings:
    """Typed, lazy access to ``RQ_QUEUES`` and ``DJANGO_JOBS``.

    Properties read settings on every access, so ``override_settings`` works
    in tests; callers that need speed cache what they derive (see
    ``queues.py``, which drops its cache on ``setting_changed``).
    """

    @property
    def raw_queues(self) -> Any:
        """``RQ_QUEUES`` as written (None when missing), for the system checks."""
        return getattr(settings, "RQ_QUEUES", None)

    @property
    def raw_options(self) -> Any:
        """``DJANGO_JOBS`` as written (``{}`` when missing), for the system checks."""
        return getattr(settings, "DJANGO_JOBS", {})

    @property
    def queues(self) -> dict[str, dict[str, Any]]:
        value = self.raw_queues
        return value if isinstance(value, dict) else {}

    @property
    def user_options(self) -> dict[str, Any]:
        value = self.raw_options
        return value if isinstance(value, dict) else {}

    def _get(self, key: str) -> Any:
        return self.user_options.get(key, DEFAULTS[key])

    @property
    def serializer(self) -> Any:
        return self._get("SERIALIZER")

    @property
    def default_queue(self) -> str:
        return str(self._get("DEFAULT_QUEUE"))

    @property
    def autodiscover(self) -> tuple[str, ...]:
        value = self._get("AUTODISCOVER")
        if isinstance(value, str):
            return (value,)
        return tuple(value or ())

    @property
    def allowed_functions(self) -> tuple[str, ...]:
        """``ALLOWED_FUNCTIONS`` as exact names and prefixes (ending with "."); "*" for any."""
        value = self._get("ALLOWED_FUNCTIONS")
        entries = (value,) if isinstance(value, str) else tuple(value or ())
        return tuple(
            entry[:-1] if entry.endswith(".*") else entry for entry in entries if isinstance(entry, str)
        )

    @property
    def worker_class(self) -> str:
        return str(self._get("WORKER_CLASS"))

    @property
    def wait_poll_interval(self) -> float:
        return float(self._get("WAIT_POLL_INTERVAL"))

    @property
    def redact(self) -> frozenset[str]:
        value = self._get("REDACT")
        return frozenset([value] if isinstance(value, str) else (value or ()))

    @property
    def progress_interval(self) -> float:
        return float(self._get("PROGRESS_INTERVAL"))

    @property
    def pause_check_interval(self) -> float:
        return float(self._get("PAUSE_CHECK_INTERVAL"))

    @property
    def retention(self) -> dict[str, timedelta | None]:
        """How long rows of each final status are kept (None: forever), defaults filled in.

        Raises ``ImproperlyConfigured`` for a malformed value (check ``django_jobs.E008``).
        """
        return parse_retention(self._get("RETENTION"))

    @property
    def schedule(self) -> dict[str, dict[str, Any]]:
        value = self._get("SCHEDULE")
        return value if isinstance(value, dict) else {}

    @property
    def reconcile_interval(self) -> float:
        return float(self._get("RECONCILE_INTERVAL"))

    @property
    def max_payload_bytes(self) -> int | None:
        value = self._get("MAX_PAYLOAD_BYTES")
        return None if value is None else int(value)

    @property
    def push(self) -> str:
        return str(self._get("PUSH"))

    @property
    def orphan_grace(self) -> float:
        return float(self._get("ORPHAN_GRACE"))

    @property
    def synchronous_start(self) -> bool:
        return bool(self._get("SYNCHRONOUS_START"))

    @property
    def installed_apps(self) -> list[str]:
        return list(settings.INSTALLED_APPS)

    @property
    def settings_module(self) -> str:
        """The settings module, for child processes (``rqworker --pool``)."""
        return str(settings.SETTINGS_MODULE)


conf = JobsSettings()
