"""Hide secret arguments in the admin and in worker logs; the stored payload stays whole."""

from __future__ import annotations

from typing import Any

from .conf import conf
from .registry import registry

MASK = "••••"


def redacted_names(func_name: str) -> frozenset[str]:
    """Argument names to hide for this job: ``DJANGO_JOBS["REDACT"]`` plus ``@job(redact=…)``."""
    function = registry.get(func_name)
    return conf.redact | (function.redact if function is not None else frozenset())


def _positional_names(func_name: str, count: int) -> list[str | None]:
    function = registry.get(func_name)
    names: list[str | None] = []
    if function is not None:
        for parameter in function.signature.parameters.values():
            if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
                names.append(parameter.name)
    return (names + [None] * count)[:count]


def redact_arguments(
    func_name: str, args: list[Any], kwargs: dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """Return copies of ``args`` and ``kwargs`` with the redacted arguments masked."""
    names = redacted_names(func_name)
    if not names:
        return list(args), dict(kwargs)
    positional = _positional_names(func_name, len(args))
    shown_args = [MASK if name in names else value for name, value in zip(positional, args, strict=True)]
    shown_kwargs = {key: MASK if key in names else value for key, value in kwargs.items()}
    return shown_args, shown_kwargs


def call_string(func_name: str, args: list[Any], kwargs: dict[str, Any]) -> str:
    """``module.func(1, password='••••')``: what RQ logs, with secrets masked."""
    shown_args, shown_kwargs = redact_arguments(func_name, args, kwargs)
    parts = [repr(value) if value != MASK else MASK for value in shown_args]
    parts += [f"{key}={MASK if value == MASK else repr(value)}" for key, value in shown_kwargs.items()]
    return f"{func_name}({', '.join(parts)})"
