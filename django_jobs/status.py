"""A job's status, and the one table of which status may move to which.

Every write of a row's status names one of :data:`TRANSITIONS` and takes its
``WHERE`` clause from it (:func:`status_filter`, :func:`status_sql`): a row in
a status the transition does not start from is left as it is. Adding a status
is one edit here (the enum, :data:`FINAL_STATUSES` if it is final, its
:data:`TONE`, and the transitions it takes part in) plus a migration for the
field's choices and the unique constraint.
"""

from __future__ import annotations

from typing import NamedTuple

from django.db import models
from django.utils.translation import gettext_lazy as _


class JobStatus(models.TextChoices):
    """RQ's status vocabulary, as stored on :class:`~django_jobs.models.JobRecord`."""

    SCHEDULED = "scheduled", _("scheduled")
    QUEUED = "queued", _("queued")
    DEFERRED = "deferred", _("deferred")
    STARTED = "started", _("started")
    FINISHED = "finished", _("finished")
    FAILED = "failed", _("failed")
    CANCELED = "canceled", _("canceled")
    STOPPED = "stopped", _("stopped")


#: Statuses after which a job does nothing more unless someone requeues it.
FINAL_STATUSES = frozenset({JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.STOPPED})

#: Statuses of a job that is waiting or running; a unique job's key is held in these.
ACTIVE_STATUSES = [status for status in JobStatus if status not in FINAL_STATUSES]

#: Statuses a row may be inserted with: by ``.delay()``, or by a worker that takes a job
#: that has no row yet (enqueued with plain RQ, or pushed ahead of its row).
INITIAL_STATUSES = frozenset({JobStatus.SCHEDULED, JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.STARTED})

#: How the admin shows each status (the CSS class ``dj-tone-<tone>`` of its badge).
TONE: dict[str, str] = {
    JobStatus.SCHEDULED: "waiting",
    JobStatus.QUEUED: "waiting",
    JobStatus.DEFERRED: "waiting",
    JobStatus.STARTED: "running",
    JobStatus.FINISHED: "good",
    JobStatus.FAILED: "bad",
    JobStatus.CANCELED: "ended",
    JobStatus.STOPPED: "ended",
}


class Transition(NamedTuple):
    """A kind of row write: the statuses a row may be in before it, and those it may leave."""

    sources: frozenset[JobStatus]
    targets: frozenset[JobStatus]


_ANY = frozenset(JobStatus)
_S = JobStatus

#: Every status change a row can go through, by the name of the write that makes it.
TRANSITIONS: dict[str, Transition] = {
    # A worker took the job. From any status but canceled: what runs is what the row says. A
    # canceled job that reaches a worker (canceled while Redis was away, or as the worker took
    # it) is refused, and the worker skips it. A late write of a start (kept while the database
    # was away) is told apart by the row's end time instead.
    "start": Transition(_ANY - {_S.CANCELED}, frozenset({_S.STARTED})),
    # The job returned. From any status, for the same reason (a job canceled or given up for
    # lost while it still ran says that it finished).
    "finish": Transition(_ANY, frozenset({_S.FINISHED})),
    # An attempt failed (or was stopped, timed out, or found its worker dead): the row ends
    # failed or stopped, or waits for its retry. A job canceled or finished meanwhile stays so.
    "fail": Transition(
        _ANY - {_S.CANCELED, _S.FINISHED},
        frozenset({_S.FAILED, _S.STOPPED, _S.QUEUED, _S.SCHEDULED}),
    ),
    # The scheduler found a scheduled job due and pushes it.
    "promote": Transition(frozenset({_S.SCHEDULED}), frozenset({_S.QUEUED})),
    # A dequeued job over its rate or concurrency limit waits in the database.
    "wait_for_limit": Transition(frozenset({_S.QUEUED, _S.DEFERRED}), frozenset({_S.SCHEDULED})),
    # A deferred job whose dependencies had all finished when it was pushed.
    "dependencies_met": Transition(frozenset({_S.DEFERRED}), frozenset({_S.QUEUED})),
    # Someone runs an ended job again (the admin's requeue): a new attempt of the same row.
    "requeue": Transition(frozenset({_S.FAILED, _S.STOPPED, _S.CANCELED}), frozenset({_S.QUEUED})),
    # Someone cancels a job that has not started.
    "cancel": Transition(frozenset({_S.SCHEDULED, _S.QUEUED, _S.DEFERRED}), frozenset({_S.CANCELED})),
}


def sources(transition: str) -> list[str]:
    """The statuses a row may be in for ``transition``, in the enum's order."""
    allowed = TRANSITIONS[transition].sources
    return [status.value for status in JobStatus if status in allowed]


def check_target(transition: str, status: str) -> None:
    """Raise ``ValueError`` if ``transition`` cannot leave a row in ``status``."""
    if status not in TRANSITIONS[transition].targets:
        raise ValueError(f"The {transition!r} write cannot leave a job {str(status)!r}.")


def status_filter(transition: str) -> dict[str, list[str]]:
    """The ORM filter a ``transition`` write adds to its ``pk`` filter (none where any status may)."""
    if TRANSITIONS[transition].sources == _ANY:
        return {}
    return {"status__in": sources(transition)}


def status_sql(transition: str, column: str) -> str:
    """The SQL condition a hand-built ``transition`` write adds (``""`` where any status may).

    The statuses are literals from the enum (letters only), not user input.
    """
    if TRANSITIONS[transition].sources == _ANY:
        return ""
    listed = ", ".join(f"'{status}'" for status in sources(transition))
    return f" AND {column} IN ({listed})"


def may_move(source: str, target: str) -> bool:
    """Whether some write may move a row from ``source`` to ``target``."""
    return any(source in step.sources and target in step.targets for step in TRANSITIONS.values())
