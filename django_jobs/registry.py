"""Every function decorated with ``@job``, by dotted path.

Filled as modules with ``@job`` functions are imported (``AUTODISCOVER`` imports
each app's ``jobs`` and ``tasks`` modules at startup). The admin, the scheduler
and redaction look functions up here by the name a row keeps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .decorators import JobFunction

registry: dict[str, JobFunction[Any, Any]] = {}
