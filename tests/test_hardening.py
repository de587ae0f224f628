"""What a worker refuses to run, what a job may carry, and outcomes the database refuses.

One test (or more) per finding of docs/security.md's threat model: a job written
into Redis naming any importable function; an outcome PostgreSQL cannot store
holding back the ones behind it; text, nesting, numbers and time options that a
database or JSON cannot carry. The command flags and pool restarts have their
tests beside the commands' (tests/test_rqworker_command.py).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import DataError, OperationalError, connection, transaction
from django.utils import timezone
from rq import Callback, Queue
from rq.serializers import JSONSerializer

from django_jobs import get_queue, job, outcomes, pusher, set_progress, spool
from django_jobs.db.connections import refused_item
from django_jobs.db.statements import row_values
from django_jobs.models import JobRecord, PeriodicJob
from django_jobs.push import push
from django_jobs.queues import get_connection
from django_jobs.records import mark_started_by_id
from django_jobs.spec import JobSpec
from django_jobs.testing import run_burst
from django_jobs.worker import BatchWorker
from tests.testapp.jobs import add, echo, raises_unstorable_text, takes_options
from tests.testapp.unregistered import IMPORT_MARKER_ENV

pytestmark = pytest.mark.django_db(transaction=True)

UNREGISTERED = "tests.testapp.unregistered.touch"
UNREGISTERED_MODULE = "tests.testapp.unregistered"


@pytest.fixture
def forget_unregistered_module() -> Iterator[None]:
    """The module of the unregistered function is not imported before the test, nor after it."""
    sys.modules.pop(UNREGISTERED_MODULE, None)
    yield
    sys.modules.pop(UNREGISTERED_MODULE, None)


def plain_rq(queue: str = "default") -> Queue:
    """The queue as plain RQ (or django-rq with the JSON serializer) writes to it."""
    return Queue(queue, connection=get_connection(queue), serializer=JSONSerializer)


def run_with(kind: str) -> None:
    if kind == "simple":
        run_burst(["default"])
        return
    queue = get_queue("default")
    BatchWorker([queue], connection=queue.connection, serializer=JSONSerializer).work(
        burst=True, logging_level="WARNING"
    )


# -- 1. only registered functions run ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["simple", "batch"])
def test_a_job_naming_an_unregistered_function_is_refused_without_importing_it(
    kind: str, tmp_path: Path, forget_unregistered_module: None, caplog: Any
) -> None:
    shell_trace, run_trace = tmp_path / "shell", tmp_path / "run"
    queue = plain_rq()
    by_shell = queue.enqueue("os.system", f"touch {shell_trace}")
    by_name = queue.enqueue(UNREGISTERED, str(run_trace))
    caplog.set_level(logging.ERROR, logger="django_jobs.security")

    run_with(kind)

    for job_id, name in ((by_shell.id, "os.system"), (by_name.id, UNREGISTERED)):
        row = JobRecord.objects.get(pk=job_id)
        assert (row.status, row.attempts, row.result) == ("failed", 1, None)
        assert f"JobFunctionNotAllowed: The job function {name!r} is not registered" in row.error
        assert "DJANGO_JOBS['ALLOWED_FUNCTIONS']" in row.error
    assert not shell_trace.exists() and not run_trace.exists()
    assert UNREGISTERED_MODULE not in sys.modules
    refused = [record for record in caplog.records if record.name == "django_jobs.security"]
    assert {record.job_id for record in refused} == {by_shell.id, by_name.id}  # type: ignore[attr-defined]


@pytest.mark.slow
def test_the_forking_worker_refuses_it_too_and_never_imports_the_module(tmp_path: Path, manage: Any) -> None:
    marker, run_trace = tmp_path / "imported", tmp_path / "run"
    refused = plain_rq().enqueue(UNREGISTERED, str(run_trace))
    allowed = add.delay(1, 2)

    result = manage("rqworker", "default", "--burst", env={IMPORT_MARKER_ENV: str(marker)})

    assert result.returncode == 0, result.stderr
    row = JobRecord.objects.get(pk=refused.id)
    assert row.status == "failed" and "is not registered" in row.error
    assert JobRecord.objects.get(pk=allowed.id).result == 3
    assert not run_trace.exists()
    assert not marker.exists(), marker.read_text()
    assert f"Refused job {refused.id} on queue default" in result.stderr


def test_allowed_functions_let_jobs_from_plain_rq_run(
    settings: Any, tmp_path: Path, forget_unregistered_module: None
) -> None:
    queue = plain_rq()
    exact, by_prefix, other = tmp_path / "exact", tmp_path / "prefix", tmp_path / "other"
    settings.DJANGO_JOBS = {"ALLOWED_FUNCTIONS": [UNREGISTERED]}
    first = queue.enqueue(UNREGISTERED, str(exact))
    registered = queue.enqueue("tests.testapp.jobs.add", 2, 3)  # a @job function needs no listing
    run_burst(["default"])
    settings.DJANGO_JOBS = {"ALLOWED_FUNCTIONS": ["tests.testapp.unregistered."]}
    second = queue.enqueue(UNREGISTERED, str(by_prefix))
    run_burst(["default"])
    settings.DJANGO_JOBS = {"ALLOWED_FUNCTIONS": ["tests.testapp.unregistered.touch2", "tests.testapp.unreg"]}
    third = queue.enqueue(UNREGISTERED, str(other))  # neither the name nor a module prefix of it
    run_burst(["default"])

    rows = {row.pk: row for row in JobRecord.objects.all()}
    assert (rows[first.id].status, rows[first.id].result) == ("finished", str(exact))
    assert (rows[registered.id].status, rows[registered.id].result) == ("finished", 5)
    assert (rows[second.id].status, rows[second.id].result) == ("finished", str(by_prefix))
    assert rows[third.id].status == "failed" and "is not registered" in rows[third.id].error
    assert exact.exists() and by_prefix.exists() and not other.exists()


def test_an_rq_callback_must_be_allowed_too(settings: Any) -> None:
    callback = "tests.testapp.jobs.rq_success_callback"
    refused = plain_rq().enqueue("tests.testapp.jobs.add", 1, 2, on_success=Callback("os.system"))
    unlisted = plain_rq().enqueue("tests.testapp.jobs.add", 3, 4, on_success=Callback(callback))
    run_burst(["default"])
    settings.DJANGO_JOBS = {"ALLOWED_FUNCTIONS": [callback]}
    listed = plain_rq().enqueue("tests.testapp.jobs.add", 5, 6, on_success=Callback(callback))
    run_burst(["default"])

    rows = {row.pk: row for row in JobRecord.objects.all()}
    assert rows[refused.id].status == rows[unlisted.id].status == "failed"
    assert (
        "The callback (success_callback) of tests.testapp.jobs.add 'os.system' is not registered"
        in rows[refused.id].error
    )
    assert f"'{callback}' is not registered" in rows[unlisted.id].error
    assert rows[listed.id].status == "finished"
    assert listed.get_meta(refresh=True)["callback_saw"] == 11


def test_a_refused_function_is_never_retried(forget_unregistered_module: None, tmp_path: Path) -> None:
    # A row can name a function this worker does not know (another deployment registered it).
    spec = JobSpec(
        "not-registered-1", UNREGISTERED, "default", [str(tmp_path / "x")], {}, {"retry_max": 3}, "default"
    )
    JobRecord.objects.create(
        id=spec.id,
        func_name=spec.func_name,
        queue=spec.queue,
        args=spec.args,
        options=spec.options,
    )
    push(spec)

    run_burst(["default"])

    row = JobRecord.objects.get(pk=spec.id)
    assert (row.status, row.attempts) == ("failed", 1)
    assert UNREGISTERED_MODULE not in sys.modules


def test_the_admin_periodic_job_form_takes_only_registered_functions_and_storable_arguments(
    admin_client: Any,
) -> None:
    form = {
        "name": "shell",
        "func_name": "os.system",
        "args": '["touch /tmp/x"]',
        "kwargs": "{}",
        "queue": "",
        "interval": "60",
        "missed_runs": "skip",
        "enabled": "on",
    }
    response = admin_client.post("/admin/django_jobs/periodicjob/add/", form)
    assert response.status_code == 200
    assert "is not a @job function of this project" in response.content.decode()
    response = admin_client.post(
        "/admin/django_jobs/periodicjob/add/",
        {**form, "func_name": "tests.testapp.jobs.echo", "args": '["a\\u0000b"]'},
    )
    assert response.status_code == 200
    assert "holds the character NUL" in response.content.decode()
    response = admin_client.post(
        "/admin/django_jobs/periodicjob/add/",
        {**form, "func_name": "tests.testapp.jobs.echo", "args": "[1]", "interval": str(200 * 365 * 86400)},
    )
    assert response.status_code == 200
    assert "The interval must be a whole number of seconds from 1 to" in response.content.decode()
    assert not PeriodicJob.objects.exists()
    with pytest.raises(ValidationError, match="nested more than 100 levels"):
        nested: Any = 1
        for _ in range(150):
            nested = [nested]
        PeriodicJob(name="deep", func_name="tests.testapp.jobs.echo", args=[nested], interval=60).full_clean()


# -- 2. no outcome holds back the others -------------------------------------------------------


def test_an_error_message_the_database_cannot_store_is_stored_escaped() -> None:
    handle = raises_unstorable_text.delay()
    run_burst(["default"])
    row = JobRecord.objects.get(pk=handle.id)
    assert row.status == "failed"
    assert row.error.strip().endswith("ValueError: bad\\x00value and a lone \\ud800 surrogate")


@pytest.mark.parametrize("value", ["a\x00b", "a\ud800b", {"deep": [[[[float("nan")]]]]}])
def test_a_result_a_database_cannot_store_fails_the_job_on_every_database(value: Any) -> None:
    handle = echo.apply_async(["ok"], queue="default")
    # The job returns what it was given; give it the bad value only in Redis, as a job of
    # another client would (.delay() refuses it at the door).
    queue = plain_rq()
    bad = queue.enqueue("tests.testapp.jobs.echo", value)
    run_burst(["default"])
    row = JobRecord.objects.get(pk=bad.id)
    assert row.status == "failed"
    assert "returned a value that cannot be stored: return value" in row.error
    assert JobRecord.objects.get(pk=handle.id).status == "finished"


def started_row(job_id: str) -> None:
    JobRecord.objects.create(id=job_id, func_name="tests.testapp.jobs.echo", queue="default", args=["x"])
    mark_started_by_id(job_id, "w-spool")


def test_the_spool_moves_past_an_outcome_the_database_refuses(caplog: Any) -> None:
    redis = get_connection("default")
    for job_id in ("poison", "malformed", "ordinary"):
        started_row(job_id)
    at = timezone.now().isoformat()
    # Kept during an outage, oldest first: a result PostgreSQL refuses (a NUL in JSON), an
    # item that cannot be applied at all, then an ordinary outcome behind them.
    spool.save(redis, "finished", job_id="poison", result={"text": "bad\x00value"}, at=at)
    spool.save(redis, "failed", job_id="malformed", at=at)
    spool.save(redis, "finished", job_id="ordinary", result="fine", at=at)
    caplog.set_level(logging.INFO)

    assert outcomes.replay_spool(redis) == 3

    rows = {row.pk: row for row in JobRecord.objects.all()}
    assert (rows["ordinary"].status, rows["ordinary"].result) == ("finished", "fine")
    assert rows["poison"].status == "finished"
    if connection.vendor == "postgresql":  # which refuses NUL in JSON: stored escaped, with a note
        assert rows["poison"].result == {"text": "bad\\x00value"}
        assert "stored escaped" in rows["poison"].meta[outcomes.ESCAPED_NOTE]
    else:  # SQLite stores it as it is
        assert rows["poison"].result == {"text": "bad\x00value"}
    assert rows["malformed"].status == "failed"
    assert (
        "The failed outcome of this job could not be stored in its row: KeyError" in rows["malformed"].error
    )
    assert spool.pending(redis) == 0
    assert "still unavailable" not in caplog.text
    assert "cannot store the failed of job malformed" in caplog.text


def test_database_errors_are_told_apart() -> None:
    # Unavailable (try again later): the spool waits. The item itself: it is set aside.
    assert not refused_item(OperationalError("could not connect to server"))
    assert refused_item(DataError("invalid input syntax for type json"))
    assert refused_item(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"))
    assert refused_item(KeyError("error"))


# -- 3, 4, 6. every bad input refused at the door ----------------------------------------------


def nothing_written_or_pushed() -> None:
    assert not JobRecord.objects.exists()
    for name in ("default", "high", "low", "emails"):
        assert get_queue(name).count == 0


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (lambda: echo.delay("a\ud800b"), "argument 'value' holds a lone surrogate"),
        (lambda: echo.delay(["ok", {"k": "a\x00b"}]), "argument \"value[1]['k']\" holds the character NUL"),
        (lambda: echo.map([("ok",), ("a\ud800",)]), "item 1: argument 'value' holds a lone surrogate"),
        (lambda: takes_options.delay(**{"a\ud800": 1}), "argument \"options key 'a\\\\ud800'\" holds a lone"),
        (lambda: takes_options.delay(**{"a\x00": 1}), "holds the character NUL"),
        (lambda: echo.delay(10**5000), "is an integer of more than 4,300 digits"),
        (lambda: echo.delay(-(10**4300)), "is an integer of more than 4,300 digits"),
        (lambda: echo.delay(float("inf")), "is a float that is NaN or infinite"),
        (lambda: echo.apply_async(["x"], timeout=0), "timeout=0 is out of bounds"),
        (lambda: echo.apply_async(["x"], timeout=-5), "timeout=-5 is out of bounds"),
        (lambda: echo.apply_async(["x"], timeout=float("nan")), "timeout=nan is out of bounds"),
        (lambda: echo.apply_async(["x"], timeout=31 * 86400), "at most 2,592,000 s (30 days)"),
        (lambda: echo.apply_async(["x"], countdown=float("nan")), "countdown=nan is out of bounds"),
        (lambda: echo.apply_async(["x"], countdown=float("inf")), "countdown=inf is out of bounds"),
        (lambda: echo.apply_async(["x"], countdown=1e12), "countdown=1000000000000.0 is out of bounds"),
        (lambda: echo.apply_async(["x"], countdown=-1), "countdown=-1 is out of bounds"),
        (lambda: echo.enqueue_in(timedelta(days=365 * 101), "x"), "is out of bounds"),
        (
            lambda: echo.apply_async(["x"], eta=timezone.now() + timedelta(days=365 * 101)),
            "days (100 years) ahead",
        ),
    ],
)
def test_bad_input_is_refused_with_nothing_written_or_pushed(call: Any, says: str) -> None:
    with pytest.raises(ValueError) as info:
        call()
    assert says in str(info.value)
    nothing_written_or_pushed()


def test_the_same_inside_a_transaction_and_outside(settings: Any) -> None:
    with transaction.atomic():
        with pytest.raises(ValueError, match="lone surrogate"):
            echo.delay("a\ud800b")
        assert not JobRecord.objects.exists()
    settings.DJANGO_JOBS = {"PUSH": "background"}
    with pytest.raises(ValueError, match="lone surrogate"):
        echo.delay("a\ud800b")
    nothing_written_or_pushed()


def nested_lists(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = [value]
    return value


def test_deep_nesting_is_a_value_error_not_a_recursion_error() -> None:
    with pytest.raises(ValueError, match=r"argument 'value\[0\]\[0\].*' is nested more than 100 levels deep"):
        echo.delay(nested_lists(5000))
    with pytest.raises(ValueError, match="is nested more than 100 levels deep"):
        echo.delay(nested_lists(101))
    nothing_written_or_pushed()
    echo.delay(nested_lists(100))  # the limit itself passes
    assert JobRecord.objects.count() == 1


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"timeout": 0}, "timeout=0 is out of bounds"),
        ({"timeout": "-5"}, "timeout=-5 is out of bounds"),
        ({"ttl": 0}, "ttl=0 is out of bounds"),
        ({"failure_ttl": -1}, "failure_ttl=-1 is out of bounds"),
        ({"result_ttl": -1}, "result_ttl=-1 is out of bounds"),
        ({"ttl": float("inf")}, "ttl=inf is out of bounds"),
        ({"result_ttl": 10**12}, "result_ttl=1000000000000 is out of bounds"),
    ],
)
def test_job_options_are_checked_at_import(options: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        job(**options)(decorated_here)


def decorated_here() -> None:
    """Decorated by the tests of @job's options (a function at module level, as @job asks)."""


