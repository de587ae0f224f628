"""Pausing a queue: workers take no new jobs from it until it is resumed."""

from __future__ import annotations

from redis import Redis

from .queues import get_connection

PAUSED_KEY = "django_jobs:paused-queues"


def pause(name: str) -> None:
    get_connection(name).sadd(PAUSED_KEY, name)


def resume(name: str) -> None:
    get_connection(name).srem(PAUSED_KEY, name)


def paused(connection: Redis) -> set[str]:
    """Names of the paused queues on this Redis."""
    return {
        member.decode() if isinstance(member, bytes) else member for member in connection.smembers(PAUSED_KEY)
    }


def is_paused(name: str) -> bool:
    return bool(get_connection(name).sismember(PAUSED_KEY, name))
