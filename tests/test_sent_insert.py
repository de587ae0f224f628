"""The default ``.delay()`` on PostgreSQL: the row's INSERT sent, the job pushed, the answer read last."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext, override_settings

from django_jobs import get_queue, push_ahead, records
from django_jobs.models import JobRecord
from django_jobs.pusher import flush
from django_jobs.spec import JobSpec
from tests.ports import closed_port
from tests.test_sent_start import other_session, row_seen_elsewhere
from tests.testapp.jobs import add, echo

pytestmark = pytest.mark.django_db(transaction=True)

postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the row is sent ahead on PostgreSQL only"
)

TABLE = JobRecord._meta.db_table


def carries_row_options(job_id: str, queue: str = "default") -> bool:
    """Whether the job was pushed ahead of its row's commit (it then carries the row's options)."""
    job = get_queue(queue).fetch_job(job_id)
    assert job is not None
    return records.ROW_OPTIONS_META in job.meta


def new_fields(job_id: str, *args: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "func_name": add.name,
        "queue": "default",
        "args": list(args),
        "kwargs": {},
        "status": "queued",
        "options": {"retry_max": 4},
    }


def delay_in_thread() -> tuple[threading.Thread, list[Any], threading.Event]:
    """``add.delay(5, 6)`` in a thread of its own (so with its own database connection), once the
    returned event is set.

    The thread first makes a ``.delay()`` of its own and takes that job out of the queue again:
    with prepared statements on, the first ``INSERT`` of a session prepares the statement, and
    the preparing waits for a table lock as the ``INSERT`` does. The one under test only runs it.
    """
    from django.db import connections

    returned: list[Any] = []
    ready, go = threading.Event(), threading.Event()

    def call() -> None:
        try:
            get_queue("default").remove(add.delay(0, 0).id)
            ready.set()
            go.wait(60)
            returned.append(add.delay(5, 6))
        finally:
            ready.set()
            connections.close_all()

    thread = threading.Thread(target=call)
    thread.start()
    ready.wait(60)
    return thread, returned, go


def backend_waiting_on_insert(watcher: Any) -> int | None:
    found = watcher.execute(
        "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
        [f"INSERT INTO {connection.ops.quote_name(TABLE)}%"],
    ).fetchone()
    return None if found is None else int(found[0])


@postgresql_only
def test_delay_returns_with_the_row_committed_and_the_job_in_redis() -> None:
    handle = add.delay(1, 2)
    assert row_seen_elsewhere(handle.id)[:2] == ("queued", 0)  # committed, seen by another session
    assert get_queue("default").get_job_ids() == [handle.id]
    assert carries_row_options(handle.id)  # it went the sent way
    row = JobRecord.objects.get(pk=handle.id)
    assert (row.func_name, row.args, row.needs_push) == (add.name, [1, 2], False)


@postgresql_only
@pytest.mark.parametrize("use_tz", [True, False])
def test_the_sent_row_holds_what_the_ordinary_insert_writes(settings: Any, use_tz: bool) -> None:
    # With USE_TZ = False the times are naive: the row is sent with its values merged into the
    # statement, as psycopg's client cursor writes them, instead of as text parameters.
    settings.USE_TZ = use_tz
    text = 'l\'été \\ "quoted" 🚀'
    sent = echo.delay({"text": text, "list": [1, 2.5, None, True]})
    with CaptureQueriesContext(connection) as logged:  # the INSERT through Django's cursor
        ordinary = echo.delay({"text": text, "list": [1, 2.5, None, True]})
    assert [query["sql"][:11] for query in logged.captured_queries] == ["INSERT INTO"]
    rows = {row.pk: row for row in JobRecord.objects.filter(pk__in=[sent.id, ordinary.id])}
    columns = [field.attname for field in JobRecord._meta.concrete_fields if field.attname not in ("id",)]
    first, second = (
        {name: getattr(rows[handle.id], name) for name in columns} for handle in (sent, ordinary)
    )
    assert abs(first.pop("enqueued_at") - second.pop("enqueued_at")) < timedelta(minutes=1)
    assert first == second
    assert first["args"] == [{"text": text, "list": [1, 2.5, None, True]}]


@postgresql_only
def test_the_job_is_pushed_while_its_row_commits_and_delay_waits_for_the_commit() -> None:
    with other_session(autocommit=False) as locker, other_session() as watcher:
        thread, returned, go = delay_in_thread()
        # Inserts wait for this lock: the row's INSERT is held at the server.
        locker.execute(f"LOCK TABLE {connection.ops.quote_name(TABLE)} IN SHARE MODE")
        go.set()
        deadline = time.monotonic() + 60
        while not get_queue("default").get_job_ids() and time.monotonic() < deadline:
            time.sleep(0.01)
        [job_id] = get_queue("default").get_job_ids()  # pushed while the INSERT waits
        assert backend_waiting_on_insert(watcher) is not None
        assert thread.is_alive() and not returned  # .delay() has not returned: no answer yet
        locker.rollback()  # the lock goes, the INSERT commits
        thread.join(60)
    assert [handle.id for handle in returned] == [job_id]
    assert row_seen_elsewhere(job_id)[:2] == ("queued", 0)


@postgresql_only
def test_a_connection_lost_after_the_send_keeps_the_job_and_its_row_follows(caplog: Any) -> None:
    with other_session(autocommit=False) as locker, other_session() as watcher:
        thread, returned, go = delay_in_thread()
        locker.execute(f"LOCK TABLE {connection.ops.quote_name(TABLE)} IN SHARE MODE")
        go.set()
        deadline = time.monotonic() + 60
        while (backend := backend_waiting_on_insert(watcher)) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert backend is not None
        watcher.execute("SELECT pg_terminate_backend(%s)", [backend])
        thread.join(60)
        [handle] = returned  # .delay() did not raise: the job was in Redis already
        assert get_queue("default").get_job_ids() == [handle.id]
        assert "The job is in Redis; its row is kept in this process" in caplog.text
        locker.rollback()
    # The lost connection was closed, so the next query on this thread connects again.
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    with other_session() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [backend])
    again = add.delay(9, 9)
    assert flush(timeout=60)
    assert JobRecord.objects.get(pk=again.id).args == [9, 9]
    assert flush(timeout=60)  # the row writer writes it
    row = JobRecord.objects.get(pk=handle.id)
    assert (row.status, row.args, row.func_name) == ("queued", [5, 6], add.name)


@postgresql_only
def test_a_row_a_worker_wrote_first_keeps_its_run_and_gets_the_enqueue_side() -> None:
    # As if a worker took the job between the send and the commit: its row is there first.
    JobRecord.objects.create(
        id="sent-late", func_name="", queue="default", status="started", attempts=1, worker_name="w-first"
    )
    sent = records.send_insert(using="default", **new_fields("sent-late", 7, 8))
    assert sent is not None
    spec = JobSpec("sent-late", add.name, "default", [7, 8], {}, {"retry_max": 4}, "default")
    push_ahead.push_first(spec, new_fields("sent-late", 7, 8), sent=sent)
    assert flush(timeout=60)
    row = JobRecord.objects.get(pk="sent-late")
    assert (row.status, row.attempts, row.worker_name) == ("started", 1, "w-first")
    assert (row.func_name, row.args, row.options) == (add.name, [7, 8], {"retry_max": 4})


@postgresql_only
def test_redis_down_marks_the_sent_row_for_a_later_push(caplog: Any) -> None:
    with override_settings(RQ_QUEUES={"default": {"URL": f"redis://127.0.0.1:{closed_port()}/0"}}):
        handle = add.delay(4, 4)
    row = JobRecord.objects.get(pk=handle.id)
    assert (row.status, row.needs_push, row.args) == ("queued", True, [4, 4])
    assert "Its row is written now, queued with needs_push set" in caplog.text


@postgresql_only
def test_an_argument_postgresql_cannot_store_is_refused_before_anything_is_written() -> None:
    with pytest.raises(ValueError, match=r"argument 'b\[0\]' holds the character NUL"):
        add.delay(1, ["a\x00b"])
    with pytest.raises(ValueError, match="NUL"):
        add.map([(1, {"k\x00": 2})])
    assert not JobRecord.objects.exists()
    assert get_queue("default").get_job_ids() == []


def test_the_row_is_committed_before_the_push_inside_atomic_and_with_a_chosen_id() -> None:
    with transaction.atomic():
        in_transaction = add.delay(1, 1)
    chosen = add.apply_async(args=(3, 3), job_id="a-chosen-id")  # a taken id must fail first
    for handle in (in_transaction, chosen):
        assert not carries_row_options(handle.id)
        assert JobRecord.objects.get(pk=handle.id).status == "queued"


def test_with_the_query_log_the_row_goes_through_djangos_cursor() -> None:
    # A statement sent ahead would be missing from Django's query log: the row is written the
    # ordinary way, while Redis runs the push sent just before (tests/test_push_beside_row.py).
    with CaptureQueriesContext(connection) as logged:
        handle = add.delay(2, 2)
    assert [query["sql"][:11] for query in logged.captured_queries] == ["INSERT INTO"]
    assert carries_row_options(handle.id)
    assert JobRecord.objects.get(pk=handle.id).status == "queued"
