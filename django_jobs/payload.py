"""What a job's arguments, results and metadata may hold, with errors that say what to do.

Everything a job carries is JSON, kept in Redis and in the database. A value is
refused at the door (``.delay()``, ``.map()``, ``apply_async``, a job's return
value, ``set_progress()``) when it is not JSON, or when a database could not store
it faithfully (:data:`RULES`): text with the character NUL or a lone surrogate,
nesting deeper than :data:`MAX_DEPTH` levels, an integer of more than
:data:`MAX_INT_DIGITS` digits, a float that is NaN or infinite. The same rules
hold on every database, so a job that enqueues on SQLite enqueues on PostgreSQL.

What django_jobs writes itself from values it did not check (an exception's
text, a pickled result's ``repr``, the arguments of a job enqueued with plain
RQ) goes through :func:`storable` / :func:`storable_text` instead, which escape
what a database would refuse rather than refuse it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from typing import Any, NamedTuple

from .conf import conf

#: The deepest nesting of lists and dicts a job's arguments, result or metadata may have.
MAX_DEPTH = 100
#: The most digits an integer may have: CPython turns no longer one into text (JSON) by default.
MAX_INT_DIGITS = 4300
_INT_BOUND = 10**MAX_INT_DIGITS

TYPE, NUL, SURROGATE, DEPTH, BIG_INT, NOT_FINITE, KEY = (
    "type",
    "nul",
    "surrogate",
    "depth",
    "big int",
    "not finite",
    "key",
)

#: Why each kind of value is refused, and what to pass instead.
RULES: dict[str, str] = {
    NUL: (
        "holds the character NUL (\\x00), which the database cannot store (PostgreSQL refuses it in "
        "JSON and text columns). Remove it, or pass binary data as base64 text"
    ),
    SURROGATE: (
        "holds a lone surrogate (a character between \\ud800 and \\udfff), which is not valid Unicode "
        "and cannot be written as UTF-8. Decode bytes with errors='replace' (or pass them as base64 text)"
    ),
    DEPTH: (
        f"is nested more than {MAX_DEPTH} levels deep (the limit for what a job carries). Flatten it, "
        "or store it elsewhere and pass its key"
    ),
    BIG_INT: (
        f"is an integer of more than {MAX_INT_DIGITS:,} digits, beyond what JSON carries here. Pass it "
        "as a string"
    ),
    NOT_FINITE: "is a float that is NaN or infinite, which JSON cannot carry. Pass None or a string instead",
}


class Problem(NamedTuple):
    """Where the first value that breaks a rule is, the value, and which rule (a key of :data:`RULES`,
    ``TYPE`` for a value that is not JSON, ``KEY`` for a dict key that is not a str)."""

    path: str
    value: Any
    kind: str


def _text_problem(text: str, path: str) -> Problem | None:
    if "\x00" in text:
        return Problem(path, text, NUL)
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            return Problem(path, text, SURROGATE)
    return None


def find_problem(value: Any, path: str, *, json_only: bool = True, depth: int = 0) -> Problem | None:
    """The first value inside ``value`` that breaks a rule, or None.

    With ``json_only=False`` (pickled payloads) a value of another type is let through as it
    is, unvisited; the text, nesting and number rules still hold for what is JSON.
    """
    if isinstance(value, str):
        return _text_problem(value, path)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return None if -_INT_BOUND < value < _INT_BOUND else Problem(path, value, BIG_INT)
    if isinstance(value, float):
        return None if math.isfinite(value) else Problem(path, value, NOT_FINITE)
    if isinstance(value, list | tuple | dict):
        if depth >= MAX_DEPTH:
            return Problem(path, value, DEPTH)
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    if json_only:
                        return Problem(f"{path} key {_shown(key)}", key, KEY)
                    continue
                found = _text_problem(key, f"{path} key {key!r}") or find_problem(
                    item, f"{path}[{key!r}]", json_only=json_only, depth=depth + 1
                )
                if found is not None:
                    return found
            return None
        for index, item in enumerate(value):
            found = find_problem(item, f"{path}[{index}]", json_only=json_only, depth=depth + 1)
            if found is not None:
                return found
        return None
    return Problem(path, value, TYPE) if json_only else None


def _shown(value: Any) -> str:
    """``repr(value)``, or what it is when it has none: an int of more than 4,300 digits (or a
    tuple holding one) cannot be turned into text, and a ``__repr__`` may fail."""
    try:
        return repr(value)
    except Exception:
        return f"<a {_type_label(value)}>"


def _type_label(value: Any) -> str:
    cls = type(value)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _type_hint(bad: Any) -> str:
    if hasattr(bad, "pk"):
        return "pass its primary key instead (for example obj.pk) and load the object inside the job"
    return (
        "pass a JSON value instead (str, int, float, bool, None, list, dict with str keys): "
        "for a model instance its primary key, for a date its ISO string"
    )


def argument_error(label: str, problem: Problem) -> TypeError | ValueError:
    """The error for an argument (or a keyword name) that breaks a rule: ``TypeError`` for a value
    that is not JSON, ``ValueError`` for one a database could not store."""
    where, bad, kind = problem
    if kind == KEY:
        return TypeError(
            f"{label}: argument {where!r} is a dict key of type {_type_label(bad)}; JSON keys are "
            "str, and any other key would come back as a str. Use str keys."
        )
    if kind == TYPE:
        return TypeError(
            f"{label}: argument {where!r} is a {_type_label(bad)}, which is not JSON serializable. "
            f"Job arguments are stored as JSON in Redis and in the database; {_type_hint(bad)}."
        )
    return ValueError(f"{label}: argument {where!r} {RULES[kind]}.")


def check_arguments(
    label: str, arguments: dict[str, Any], *, json_only: bool = True, gathering: Collection[str] = ()
) -> None:
    """Raise ``TypeError``/``ValueError`` when an argument breaks a rule.

    ``arguments`` maps each parameter name to the value passed for it, so the
    message can name it (``value['when'][0]``); ``label`` names the job function.
    ``gathering`` names the parameters that gather arguments (``*args``, ``**kwargs``):
    each value they hold is an argument of its own, held to the rules as if a
    parameter of its own took it (the tuple or dict around them is no level).
    """
    for name, value in arguments.items():
        depth = -1 if name in gathering else 0
        problem = find_problem(value, name, json_only=json_only, depth=depth)
        if problem is not None:
            raise argument_error(label, problem)


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
    """Raise ``TypeError``/``ValueError`` when a job's return value breaks a rule."""
    problem = find_problem(value, "return value")
    if problem is None:
        return
    where, bad, kind = problem
    if kind in (TYPE, KEY):
        raise TypeError(
            f"{label} returned a value that is not JSON serializable: {where} is a {_type_label(bad)}. "
            "Results are stored as JSON; return a JSON value instead (for example a primary key, "
            "a dict of str keys, or an ISO date string)."
        )
    raise ValueError(f"{label} returned a value that cannot be stored: {where} {RULES[kind]}.")


