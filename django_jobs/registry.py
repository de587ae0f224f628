"""Every function decorated with ``@job``, by dotted path.

Filled as modules with ``@job`` functions are imported (``AUTODISCOVER`` imports
each app's ``jobs`` and ``tasks`` modules at startup). The admin, the scheduler
and redaction look functions up here by the name a row keeps, and a worker runs
only what is here or in ``DJANGO_JOBS["ALLOWED_FUNCTIONS"]`` (:func:`is_allowed`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .conf import conf

if TYPE_CHECKING:
    from .decorators import JobFunction

registry: dict[str, JobFunction[Any, Any]] = {}


def is_allowed(func_name: str) -> bool:
    """Whether a worker may run the function named ``func_name``: it is registered (``@job``), or
    ``DJANGO_JOBS["ALLOWED_FUNCTIONS"]`` names it or a module prefix of it (or is "*").

    Decided from the name alone, so that a refused function's module is never imported."""
    if func_name in registry:
        return True
    for entry in conf.allowed_functions:
        if entry in ("*", func_name) or (entry.endswith(".") and func_name.startswith(entry)):
            return True
    return False
