"""``.delay()`` / ``.apply_async()``: the row, the outbox, JSON and clear errors."""

from __future__ import annotations

import datetime
import json
import zlib
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import transaction
from django.test.utils import override_settings
from rq.job import Job

from django_jobs import JobHandle, UnknownQueueError, get_queue
from django_jobs.models import JobRecord
from tests.ports import closed_port, redis_away
from tests.testapp.jobs import add, echo, explode

pytestmark = pytest.mark.django_db(transaction=True)


def queued_ids(name: str = "default") -> list[str]:
    return list(get_queue(name).get_job_ids())


def test_delay_writes_the_row_and_pushes_at_once_outside_a_transaction() -> None:
    handle = add.delay(2, b=3)
    assert isinstance(handle, JobHandle)
    assert isinstance(handle.id, str) and len(handle.id) == 32
    record = JobRecord.objects.get(pk=handle.id)
    assert record.func_name == "tests.testapp.jobs.add"
    assert record.queue == "default"
    assert record.status == "queued"
    assert record.args == [2]
    assert record.kwargs == {"b": 3}
    assert record.attempts == 0
    assert record.result is None
    assert record.needs_push is False
    assert queued_ids() == [handle.id]
    job = Job.fetch(handle.id, connection=get_queue().connection, serializer=get_queue().serializer)
    assert job.func_name == "tests.testapp.jobs.add"
    assert (job.args, job.kwargs) == ([2], {"b": 3})


def test_redis_payload_is_json_not_pickle(redis: Any) -> None:
    handle = add.delay(1, 2)
    raw = zlib.decompress(redis.hget(f"rq:job:{handle.id}", "data"))
    # RQ compresses the payload; inside is JSON text, not a pickle stream.
    assert json.loads(raw) == ["tests.testapp.jobs.add", None, [1, 2], {}]


def test_delay_uses_the_decorated_queue() -> None:
    handle = echo.delay({"a": [1, 2]})
    assert JobRecord.objects.get(pk=handle.id).queue == "high"
    assert queued_ids("high") == [handle.id]


def test_inside_atomic_the_push_waits_for_commit() -> None:
    with transaction.atomic():
        handle = add.delay(1, 1)
        assert handle.id
        assert JobRecord.objects.filter(pk=handle.id).exists()
        assert queued_ids() == []
    assert queued_ids() == [handle.id]


def test_rollback_leaves_neither_row_nor_job() -> None:
    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        handle = add.delay(1, 1)
        raise Abort
    assert not JobRecord.objects.filter(pk=handle.id).exists()
    assert queued_ids() == []


def test_savepoint_rollback_drops_only_the_inner_job() -> None:
    with transaction.atomic():
        kept = add.delay(1, 1)
        try:
            with transaction.atomic():
                dropped = add.delay(2, 2)
                raise RuntimeError
        except RuntimeError:
            pass
    assert queued_ids() == [kept.id]
    assert not JobRecord.objects.filter(pk=dropped.id).exists()


def test_unreachable_redis_keeps_the_row_marked_not_pushed(caplog: Any) -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    with override_settings(RQ_QUEUES={"default": {"URL": url}}):
        handle = add.delay(4, 5)  # must not raise: the view goes on
    record = JobRecord.objects.get(pk=handle.id)
    assert record.status == "queued"
    assert record.needs_push is True
    assert list(JobRecord.objects.not_pushed()) == [record]
    assert "needs_push" in caplog.text


def test_non_json_argument_names_function_argument_and_type() -> None:
    user = User(pk=7, username="ann")
    with pytest.raises(TypeError) as info:
        echo.delay(user)
    message = str(info.value)
    assert "tests.testapp.jobs.echo()" in message
    assert "'value'" in message
    assert "django.contrib.auth.models.User" in message
    assert "primary key" in message
    assert JobRecord.objects.count() == 0
    assert queued_ids("high") == []


def test_nested_non_json_value_is_located() -> None:
    with pytest.raises(TypeError) as info:
        echo.delay({"when": [datetime.date(2026, 1, 1)]})
    assert "value['when'][0]" in str(info.value)
    assert "datetime.date" in str(info.value)
    with pytest.raises(TypeError, match="'value key 1' is a dict key of type int"):
        echo.delay({1: "int keys would silently become strings"})
    with pytest.raises(ValueError, match="'value' is a float that is NaN or infinite"):
        echo.delay(float("nan"))
    assert JobRecord.objects.count() == 0


def test_arguments_that_do_not_fit_the_signature_fail_at_enqueue() -> None:
    with pytest.raises(TypeError, match=r"tests.testapp.jobs.add\(\): the arguments do not fit"):
        add.delay(1)
    with pytest.raises(TypeError, match="unexpected keyword"):
        add.delay(1, 2, c=3)
    assert JobRecord.objects.count() == 0


