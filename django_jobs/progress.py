"""Progress reports from inside a running job, written to the row's ``meta``."""

from __future__ import annotations

import time
from typing import Any

from rq import get_current_job as rq_current_job

from . import records
from .conf import conf
from .payload import check_value

# Per running job: its meta as last written, and when. A worker runs one job
# at a time per process, so this stays small.
_state: dict[str, tuple[dict[str, Any], float]] = {}


def get_current_job() -> Any:
    """The RQ job running in this process (its ``.id``, ``.meta``…), or None outside a job."""
    return rq_current_job()


def get_current_job_id() -> str | None:
    """The id of the job running in this process, or None outside a job."""
    job = rq_current_job()
    return job.id if job is not None else None


def set_progress(
    done: int | float, total: int | float, message: str | None = None, *, force: bool = False
) -> bool:
    """Report progress of the current job; return whether the row was written.

    Writes ``meta["progress"] = {"done", "total", "percent", "message",
    "updated_at"}`` at most every ``DJANGO_JOBS["PROGRESS_INTERVAL"]``
    seconds (and always for the last step, or with ``force=True``), so a
    tight loop does not hammer the database. Outside a job it does nothing.
    ``done`` and ``total`` must be finite numbers and ``message`` text the
    database can store (:mod:`django_jobs.payload`'s rules), else ``TypeError``
    or ``ValueError``.
    """
    for name, value in (("done", done), ("total", total)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"set_progress(): {name} must be a number, not {type(value).__name__}.")
    if message is not None and not isinstance(message, str):
        raise TypeError(f"set_progress(): message must be a str or None, not {type(message).__name__}.")
    check_value("set_progress()", "done", done)
    check_value("set_progress()", "total", total)
    check_value("set_progress()", "message", message)
    job_id = get_current_job_id()
    if job_id is None:
        return False
    now = time.monotonic()
    meta, last = _state.get(job_id, (None, 0.0))
    finished = total and done >= total
    if meta is not None and not force and not finished and now - last < conf.progress_interval:
        return False
    if meta is None:
        record = records.load(job_id)
        meta = dict(record.meta) if record is not None else {}
    percent = round(100.0 * done / total, 1) if total else None
    meta["progress"] = {
        "done": done,
        "total": total,
        "percent": percent,
        "message": message,
        "updated_at": time.time(),
    }
    records.set_meta(job_id, meta)
    if len(_state) > 100:
        _state.clear()
    _state[job_id] = (meta, now)
    return True


def progress_of(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """The progress dict stored in a row's meta, if any."""
    value = (meta or {}).get("progress")
    return value if isinstance(value, dict) else None
