"""``pip install .`` ships everything a project needs: migrations, commands, typing marker."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import ROOT


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
