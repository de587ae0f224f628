"""A function no worker may run: importable, but neither decorated with ``@job`` nor allowed.

Jobs naming it are written with plain RQ (tests/faults/). Both its import and its run leave a
trace, so that a test can tell that a worker did neither: importing the module appends the
importing process's id to the file named by :data:`IMPORT_MARKER_ENV` (when set), and a run
logs itself as the fault suite's jobs do.
"""

from __future__ import annotations

import os
import time

#: The environment variable naming the file an import of this module appends to.
IMPORT_MARKER_ENV = "DJANGO_JOBS_TEST_UNREGISTERED_MARKER"

if os.environ.get(IMPORT_MARKER_ENV):
    with open(os.environ[IMPORT_MARKER_ENV], "a") as marker:
        marker.write(f"{os.getpid()}\n")


def leave_trace(log_path: str, key: str) -> str:
    """Log a run as the fault suite's jobs do ("<key> <pid> done <time>"): no worker may get here."""
    with open(log_path, "a") as log:
        log.write(f"{key} {os.getpid()} done {time.time():.3f}\n")
    return key


def touch(path: str) -> str:
    """Create the file ``path``: the trace of a run (tests/test_hardening.py)."""
    with open(path, "w") as trace:
        trace.write("ran\n")
    return path
