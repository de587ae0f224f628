"""Unique jobs: a second ``.delay()`` of the same call returns the job already waiting or running.

Uniqueness lives in the database, next to the outbox: each unique job's row
carries a ``unique_key``, and a conditional unique constraint allows one row
per key among the jobs that are not final (``scheduled``, ``queued``,
``deferred``, ``started``). So a rollback releases the key with the row,
the job's end releases it with its final status, and two concurrent
``.delay()`` calls cannot both insert: the loser finds the winner's row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.db import IntegrityError, transaction

from . import records
from .payload import to_jsonable

if TYPE_CHECKING:
    from .decorators import JobFunction

#: Longest key the column holds; longer keys are stored as their SHA-256.
MAX_KEY_LENGTH = 255


def check_options(label: str, unique: Any, unique_key: Any, unique_for: Any) -> None:
    """Validate ``@job(unique=…, unique_key=…, unique_for=…)``; raise with what to write instead."""
    if not isinstance(unique, bool):
        raise TypeError(f"@job(unique=…) on {label} is True or False, not {unique!r}.")
    if unique_key is not None and not callable(unique_key):
        raise TypeError(
            f"@job(unique_key=…) on {label} takes a function of the job's arguments that returns a str, "
            f"for example unique_key=lambda user_id, **kwargs: str(user_id); not {unique_key!r}."
        )
    if unique_for is not None:
        if isinstance(unique_for, bool) or not isinstance(unique_for, int | float) or not unique_for > 0:
            raise ValueError(
                f"@job(unique_for=…) on {label} takes seconds > 0 (for example unique_for=3600), "
                f"not {unique_for!r}."
            )
        if not unique and unique_key is None:
            raise ValueError(
                f"@job(unique_for=…) on {label} only applies to unique jobs: add unique=True "
                "(or unique_key=…)."
            )


def key_for(function: JobFunction[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The call's unique key: the function's name and its ``unique_key``, or a hash of the arguments.

    With ``unique=True`` the arguments are bound to the signature first, with
    their defaults, so ``f(1, 2)``, ``f(1, b=2)`` and ``f(a=1, b=2)`` are the
    same call. Returns None for a function that is not unique.
    """
    if function.unique_key is not None:
        part = function.unique_key(*args, **kwargs)
        if not isinstance(part, str) or not part:
            raise TypeError(
                f"{function.name}(): its unique_key function returned {part!r}; it must return a "
                "non-empty str that is the same for calls that count as the same job."
            )
    elif function.unique:
        bound = function.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        canonical = json.dumps(
            to_jsonable(dict(bound.arguments)), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        part = hashlib.sha256(canonical.encode()).hexdigest()
    else:
        return None
    key = f"{function.name}:{part}"
    if len(key) > MAX_KEY_LENGTH:
        key = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    return key


def create_or_find(create: Callable[[], Any], key: str, unique_for: float | None, using: str) -> str | None:
    """Insert the row with ``create()`` unless a live job holds ``key``; return that job's id if one does.

    A holder that started (or, if it never started, was enqueued) more than
    ``unique_for`` seconds ago no longer counts: its key is cleared and the
    new row is inserted. The insert runs in a savepoint, so that losing a
    race to a concurrent enqueue (``IntegrityError``) leaves the caller's
    transaction usable; the winner is then looked up and returned.
    """
    error: IntegrityError | None = None
    for _attempt in range(3):
        holder = records.unique_holder(key, unique_for, using)
        if holder is not None:
            return holder
        try:
            with transaction.atomic(using=using):
                create()
        except IntegrityError as exc:  # a concurrent enqueue won, or the job id is taken
            error = exc
            continue
        return None
    assert error is not None
    raise error