def test_unknown_queue_lists_the_configured_ones() -> None:
    with pytest.raises(UnknownQueueError) as info:
        add.apply_async((1, 2), queue="reports")
    assert "'reports'" in str(info.value)
    assert "default, high, low, emails" in str(info.value)
    assert JobRecord.objects.count() == 0


def test_apply_async_per_call_options() -> None:
    first = add.apply_async((1, 2), queue="low", job_id="report-2026-11", timeout=17)
    assert first.id == "report-2026-11"
    record = JobRecord.objects.get(pk="report-2026-11")
    assert record.queue == "low"
    assert record.options["timeout"] == 17
    queue = get_queue("low")
    assert Job.fetch(first.id, connection=queue.connection, serializer=queue.serializer).timeout == 17

    front = add.apply_async(kwargs={"a": 0, "b": 0}, queue="low", at_front=True)
    assert queued_ids("low") == [front.id, first.id]

    dependent = add.apply_async((5, 5), depends_on=first)
    assert JobRecord.objects.get(pk=dependent.id).status == "deferred"
    assert JobRecord.objects.get(pk=dependent.id).options["depends_on"] == [first.id]
    assert dependent.id not in queued_ids()


def test_decorator_options_reach_rq() -> None:
    handle = explode.delay("x")
    queue = get_queue("low")
    job = Job.fetch(handle.id, connection=queue.connection, serializer=queue.serializer)
    assert (job.timeout, job.result_ttl, job.ttl, job.description) == (30, 600, 300, "fails on purpose")


@pytest.mark.parametrize("bad_id", ["has space", "a/b", "x" * 129, ""])
def test_invalid_job_id_is_refused(bad_id: str) -> None:
    with pytest.raises(ValueError, match="job_id"):
        add.apply_async((1, 2), job_id=bad_id)
    assert JobRecord.objects.count() == 0


def test_pickle_serializer_opt_in_accepts_any_argument(settings: Any) -> None:
    settings.DJANGO_JOBS = {"SERIALIZER": "pickle"}
    handle = echo.delay(datetime.date(2026, 1, 2))
    record = JobRecord.objects.get(pk=handle.id)
    assert record.args == ["datetime.date(2026, 1, 2)"]  # a readable text form in the row
    queue = get_queue("high")
    job = Job.fetch(handle.id, connection=queue.connection, serializer=queue.serializer)
    assert job.args == [datetime.date(2026, 1, 2)] or job.args == (datetime.date(2026, 1, 2),)


class JobsDatabaseRouter:
    """Route job rows to the "jobs" database."""

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return "jobs" if model._meta.app_label == "django_jobs" else None

    db_for_read = db_for_write

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        return True


@pytest.mark.django_db(transaction=True, databases=["default", "jobs"])
def test_the_push_waits_for_the_commit_of_the_database_the_row_is_on() -> None:
    with override_settings(DATABASE_ROUTERS=[JobsDatabaseRouter()]):
        with transaction.atomic(using="default"):
            other = add.delay(1, 1)
            # The row is on "jobs", outside this transaction: pushed at once.
            assert queued_ids() == [other.id]
        with transaction.atomic(using="jobs"):
            handle = add.delay(2, 2)
            assert queued_ids() == [other.id]
        assert queued_ids() == [other.id, handle.id]
        assert JobRecord.objects.using("jobs").filter(pk__in=[other.id, handle.id]).count() == 2
        assert not JobRecord.objects.using("default").exists()


def test_cancel_before_commit_means_it_is_never_pushed() -> None:
    with transaction.atomic():
        handle = add.delay(1, 1)
        assert handle.cancel() is True
    assert queued_ids() == []
    assert JobRecord.objects.get(pk=handle.id).status == "canceled"


def test_cancel_before_commit_with_redis_down_means_it_is_never_pushed() -> None:
    with transaction.atomic():
        handle = add.delay(1, 1)
        with redis_away():
            assert handle.cancel() is True
    assert queued_ids() == []  # Redis is back for the commit: the push was dropped all the same
    assert JobRecord.objects.get(pk=handle.id).status == "canceled"


@pytest.mark.parametrize("timeout", ["5x", "soon", -0.5j])
def test_invalid_timeout_is_refused_before_anything_is_written(timeout: Any) -> None:
    with pytest.raises(ValueError, match=r"timeout .* is invalid"):
        add.apply_async((1, 2), timeout=timeout)
    assert JobRecord.objects.count() == 0


def test_pickle_result_is_kept_as_text_in_the_row(settings: Any) -> None:
    from django_jobs.testing import run_burst

    settings.DJANGO_JOBS = {"SERIALIZER": "pickle"}
    handle = echo.delay(datetime.date(2026, 1, 2))
    run_burst(["high"])
    record = JobRecord.objects.get(pk=handle.id)
    assert (record.status, record.result) == ("finished", "datetime.date(2026, 1, 2)")
