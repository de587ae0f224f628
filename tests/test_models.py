"""``JobRecord``: fields, indexes and migrations."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection

from django_jobs.models import JobRecord, JobStatus


def test_status_vocabulary_is_rqs() -> None:
    assert set(JobStatus.values) == {
        "queued", "scheduled", "deferred", "started", "finished", "failed", "canceled", "stopped",
    }  # fmt: skip


def test_required_fields_exist_under_their_names() -> None:
    names = {field.name for field in JobRecord._meta.get_fields()}
    assert {
        "id", "func_name", "queue", "status", "args", "kwargs", "result", "error", "attempts",
        "enqueued_at", "started_at", "ended_at", "worker_name", "meta",
    } <= names  # fmt: skip
    assert JobRecord._meta.pk.name == "id"
    assert JobRecord._meta.ordering == ["-enqueued_at"]


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
