"""``pip install .`` ships everything a project needs: migrations, commands, typing marker."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import zipfile
from importlib.metadata import requires
from pathlib import Path

import pytest
import redis.utils

from tests.processes import ROOT, run_manage

pytestmark = pytest.mark.slow  # pip wheel, and manage.py in a subprocess


def test_wheel_contains_migrations_commands_and_py_typed(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "--wheel-dir",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("django_jobs-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in (
        "django_jobs/py.typed",
        "django_jobs/migrations/0001_initial.py",
        "django_jobs/management/commands/rqworker.py",
        "django_jobs/models.py",
    ):
        assert expected in names
    assert not any(name.startswith(("tests/", "example_project/")) for name in names)
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    for requirement in ("Django>=5.2", "rq<4,>=3.0", "django-rq>=4.2", "redis>=5"):
        assert f"Requires-Dist: {requirement}" in text, text


def test_hiredis_is_a_dependency_on_cpython_and_the_suite_runs_the_parser_it_was_asked_for() -> None:
    """django_jobs depends on hiredis (redis-py's C parser) on CPython; the suite runs once with it
    and once with redis-py's own parser (DJANGO_JOBS_TEST_REDIS_PARSER=python, tests/no_hiredis
    first on PYTHONPATH): each run checks it has the parser it says, here and in a subprocess."""
    declared = [r for r in requires("django-jobs") or () if r.startswith("hiredis")]
    assert declared == ['hiredis>=3.2; platform_python_implementation == "CPython"']
    wanted = os.environ.get("DJANGO_JOBS_TEST_REDIS_PARSER", "hiredis")
    assert wanted in ("hiredis", "python"), wanted
    expected = wanted == "hiredis" and platform.python_implementation() == "CPython"
    assert redis.utils.HIREDIS_AVAILABLE is expected
    # The suite's subprocesses (workers, schedulers) are started as this one is.
    child = run_manage("shell", "-c", "import redis.utils; print(redis.utils.HIREDIS_AVAILABLE)")
    assert child.returncode == 0, child.stderr
    assert child.stdout.splitlines()[-1] == str(expected)
