"""A function no ``@job`` decorates, for the tests of what a worker refuses to run.

Importing this module leaves a trace (the file that ``DJANGO_JOBS_TEST_IMPORT_MARKER`` names,
when set), so that a test can tell that a worker refused a job without importing its module.
"""

from __future__ import annotations

import os
from pathlib import Path

_MARKER = os.environ.get("DJANGO_JOBS_TEST_IMPORT_MARKER")
if _MARKER:
    Path(_MARKER).write_text(f"imported by {os.getpid()}\n")


def touch(path: str) -> str:
    """Create the file ``path``: the trace of a run."""
    Path(path).write_text("ran\n")
    return path
