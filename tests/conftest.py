"""Test session set-up: a real Redis (throwaway unless REDIS_URL is given), flushed per test."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test.utils import override_settings

from django_jobs import queues
from django_jobs.testing import RedisServer

ROOT = Path(__file__).resolve().parent.parent


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


def child_pythonpath() -> str:
    """``PYTHONPATH`` for a subprocess of the suite: the repository, then what this run was
    given (``tests/no_hiredis`` in the run without hiredis)."""
    inherited = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join([str(ROOT), *([inherited] if inherited else [])])


def wait_for(predicate: Any, timeout: float = 60.0) -> Any:
    """Poll until ``predicate()`` is truthy (a generous bound, not a speed assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout} s")


def terminate(process: subprocess.Popen[Any], timeout: float = 30) -> None:
    """SIGTERM a child process (a warm stop); kill it if it has not ended after ``timeout`` s."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_manage(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``manage.py`` against the test database and Redis, as a separate process."""
    full_env = dict(os.environ)
    full_env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    full_env["DJANGO_JOBS_TEST_DB_NAME"] = str(connection.settings_dict["NAME"])
    full_env["PYTHONPATH"] = child_pythonpath()
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def manage() -> Any:
    return run_manage
