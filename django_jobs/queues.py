"""Queues and Redis connections, built from ``RQ_QUEUES``.

Connections come from django-rq's own connection code, so every key of its
``RQ_QUEUES`` format (URL, HOST/PORT/DB/PASSWORD, SSL, SENTINELS…) behaves
the same. Queues are looked up by name when a job is enqueued, never at
import time, and cached until a setting changes.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string
from django_rq.connection_utils import filter_connection_params, get_redis_connection
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer, PickleSerializer

from .conf import conf
from .jobclass import JobsJob


class UnknownQueueError(ValueError):
    """A queue name that ``RQ_QUEUES`` does not define."""

    def __init__(self, name: str, configured: list[str]) -> None:
        self.name = name
        self.configured = configured
        listed = ", ".join(configured) if configured else "(none: RQ_QUEUES is empty)"
        super().__init__(
            f"Unknown queue {name!r}. Configured queues: {listed}. "
            f"Use one of these names, or add {name!r} to RQ_QUEUES in your settings."
        )


_lock = threading.Lock()
_connections: dict[str, Redis] = {}
_queues: dict[str, Queue] = {}


def queue_names() -> list[str]:
    """Return the configured queue names, in settings order."""
    return list(conf.queues)


def resolve_serializer(value: Any = None) -> Any:
    """Return the serializer object for a ``SERIALIZER`` setting value."""
    value = conf.serializer if value is None else value
    if value in (None, "", "json"):
        return JSONSerializer
    if value == "pickle":
        return PickleSerializer
    if isinstance(value, str):
        return import_string(value)
    return value


def uses_json() -> bool:
    """Whether job payloads must be JSON (the default) rather than pickled."""
    return resolve_serializer() is JSONSerializer


def queue_config(name: str) -> dict[str, Any]:
    """Return the ``RQ_QUEUES`` entry for ``name`` or raise :class:`UnknownQueueError`."""
    queues = conf.queues
    try:
        config = queues[name]
    except (KeyError, TypeError):
        raise UnknownQueueError(str(name), list(queues)) from None
    return dict(config)


def _connection_key(config: dict[str, Any]) -> str:
    params = filter_connection_params(config)
    for extra in ("USERNAME", "SENTINEL_KWARGS", "REDIS_CLIENT_KWARGS", "UNIX_SOCKET_PATH"):
        if extra in config:
            params[extra] = config[extra]
    return json.dumps(params, sort_keys=True, default=repr)


def get_connection(name: str | None = None) -> Redis:
    """Return the Redis connection of queue ``name`` (the default queue if None).

    Queues that share connection settings share one connection pool.
    """
    config = queue_config(name or conf.default_queue)
    key = _connection_key(config)
    connection = _connections.get(key)
    if connection is None:
        with _lock:
            connection = _connections.get(key)
            if connection is None:
                connection = get_redis_connection(config)
                _connections[key] = connection
    return connection


def get_queue(name: str | None = None) -> Queue:
    """Return the RQ queue called ``name`` (the default queue if None).

    Raises :class:`UnknownQueueError`, listing the configured queues, when
    ``RQ_QUEUES`` has no such queue.
    """
    name = name or conf.default_queue
    queue = _queues.get(name)
    if queue is not None:
        return queue
    config = queue_config(name)
    queue = Queue(
        name,
        connection=get_connection(name),
        default_timeout=config.get("DEFAULT_TIMEOUT"),
        job_class=JobsJob,
        serializer=resolve_serializer(),
    )
    _queues[name] = queue
    return queue


def get_queues(names: list[str]) -> list[Queue]:
    """Return the queues for ``names`` in that order, checking every name first."""
    configured = queue_names()
    for name in names:
        if name not in configured:
            raise UnknownQueueError(name, configured)
    return [get_queue(name) for name in names]


def default_result_ttl(name: str) -> int | None:
    """Return the queue's ``DEFAULT_RESULT_TTL``, if it sets one."""
    value = queue_config(name).get("DEFAULT_RESULT_TTL")
    return None if value is None else int(value)


def reset() -> None:
    """Forget cached connections and queues (settings changed, or after a fork)."""
    with _lock:
        _connections.clear()
        _queues.clear()


@receiver(setting_changed)
def _on_setting_changed(setting: str, **kwargs: Any) -> None:
    if setting in ("RQ_QUEUES", "DJANGO_JOBS"):
        reset()
