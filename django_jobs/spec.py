"""``JobSpec``: a job to push, as one value.

The front door builds one from a call (``enqueue``); every re-push builds one
from the job's row (a retry, the scheduler's promotion of a due job, recovery,
the admin's requeue). :func:`django_jobs.push.push` takes it, and so does the
background pusher.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What Redis needs to run a job whose row exists (or is being written), and where the row is.

    ``options`` are the row's enqueue options (``timeout``, ``result_ttl``, ``ttl``,
    ``failure_ttl``, ``description``, ``depends_on``, ``at_front``, the retry policy and the
    limits), as :attr:`JobRecord.options <django_jobs.models.JobRecord.options>` keeps them.
    """

    id: str
    func_name: str
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    using: str

    @classmethod
    def from_row(cls, row: Mapping[str, Any], using: str) -> JobSpec:
        """The spec of a row read with ``.values("pk", "func_name", "queue", "args", "kwargs",
        "options")`` (or a mapping with ``id`` for ``pk``)."""
        return cls(
            id=str(row["pk"] if "pk" in row else row["id"]),
            func_name=row["func_name"],
            queue=row["queue"],
            args=list(row["args"] or []),
            kwargs=dict(row["kwargs"] or {}),
            options=dict(row["options"] or {}),
            using=using,
        )

    @classmethod
    def from_record(cls, record: Any, using: str) -> JobSpec:
        """The spec of a :class:`~django_jobs.models.JobRecord`."""
        return cls.from_row(
            {
                field: getattr(record, field)
                for field in ("id", "func_name", "queue", "args", "kwargs", "options")
            },
            using,
        )

    def with_options(self, options: dict[str, Any]) -> JobSpec:
        """The same job with other options (e.g. only the dependencies still open)."""
        return replace(self, options=options)

    @property
    def at_front(self) -> bool:
        return bool(self.options.get("at_front"))

    @property
    def depends_on(self) -> list[str]:
        return list(self.options.get("depends_on") or [])