def test_result_ttl_zero_is_allowed_the_row_keeps_the_result() -> None:
    assert job(result_ttl=0)(decorated_here).result_ttl == 0


def test_progress_messages_obey_the_same_rules() -> None:
    with pytest.raises(ValueError, match="argument 'message' holds the character NUL"):
        set_progress(1, 2, "half\x00way")
    with pytest.raises(ValueError, match="argument 'total' is a float that is NaN or infinite"):
        set_progress(1, float("nan"))
    with pytest.raises(TypeError, match="done must be a number"):
        set_progress("1", 2)  # type: ignore[arg-type]


def test_the_row_writer_moves_past_a_row_the_database_refuses(caplog: Any) -> None:
    # "redis-first" writes rows of jobs already in Redis, many per statement, from a thread.
    def row(job_id: str, func_name: Any = "tests.testapp.jobs.echo") -> tuple[str, dict[str, Any]]:
        values = row_values(
            job_id=job_id, func_name=func_name, queue="high", args=[1], kwargs={}, status="queued", options={}
        )
        return "default", values

    batch = [row("first"), row("refused", func_name=None), row("last")]  # NOT NULL: refused everywhere

    assert pusher.write_rows(batch) == []  # nothing left to try again: the refused row is given up

    assert set(JobRecord.objects.values_list("pk", flat=True)) == {"first", "last"}
    assert "refuses the row of job refused (IntegrityError" in caplog.text


def test_an_allowed_function_that_does_not_import_says_so(settings: Any) -> None:
    settings.DJANGO_JOBS = {"ALLOWED_FUNCTIONS": ["tests.no_such_module."]}
    gone = plain_rq().enqueue("tests.no_such_module.job")
    run_burst(["default"])
    row = JobRecord.objects.get(pk=gone.id)
    assert row.status == "failed"
    assert "JobFunctionImportError: Cannot import the job function 'tests.no_such_module.job'" in row.error
