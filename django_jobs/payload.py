"""JSON checks for job arguments and results, with errors that say what to do."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

from .conf import conf

_SCALARS = (str, int, float, bool, type(None))


def _type_label(value: Any) -> str:
    cls = type(value)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _first_non_json(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Yield (path, value) of the first value that JSON cannot carry faithfully."""
    if isinstance(value, _SCALARS):
        if isinstance(value, float) and not math.isfinite(value):
            yield path, value
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _first_non_json(item, f"{path}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                yield f"{path} key {key!r}", key
                return
            yield from _first_non_json(item, f"{path}[{key!r}]")
        return
    yield path, value


def find_non_json(value: Any, path: str) -> tuple[str, Any] | None:
    """Return where and what the first non-JSON value inside ``value`` is, or None."""
    return next(_first_non_json(value, path), None)


def check_arguments(label: str, arguments: dict[str, Any]) -> None:
    """Raise ``TypeError`` when an argument cannot be stored as JSON.

    ``arguments`` maps each parameter name to the value passed for it, so the
    message can name it; ``label`` names the job function.
    """
    for name, value in arguments.items():
        found = find_non_json(value, name)
        if found is None:
            continue
        where, bad = found
        hint = (
            "pass its primary key instead (for example obj.pk) and load the object inside the job"
            if hasattr(bad, "pk")
            else "pass a JSON value instead (str, int, float, bool, None, list, dict with str keys): "
            "for a model instance its primary key, for a date its ISO string"
        )
        raise TypeError(
            f"{label}: argument {where!r} is a {_type_label(bad)}, which is not JSON serializable. "
            f"Job arguments are stored as JSON in Redis and in the database; {hint}."
        )


def _first_nul(value: Any, path: str) -> str | None:
    """Where the first string (or dict key) holding the character NUL is inside ``value``, or None."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _first_nul(item, f"{path}[{index}]")
            if found is not None:
                return found
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                return f"{path} key {key!r}"
            found = _first_nul(item, f"{path}[{key!r}]")
            if found is not None:
                return found
    return None


def check_storable_on_postgresql(label: str, arguments: dict[str, Any]) -> None:
    """Raise ``ValueError`` when an argument holds text PostgreSQL's JSON columns cannot store.

    ``arguments`` maps each parameter name (or ``args``/``kwargs``) to its stored value.
    """
    for name, value in arguments.items():
        where = _first_nul(value, name)
        if where is not None:
            raise ValueError(
                f"{label}: argument {where!r} holds the character NUL (\\x00), which PostgreSQL "
                "cannot store in the job's row (its arguments are a JSON column). Remove it, or pass "
                "binary data as base64 text."
            )


def check_payload_size(label: str, payload: Any) -> None:
    """Raise ``ValueError`` when the arguments exceed ``DJANGO_JOBS["MAX_PAYLOAD_BYTES"]`` as JSON."""
    limit = conf.max_payload_bytes
    if limit is None:
        return
    size = len(json.dumps(payload, separators=(",", ":"), default=str).encode())
    if size > limit:
        raise ValueError(
            f"{label}: the arguments take {size:,} bytes as JSON, more than the limit of {limit:,} "
            "(DJANGO_JOBS['MAX_PAYLOAD_BYTES']). Every queued job holds its arguments in Redis and in "
            "the database: store large data elsewhere (a file, object storage, a model row) and pass "
            "its key, path or primary key instead."
        )


def check_result(label: str, value: Any) -> None:
    """Raise ``TypeError`` when a job's return value cannot be stored as JSON."""
    found = find_non_json(value, "return value")
    if found is None:
        return
    where, bad = found
    raise TypeError(
        f"{label} returned a value that is not JSON serializable: {where} is a {_type_label(bad)}. "
        "Results are stored as JSON; return a JSON value instead (for example a primary key, "
        "a dict of str keys, or an ISO date string)."
    )


def dumps(value: Any) -> str:
    """Serialize a value already checked by :func:`check_arguments` or :func:`check_result`."""
    return json.dumps(value, separators=(",", ":"))


def to_jsonable(value: Any) -> Any:
    """Best-effort JSON form of ``value`` for the database row when pickle is in use."""
    return json.loads(json.dumps(value, default=repr))
