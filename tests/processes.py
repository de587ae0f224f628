"""``manage.py`` in a separate process: workers, schedulers and one-off commands on the test
database and Redis, started, stopped and read the same way by every test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
MANAGE_PY = ROOT / "manage.py"


def child_pythonpath() -> str:
    """``PYTHONPATH`` for a subprocess of the suite: the repository, then what this run was
    given (``tests/no_hiredis`` in the run without hiredis)."""
    inherited = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join([str(ROOT), *([inherited] if inherited else [])])


def manage_env(
    env: Mapping[str, str] | None = None,
    *,
    options: Mapping[str, Any] | None = None,
    schedule: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The environment of a ``manage.py`` subprocess on this test's database and Redis.

    ``options`` are ``DJANGO_JOBS`` settings for it and ``schedule`` its periodic jobs
    (``DJANGO_JOBS["SCHEDULE"]``), both read by ``tests.settings``; ``env`` is added last.
    """
    full_env = dict(os.environ)
    full_env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    full_env["DJANGO_JOBS_TEST_DB_NAME"] = str(connection.settings_dict["NAME"])
    full_env["PYTHONPATH"] = child_pythonpath()
    if options is not None:
        full_env["DJANGO_JOBS_TEST_OPTIONS"] = json.dumps(options)
    if schedule is not None:
        full_env["DJANGO_JOBS_TEST_SCHEDULE"] = json.dumps(schedule)
    full_env.update(env or {})
    return full_env


def run_manage(
    *args: str,
    timeout: float = 120,
    env: Mapping[str, str] | None = None,
    base_env: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> subprocess.CompletedProcess[str]:
    """Run ``manage.py *args`` to its end and return it, its output captured.

    It runs on the test database and Redis (:func:`manage_env`), or in ``base_env`` when given
    (another project's environment); ``env`` is added to either. ``kwargs`` go to
    :func:`subprocess.run`.
    """
    full_env = manage_env() if base_env is None else dict(base_env)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, str(MANAGE_PY), *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def start_manage(
    *args: str,
    env: Mapping[str, str] | None = None,
    base_env: Mapping[str, str] | None = None,
    output: Path | None = None,
    options: Mapping[str, Any] | None = None,
    schedule: Mapping[str, Any] | None = None,
) -> subprocess.Popen[str]:
    """Start ``manage.py *args`` (``rqworker``, ``rqscheduler`` …) in the background.

    Its environment is :func:`manage_env` (with ``options`` and ``schedule``), or
    ``base_env`` when given; ``env`` is added to either. Its output (stdout and stderr)
    is appended to the file ``output``, else it goes to a pipe that :func:`stop` reads. A
    process that runs long or talks a lot needs the file: a full pipe would block it.
    Stop it with :func:`stop`.
    """
    if base_env is None:
        full_env = manage_env(options=options, schedule=schedule)
    else:
        assert options is None and schedule is None, "options and schedule go with the test's environment"
        full_env = dict(base_env)
    full_env.update(env or {})
    log = None if output is None else output.open("a")
    try:
        return subprocess.Popen(
            [sys.executable, str(MANAGE_PY), *args],
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.PIPE if log is None else log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    finally:
        if log is not None:
            log.close()  # the child writes to its own copy of the file


def stop(process: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str]:
    """Stop a child warmly (SIGTERM), or kill it if it has not ended after ``timeout`` s.

    Return its exit code and the output it wrote to its pipe ("" when its output went
    to a file, or was read already). A process that has ended already is only reaped.
    """
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        output = process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        process.kill()
        output = process.communicate()[0]
    return process.returncode, output or ""


def terminate(process: subprocess.Popen[Any], timeout: float = 30) -> None:
    """Stop a child as :func:`stop` does, for a caller that needs neither its code nor its output."""
    stop(process, timeout)


def read_pid(path: Path) -> int:
    """The pid a job wrote to ``path`` (``tests.testapp.jobs.hangs``…), once it is there."""
    return int(wait_for(lambda: path.exists() and path.read_text()))


def wait_for(predicate: Any, timeout: float = 60.0) -> Any:
    """Poll until ``predicate()`` is truthy (a generous bound, not a speed assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout} s")
