"""On PostgreSQL with a ``prepare_threshold`` in the database's OPTIONS, the job rows' writes outside
a transaction are prepared statements: prepared once per database session, then only executed.
Without one (Django's default), nothing is prepared."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.db import connection, transaction
from django.utils import timezone

from django_jobs import records
from django_jobs.db import postgres, statements
from django_jobs.models import JobRecord
from tests.testapp.jobs import add

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="prepared statements on PostgreSQL only"),
]


def prepared() -> dict[str, int]:
    """The statements django_jobs prepared in this test's session, and how often each ran."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT statement, generic_plans + custom_plans FROM pg_prepared_statements"
            " WHERE name LIKE 'django\\_jobs\\_%%'"
        )
        return {statement: runs for statement, runs in cursor.fetchall()}


def text(statement: tuple[str, list[object]]) -> str:
    """A statement of records as it is prepared (numbered placeholders)."""
    return postgres._numbered(statement[0]).decode()


def start_text(job_id: str = "any") -> str:
    return text(statements.start_statement(job_id, "w", timezone.now(), alone=True))


def finish_text() -> str:
    return text(statements.finish_statement("any", None, timezone.now()))


def row(job_id: str) -> tuple[str, int, str]:
    record = JobRecord.objects.get(pk=job_id)
    return record.status, record.attempts, record.worker_name


@contextmanager
def database_options(**options: object) -> Iterator[None]:
    """This test's connection reopened with ``options`` added to the database's OPTIONS."""
    saved = connection.settings_dict["OPTIONS"]
    connection.close()
    # A new dict: the settings' other aliases may share this one ("jobs" is a copy of "default").
    connection.settings_dict["OPTIONS"] = {**saved, **options}
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict["OPTIONS"] = saved


@pytest.fixture
def prepare_threshold() -> Iterator[None]:
    """psycopg's prepared statements turned on, as a deployment does in the database's OPTIONS."""
    with database_options(prepare_threshold=5):
        yield


def test_the_suite_runs_with_the_prepare_threshold_it_was_given() -> None:
    # CI runs the suite on PostgreSQL without, then with, DJANGO_JOBS_TEST_PREPARE_THRESHOLD.
    given = os.environ.get("DJANGO_JOBS_TEST_PREPARE_THRESHOLD")
    connection.ensure_connection()
    assert connection.connection.prepare_threshold == (int(given) if given else None)


def test_without_a_prepare_threshold_as_django_by_default_nothing_is_prepared() -> None:
    with database_options(prepare_threshold=None):
        handle = add.delay(1, 2)
        assert records.mark_started_by_id(handle.id, "w-default")
        records.mark_finished(handle.id, 3)
        assert connection.connection.prepare_threshold is None
        assert prepared() == {}
        assert row(handle.id) == ("finished", 1, "w-default")


def test_django_leaves_prepared_statements_off_unless_the_options_say_otherwise() -> None:
    options = dict(connection.settings_dict["OPTIONS"])
    options.pop("prepare_threshold", None)
    with database_options():
        connection.settings_dict["OPTIONS"] = options
        connection.ensure_connection()
        assert connection.connection.prepare_threshold is None


@pytest.mark.usefixtures("prepare_threshold")
def test_the_insert_start_and_end_are_prepared_once_per_session_then_only_executed() -> None:
    first, second = add.delay(1, 2), add.delay(3, 4)
    assert records.mark_started_by_id(first.id, "w-1")
    assert records.mark_started_by_id(second.id, "w-2")
    records.mark_finished(first.id, 3)

    runs = prepared()
    assert runs[start_text()] == 2  # one statement, prepared once, run for both jobs
    assert runs[finish_text()] == 1
    assert sum(1 for statement in runs if statement.startswith("INSERT")) == 1
    assert len(runs) == 3
    assert row(first.id) == ("finished", 1, "w-1")
    assert JobRecord.objects.get(pk=first.id).result == 3
    assert row(second.id) == ("started", 1, "w-2")


@pytest.mark.usefixtures("prepare_threshold")
def test_a_statement_deallocated_under_the_connection_is_prepared_again() -> None:
    first, second = add.delay(1, 2), add.delay(3, 4)
    assert records.mark_started_by_id(first.id, "w-1")
    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")  # what a pooler's DISCARD ALL does to the session
    assert prepared() == {}
    assert records.mark_started_by_id(second.id, "w-2")  # fails as prepared, then runs
    assert prepared() == {start_text(): 1}
    assert row(second.id) == ("started", 1, "w-2")


@pytest.mark.usefixtures("prepare_threshold")
def test_a_statement_the_session_holds_already_is_used_as_it_is() -> None:
    first, second = add.delay(1, 2), add.delay(3, 4)
    assert records.mark_started_by_id(first.id, "w-1")
    postgres._prepared_on.clear()  # this process forgot; the session still has it
    assert records.mark_started_by_id(second.id, "w-2")
    assert prepared()[start_text()] == 2
    assert row(second.id) == ("started", 1, "w-2")


@pytest.mark.usefixtures("prepare_threshold")
def test_a_write_inside_a_transaction_goes_through_django_and_is_not_prepared() -> None:
    handle = add.delay(1, 2)
    postgres._prepared_on.clear()
    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")
    with transaction.atomic():
        assert records.mark_started_by_id(handle.id, "w-atomic")
        records.mark_finished(handle.id, 3)
    assert prepared() == {}
    assert row(handle.id) == ("finished", 1, "w-atomic")
