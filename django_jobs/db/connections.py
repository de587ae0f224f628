"""Database connections around jobs and forks.

Django checks its connections around each request; a worker does it around each
job (:func:`reset_database_connections`), and a forked work-horse forgets the
connections it inherited without closing them (:func:`drop_inherited_connections`).
"""

from __future__ import annotations

import time
from typing import Any

from django.db import DatabaseError, DataError, IntegrityError, InterfaceError, connections

#: A connection kept across jobs is tested with a round trip when it sat idle this long.
IDLE_CHECK_AFTER = 1.0


_last_reset = float("-inf")


def refused_item(error: BaseException) -> bool:
    """Whether ``error``, raised by a row write, says that this write cannot be stored (what it
    holds, or a constraint: trying again cannot help) rather than that the database cannot be
    used now (unreachable, restarting, locked, a missing table: the same write may work later)."""
    if isinstance(error, DataError | IntegrityError):
        return True
    return not isinstance(error, DatabaseError | InterfaceError)


def reset_database_connections() -> None:
    """Drop database connections that are broken or past ``CONN_MAX_AGE``.

    Django does this around each request; a worker does it around each job.
    A persistent connection that sat idle for a second or more (or saw an
    error) is also checked with a round trip, so that a database restarted
    between two jobs costs a reconnect, not an error. Jobs that follow each
    other closely skip that round trip; if their connection broke all the
    same, the row writes are retried on a new one (see ``outcomes.record``).
    """
    global _last_reset
    now = time.monotonic()
    idle, _last_reset = now - _last_reset, now
    for conn in connections.all(initialized_only=True):
        check = conn.errors_occurred or idle >= IDLE_CHECK_AFTER
        conn.close_if_unusable_or_obsolete()
        if check and conn.connection is not None and not conn.is_usable():
            conn.close()


def drop_inherited_connections() -> None:
    """In a forked child: forget the parent's database connections without closing them."""
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None:
            _inherited.append(conn.connection)
            conn.connection = None


#: Connections a work-horse inherited from its worker: kept referenced, never closed.
_inherited: list[Any] = []
