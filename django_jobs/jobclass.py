"""``JobsJob``: the RQ job class of django_jobs' queues.

It explains a function that no longer imports, checks the arguments against the
function's signature before the call, and insists on a JSON result with the
JSON serializer. :func:`django_jobs.queues.get_queue` gives it to every queue,
so workers, the admin and recovery all read jobs through it.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from rq import Retry
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from .exceptions import JobArgumentsError, JobExited, JobFunctionImportError, JobFunctionNotAllowed
from .payload import check_result
from .registry import is_allowed, registry

security_log = logging.getLogger("django_jobs.security")

#: RQ's callbacks a job may name; RQ imports and calls each, so each must be allowed too.
_CALLBACKS = ("_success_callback_name", "_failure_callback_name", "_stopped_callback_name")

#: The registries :class:`JobsJob` hands out, by registry class, queue, serializer and job class.
_registries: dict[tuple[type[Any], str, int, type[Any]], Any] = {}


def _kept_registry(registry_class: type[Any]) -> Any:
    """A property that gives a job its queue's ``registry_class``, built once and kept.

    RQ's ``Job`` builds a new registry object at every access (several per job in a worker),
    and each build checks the serializer against a ``typing.Protocol``, which is slow before
    Python 3.12. A registry holds only its queue's name and key, its Redis client, serializer
    and job class: one is kept per queue and reused while the job's client is the same.
    """

    def registry(job: Job) -> Any:
        key = (registry_class, job.origin, id(job.serializer), type(job))
        kept = _registries.get(key)
        if kept is None or kept.connection is not job.connection or kept.serializer is not job.serializer:
            kept = _registries[key] = registry_class(
                job.origin, connection=job.connection, job_class=type(job), serializer=job.serializer
            )
        return kept

    return property(registry, doc=f"The job's queue's {registry_class.__name__} (kept, see _kept_registry).")


class JobsJob(Job):
    """An RQ job that runs only registered functions, explains an unimportable one and insists
    on a JSON result."""

    started_job_registry = _kept_registry(StartedJobRegistry)
    finished_job_registry = _kept_registry(FinishedJobRegistry)
    failed_job_registry = _kept_registry(FailedJobRegistry)

    def refusal(self) -> JobFunctionNotAllowed | None:
        """Why this job must not run (its function, or a callback of RQ's it names, is neither
        registered nor allowed: :func:`~django_jobs.registry.is_allowed`), or None. Reads names
        only, never imports."""
        try:
            name, instance = self.func_name or "", self.instance
        except Exception:  # an unreadable payload: reading the function says why, importing nothing
            return None
        if instance is not None or not is_allowed(name):
            return JobFunctionNotAllowed(name)
        for attribute in _CALLBACKS:
            callback = getattr(self, attribute, None)
            if callback and not is_allowed(str(callback)):
                return JobFunctionNotAllowed(str(callback), f"callback ({attribute[1:-5]}) of {name}")
        return None

    @property
    def func(self) -> Any:
        refused = self.refusal()
        if refused is not None:
            security_log.error(
                "Refused job %s on queue %s: %s", self.id, self.origin, refused, extra={"job_id": self.id}
            )
            raise refused
        registered = registry.get(self.func_name or "")
        if registered is not None:
            return registered  # what importing its module gives, without the lookup
        try:
            return super().func
        except Exception as exc:
            raise JobFunctionImportError(self.func_name or "", exc) from exc

    def _execute(self) -> Any:
        func = self.func
        signature = getattr(func, "signature", None)
        if signature is None:
            try:
                signature = inspect.signature(func)
            except (TypeError, ValueError):  # some builtins have no signature
                signature = None
        if signature is not None:
            try:
                signature.bind(*self.args, **self.kwargs)
            except TypeError as exc:
                raise JobArgumentsError(self.func_name or "", _bare(signature), exc) from None
        try:
            result = super()._execute()
        except SystemExit as exc:
            # Raised inside the job: RQ would record it, but the message should say what happened.
            raise JobExited(exc.code) from exc
        if self.serializer is JSONSerializer and not isinstance(result, Retry):
            check_result(f"Job {self.func_name}()", result)
        return result


def _bare(signature: inspect.Signature) -> inspect.Signature:
    """The signature without annotations: ``(a, b=1)`` reads better in an error than ``(a: 'int', …)``."""
    empty = inspect.Parameter.empty
    parameters = [parameter.replace(annotation=empty) for parameter in signature.parameters.values()]
    return signature.replace(parameters=parameters, return_annotation=empty)
