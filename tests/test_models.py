"""``JobRecord``: its status vocabulary, indexes and migrations."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from rq.job import JobStatus as RQJobStatus

from django_jobs.models import JobRecord, JobStatus


def test_every_status_is_one_of_rqs() -> None:
    # The row speaks RQ's vocabulary (DESIGN.md), so a status read from RQ needs no translation.
    assert set(JobStatus.values) <= {status.value for status in RQJobStatus}


@pytest.mark.django_db
def test_indexes_serve_listing_and_pruning() -> None:
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, JobRecord._meta.db_table)
    indexed = {tuple(c["columns"]) for c in constraints.values() if c["index"] and not c["primary_key"]}
    for columns in [
        ("enqueued_at",),
        ("status", "enqueued_at"),
        ("queue", "enqueued_at"),
        ("func_name", "enqueued_at"),
        ("ended_at",),
    ]:
        assert columns in indexed, (columns, indexed)


@pytest.mark.django_db
def test_no_missing_migrations() -> None:
    out = StringIO()
    call_command("makemigrations", "django_jobs", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


@pytest.mark.django_db
def test_duration_and_finality() -> None:
    record = JobRecord(id="x", func_name="f", queue="default", status=JobStatus.QUEUED)
    assert record.duration is None and not record.is_final
    record.status = JobStatus.FAILED
    assert record.is_final
