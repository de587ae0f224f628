"""On PostgreSQL, the batch worker's end of one job and start of the next, outside a transaction,
go as one libpq pipeline: one round trip, one transaction, prepared statements where the
database's OPTIONS allow them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import DatabaseError, connection
from django.utils import timezone
from rq import Queue
from rq.job import Job

from django_jobs import records
from django_jobs.db import statements
from django_jobs.models import JobRecord
from django_jobs.queues import get_connection, resolve_serializer
from tests.test_prepared import database_options, finish_text, prepared, row, text
from tests.testapp.jobs import add

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="libpq pipelines are PostgreSQL's"),
]


def rq_job(job_id: str) -> Job:
    return Job.fetch(job_id, connection=get_connection("default"), serializer=resolve_serializer())


def transaction_of(job_id: str) -> str:
    """The id of the transaction that last wrote the job's row (its ``xmin``)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT xmin::text FROM {JobRecord._meta.db_table} WHERE id = %s", [job_id])
        return str(cursor.fetchone()[0])


def pair_start_text() -> str:
    # The start sent with an end is not a transaction of its own: it keeps the ordinary commit.
    return text(statements.start_statement("any", "w", timezone.now(), alone=False))


def end_then_start(first: str, second: str, worker: str = "w-pair") -> None:
    records.mark_finished_then_started((first, 3, timezone.now()), rq_job(second), worker, timezone.now())


@pytest.fixture(params=[None, 5], ids=["not-prepared", "prepared"])
def threshold(request: pytest.FixtureRequest) -> Iterator[int | None]:
    with database_options(prepare_threshold=request.param):
        yield request.param


def test_the_end_and_the_next_start_commit_in_one_transaction(
    threshold: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = add.delay(1, 2), add.delay(3, 4)
    assert records.mark_started_by_id(first.id, "w-pair")
    before = transaction_of(first.id)
    answers: list[list[int] | None] = []
    run_together = records.run_together

    def seen(*args: Any) -> list[int] | None:
        answers.append(run_together(*args))
        return answers[-1]

    monkeypatch.setattr(records, "run_together", seen)

    end_then_start(first.id, second.id)

    from psycopg.pq import PipelineStatus  # PostgreSQL's driver: not installed for SQLite

    assert answers == [[1, 1]]  # sent as a pipeline (not as the two-statement query)
    assert connection.connection.pgconn.pipeline_status == PipelineStatus.OFF
    assert transaction_of(first.id) == transaction_of(second.id) != before
    assert row(first.id) == ("finished", 1, "w-pair")
    assert JobRecord.objects.get(pk=first.id).result == 3
    assert row(second.id) == ("started", 1, "w-pair")


def test_prepared_the_pair_is_prepared_once_then_only_executed(threshold: int | None) -> None:
    first, second, third = add.delay(1, 2), add.delay(3, 4), add.delay(5, 6)
    records.mark_started_by_id(first.id, "w-pair")
    end_then_start(first.id, second.id)
    end_then_start(second.id, third.id)
    runs = prepared()
    if threshold is None:
        assert not any(statement.startswith("UPDATE") for statement in runs)
    else:
        assert runs[finish_text()] == 2
        assert runs[pair_start_text()] == 2
    assert row(second.id) == ("finished", 1, "w-pair")
    assert row(third.id) == ("started", 1, "w-pair")


def test_a_pair_deallocated_under_the_connection_is_prepared_again() -> None:
    with database_options(prepare_threshold=5):
        first, second, third = add.delay(1, 2), add.delay(3, 4), add.delay(5, 6)
        records.mark_started_by_id(first.id, "w-pair")
        end_then_start(first.id, second.id)
        with connection.cursor() as cursor:
            cursor.execute("DEALLOCATE ALL")
        end_then_start(second.id, third.id)  # fails as prepared, then runs
        assert prepared() == {finish_text(): 1, pair_start_text(): 1}
        assert transaction_of(second.id) == transaction_of(third.id)
        assert row(second.id) == ("finished", 1, "w-pair")
        assert row(third.id) == ("started", 1, "w-pair")


def test_when_the_start_fails_the_end_is_not_written_either_and_the_connection_works_on(
    threshold: int | None,
) -> None:
    first, second = add.delay(1, 2), add.delay(3, 4)
    records.mark_started_by_id(first.id, "w-pair")
    with connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = '50ms'")
    # Another session holds the next job's row: the start cannot take it.
    import psycopg

    params = connection.get_connection_params()
    libpq = {key: params[key] for key in ("dbname", "user", "password", "host", "port") if params.get(key)}
    with psycopg.connect(**libpq) as other:
        other.execute(f"SELECT 1 FROM {JobRecord._meta.db_table} WHERE id = %s FOR UPDATE", [second.id])
        with pytest.raises(DatabaseError, match="lock"):
            end_then_start(first.id, second.id)
    # One transaction: the end went with the start. The connection is usable as it is.
    assert row(first.id) == ("started", 1, "w-pair")
    assert row(second.id) == ("queued", 0, "")
    end_then_start(first.id, second.id)
    assert transaction_of(first.id) == transaction_of(second.id)
    assert row(first.id) == ("finished", 1, "w-pair")


def test_a_next_job_without_a_row_gets_one(threshold: int | None) -> None:
    first = add.delay(1, 2)
    records.mark_started_by_id(first.id, "w-pair")
    queue = Queue("default", connection=get_connection("default"), serializer=resolve_serializer())
    plain = queue.enqueue("tests.testapp.jobs.add", 5, 6)  # plain RQ: no row
    end_then_start(first.id, plain.id)
    assert row(first.id) == ("finished", 1, "w-pair")
    assert row(plain.id) == ("started", 1, "w-pair")


def test_inside_a_transaction_the_pair_goes_through_django(threshold: int | None) -> None:
    from django.db import transaction

    first, second = add.delay(1, 2), add.delay(3, 4)
    records.mark_started_by_id(first.id, "w-pair")
    with transaction.atomic():
        end_then_start(first.id, second.id)
    assert not {finish_text(), pair_start_text()} & set(prepared())
    assert transaction_of(first.id) == transaction_of(second.id)
    assert row(second.id) == ("started", 1, "w-pair")


def test_a_pair_whose_commit_fails_writes_neither_and_the_connection_works_on(
    threshold: int | None,
) -> None:
    # A deferred constraint trigger fails at the commit, at the pipeline's Sync, after both
    # statements ran: the failure of the commit itself.
    table = JobRecord._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION django_jobs_test_refuse() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'refused at commit'; END $$"
        )
        cursor.execute(
            f"CREATE CONSTRAINT TRIGGER django_jobs_test_refuse AFTER UPDATE ON {table}"
            " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.worker_name = 'w-refused')"
            " EXECUTE FUNCTION django_jobs_test_refuse()"
        )
    try:
        first, second = add.delay(1, 2), add.delay(3, 4)
        records.mark_started_by_id(first.id, "w-pair")
        with pytest.raises(DatabaseError, match="refused at commit"):
            end_then_start(first.id, second.id, worker="w-refused")
        assert row(first.id) == ("started", 1, "w-pair")
        assert row(second.id) == ("queued", 0, "")
        end_then_start(first.id, second.id)
        assert row(first.id) == ("finished", 1, "w-pair")
        assert row(second.id) == ("started", 1, "w-pair")
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TRIGGER IF EXISTS django_jobs_test_refuse ON {table}")
            cursor.execute("DROP FUNCTION IF EXISTS django_jobs_test_refuse()")