def check_value(label: str, name: str, value: Any) -> None:
    """Raise ``TypeError``/``ValueError`` when ``value`` (named ``name`` in the message) breaks a rule:
    for what a job keeps beside its result, such as a progress message."""
    problem = find_problem(value, name)
    if problem is not None:
        raise argument_error(label, problem)


def dumps(value: Any) -> str:
    """Serialize a value already checked by :func:`check_arguments` or :func:`check_result`."""
    return json.dumps(value, separators=(",", ":"))


def storable_text(text: str) -> str:
    """``text`` with what a database cannot store escaped: NUL as ``\\x00``, a lone surrogate as
    ``\\udxxx``; ``text`` itself when it holds neither."""
    if _text_problem(text, "") is None:
        return text
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def storable(value: Any, depth: int = 0) -> Any:
    """A JSON form of ``value`` that every database stores: for values nobody checked (a pickled
    result, the arguments of a job enqueued with plain RQ). Text that breaks a rule is escaped,
    other types become their ``repr``, numbers JSON cannot carry become text."""
    if isinstance(value, str):
        return storable_text(str(value))
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return (
            int(value) if -_INT_BOUND < value < _INT_BOUND else f"<an integer of {value.bit_length()} bits>"
        )
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else repr(value)
    if isinstance(value, list | tuple | dict) and depth >= MAX_DEPTH:
        return f"<{type(value).__name__} nested more than {MAX_DEPTH} levels deep>"
    if isinstance(value, list | tuple):
        return [storable(item, depth + 1) for item in value]
    if isinstance(value, dict):
        return {storable_text(str(key)): storable(item, depth + 1) for key, item in value.items()}
    try:
        text = repr(value)
    except Exception as exc:  # a broken __repr__ must not lose the row
        text = f"<{_type_label(value)}: repr() failed: {type(exc).__name__}>"
    return storable_text(text)


def to_jsonable(value: Any) -> Any:
    """The JSON form of ``value`` that the database row keeps when pickle is in use (see :func:`storable`)."""
    return storable(value)
