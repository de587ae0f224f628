"""``.map()``: many jobs at once, with one bulk insert and one push on commit."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext, override_settings
from rq.job import Job

from django_jobs import JobHandle, UnknownQueueError, get_queue
from django_jobs.models import JobRecord
from tests.ports import closed_port
from tests.processes import run_manage
from tests.testapp.jobs import add, charge, echo, explode

pytestmark = pytest.mark.django_db(transaction=True)


def queued_ids(name: str = "default") -> list[str]:
    return list(get_queue(name).get_job_ids())


def test_map_writes_a_row_per_item_and_queues_them_in_order() -> None:
    handles = add.map([(1, 2), (3, 4), {"a": 5, "b": 6}])
    assert all(isinstance(handle, JobHandle) for handle in handles)
    assert len({handle.id for handle in handles}) == 3
    rows = {row.pk: row for row in JobRecord.objects.all()}
    assert [(rows[h.id].args, rows[h.id].kwargs) for h in handles] == [
        ([1, 2], {}),
        ([3, 4], {}),
        ([], {"a": 5, "b": 6}),
    ]
    assert {(row.func_name, row.queue, row.status, row.needs_push) for row in rows.values()} == {
        ("tests.testapp.jobs.add", "default", "queued", False)
    }
    assert queued_ids() == [handle.id for handle in handles]
    queue = get_queue()
    job = Job.fetch(handles[2].id, connection=queue.connection, serializer=queue.serializer)
    assert (job.func_name, job.args, job.kwargs) == ("tests.testapp.jobs.add", [], {"a": 5, "b": 6})


def test_map_inserts_the_rows_with_one_statement() -> None:
    with CaptureQueriesContext(connection) as queries:
        handles = add.map((index, index) for index in range(20))
    statements = [query["sql"] for query in queries if query["sql"] not in ("BEGIN", "COMMIT")]
    assert len(statements) == 1  # no read, no update: one INSERT of 20 rows
    assert statements[0].upper().startswith("INSERT")
    assert JobRecord.objects.filter(pk__in=[h.id for h in handles]).count() == 20


def test_many_rows_go_in_one_request_on_postgresql() -> None:
    from django_jobs.db.statements import PIPELINE_ABOVE

    count = PIPELINE_ABOVE + 1
    with CaptureQueriesContext(connection) as queries:
        handles = add.map((index, 0) for index in range(count))
    statements = [query["sql"] for query in queries if query["sql"] not in ("BEGIN", "COMMIT")]
    # PostgreSQL: a one-row INSERT sent for every row in one pipeline; elsewhere multi-row INSERTs.
    prefix = f"{count} times: " if connection.vendor == "postgresql" else ""
    assert statements and all(sql.upper().startswith(f"{prefix}INSERT".upper()) for sql in statements)
    assert len(statements) == 1 or connection.vendor != "postgresql"
    assert sorted(JobRecord.objects.values_list("args", flat=True)) == sorted([i, 0] for i in range(count))
    assert queued_ids() == [handle.id for handle in handles]


def test_a_long_list_is_inserted_in_batches_and_every_job_is_queued() -> None:
    handles = add.map((index, 1) for index in range(2500))
    assert JobRecord.objects.filter(status="queued").count() == 2500
    assert queued_ids() == [handle.id for handle in handles]


@pytest.mark.slow
def test_mapped_jobs_run_in_a_worker_and_their_rows_finish() -> None:
    handles = add.map([(1, 1), (2, 2), (3, 3)])
    failing = explode.map([("first",), {"message": "second"}])
    result = run_manage("rqworker", "default", "low", "--burst", "--worker-class", "simple")
    assert result.returncode == 0, result.stderr
    assert [handle.result for handle in handles] == [2, 4, 6]
    assert [handle.status for handle in handles] == ["finished"] * 3
    errors = [JobRecord.objects.get(pk=handle.id).error for handle in failing]
    assert "ValueError: first" in errors[0]
    assert "ValueError: second" in errors[1]


def test_decorator_options_reach_rq_for_each_mapped_job() -> None:
    handles = explode.map([("x",), ("y",)])
    queue = get_queue("low")
    for handle in handles:
        job = Job.fetch(handle.id, connection=queue.connection, serializer=queue.serializer)
        assert (job.timeout, job.result_ttl, job.ttl, job.description) == (30, 600, 300, "fails on purpose")
        assert JobRecord.objects.get(pk=handle.id).options["timeout"] == 30


def test_map_uses_the_decorated_queue_or_the_one_given() -> None:
    on_high = echo.map([("a",), ("b",)])
    on_low = echo.map([("c",)], queue="low")
    assert queued_ids("high") == [handle.id for handle in on_high]
    assert queued_ids("low") == [on_low[0].id]
    assert JobRecord.objects.get(pk=on_low[0].id).queue == "low"


def test_inside_atomic_nothing_is_pushed_before_the_commit() -> None:
    with transaction.atomic():
        handles = add.map([(1, 1), (2, 2)])
        assert JobRecord.objects.filter(pk__in=[h.id for h in handles]).count() == 2
        assert queued_ids() == []
    assert queued_ids() == [handle.id for handle in handles]


def test_rollback_leaves_neither_rows_nor_jobs() -> None:
    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        add.map([(1, 1), (2, 2)])
        raise Abort
    assert JobRecord.objects.count() == 0
    assert queued_ids() == []


def test_a_job_canceled_before_the_commit_is_left_out_of_the_push() -> None:
    with transaction.atomic():
        first, second, third = add.map([(1, 1), (2, 2), (3, 3)])
        assert second.cancel() is True
    assert queued_ids() == [first.id, third.id]
    assert second.status == "canceled"


def test_a_bad_item_raises_naming_its_index_and_nothing_is_written() -> None:
    with pytest.raises(TypeError) as info:
        echo.map([("ok",), ({"fine": [1]},), (datetime.date(2026, 1, 1),)])
    message = str(info.value)
    assert "tests.testapp.jobs.echo() item 2" in message
    assert "'value'" in message
    assert "datetime.date" in message

    with pytest.raises(TypeError, match=r"add\(\) item 1: the arguments do not fit its signature"):
        add.map([(1, 2), (1,)])
    with pytest.raises(TypeError, match=r"add\(\) item 0: the arguments do not fit.*unexpected keyword"):
        add.map([{"a": 1, "b": 2, "c": 3}])
    assert JobRecord.objects.count() == 0
    assert queued_ids() == [] and queued_ids("high") == []


@pytest.mark.parametrize("item", [[1, 2], 7, "ab"])
def test_an_item_that_is_neither_a_tuple_nor_a_dict_is_refused(item: Any) -> None:
    with pytest.raises(TypeError, match=r"add\(\) item 1 is a .*: give each item as a tuple"):
        add.map([(1, 2), item])
    assert JobRecord.objects.count() == 0


def test_an_unknown_queue_lists_the_configured_ones() -> None:
    with pytest.raises(UnknownQueueError, match="default, high, low, emails"):
        add.map([(1, 2)], queue="reports")
    assert JobRecord.objects.count() == 0


def test_an_empty_map_does_nothing() -> None:
    assert add.map([]) == []
    assert JobRecord.objects.count() == 0


def test_redacted_arguments_are_hidden_from_each_description() -> None:
    handles = charge.map([(1, "4242 4242"), {"order_id": 2, "card_number": "5555 5555"}])
    for handle in handles:
        description = JobRecord.objects.get(pk=handle.id).options["description"]
        assert "4242" not in description and "5555" not in description


def test_unreachable_redis_keeps_every_row_marked_not_pushed(caplog: Any) -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    with override_settings(RQ_QUEUES={"default": {"URL": url}}):
        handles = add.map([(1, 1), (2, 2), (3, 3)])  # must not raise: the caller goes on
    rows = JobRecord.objects.filter(pk__in=[h.id for h in handles])
    assert sorted(rows.values_list("status", "needs_push")) == [("queued", True)] * 3
    assert set(JobRecord.objects.not_pushed()) == set(rows)
    assert "needs_push" in caplog.text


def test_async_false_queue_runs_each_mapped_job_at_once(redis_url: str) -> None:
    with override_settings(RQ_QUEUES={"default": {"URL": redis_url, "ASYNC": False}}):
        handles = add.map([(1, 2), (3, 4)])
    assert [handle.status for handle in handles] == ["finished", "finished"]
    assert [handle.result for handle in handles] == [3, 7]
    assert get_queue("default").count == 0
