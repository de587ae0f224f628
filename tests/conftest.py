"""Test session set-up: a real Redis (throwaway unless REDIS_URL is given), flushed per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from django.test.utils import override_settings

from django_jobs import queues
from django_jobs.testing import RedisServer

# The process helpers, also importable from here as before.
from tests.processes import ROOT, child_pythonpath, run_manage, terminate, wait_for

__all__ = ["ROOT", "child_pythonpath", "run_manage", "terminate", "wait_for"]


@pytest.fixture(scope="session", autouse=True)
def redis_url() -> Iterator[str]:
    """A real Redis for the session: REDIS_URL if set, else a server started here."""
    server = None
    if os.environ.get("REDIS_URL"):
        url = os.environ["REDIS_URL"]
    else:
        server = RedisServer().start()
        url = server.url
    os.environ["REDIS_URL"] = url  # worker subprocesses read it through tests.settings
    with override_settings(
        RQ_QUEUES={
            "default": {"URL": url, "DEFAULT_TIMEOUT": 60},
            "high": {"URL": url},
            "low": {"URL": url},
            "emails": {"URL": url},
        }
    ):
        yield url
    if server is not None:
        server.stop()


@pytest.fixture(autouse=True)
def redis(redis_url: str) -> Iterator[Any]:
    """The Redis connection, emptied before and after each test."""
    connection_ = queues.get_connection("default")
    connection_.flushdb()
    yield connection_
    connection_.flushdb()


@pytest.fixture
def manage() -> Any:
    return run_manage
