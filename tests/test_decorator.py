"""``@job``: forms, inline calls, signature, lazy queue lookup and static typing."""

from __future__ import annotations

import importlib.util
import inspect
import re
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from django.test.utils import override_settings

from django_jobs import JobFunction, UnknownQueueError, job
from django_jobs.models import JobRecord
from django_jobs.registry import registry
from tests.processes import ROOT
from tests.testapp.jobs import add, echo, explode, flaky


def test_bare_decorator_uses_the_default_queue_and_keeps_metadata() -> None:
    assert isinstance(add, JobFunction)
    assert add.name == "tests.testapp.jobs.add"
    assert add.queue_name is None  # resolved at enqueue time: DJANGO_JOBS["DEFAULT_QUEUE"]
    assert add.__name__ == "add"
    assert add.__module__ == "tests.testapp.jobs"
    assert str(inspect.signature(add)) == "(a: 'int', b: 'int') -> 'int'"
    assert registry["tests.testapp.jobs.add"] is add


def test_queue_given_positionally_or_by_keyword_with_options() -> None:
    assert echo.queue_name == "high"
    assert explode.queue_name == "low"
    assert (explode.timeout, explode.result_ttl, explode.ttl, explode.description) == (
        30,
        600,
        300,
        "fails on purpose",
    )
    assert flaky.queue_name == "emails" and flaky.retry == 2


def test_calling_runs_the_function_inline() -> None:
    assert add(2, 3) == 5
    with pytest.raises(ValueError, match="boom"):
        explode("boom")


def test_nested_functions_and_lambdas_are_refused() -> None:
    def local() -> None: ...

    with pytest.raises(TypeError, match="module level"):
        job(local)
    with pytest.raises(TypeError, match="module level"):
        job("high")(lambda: None)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: job("high", queue="low"), "give the queue once"),
        (lambda: job(5), "must be a str"),
        (lambda: job(retry=-1)(add.func), "retry"),
    ],
)
def test_bad_decorator_arguments(call: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        call()


@pytest.mark.django_db(transaction=True)
def test_queue_is_looked_up_at_enqueue_time_not_import_time() -> None:
    import tests.testapp.late_queue as module  # decorates with a queue settings do not have yet

    with pytest.raises(UnknownQueueError, match="'reports'"):
        module.build_report.delay(1)
    url = module_settings_url()
    with override_settings(RQ_QUEUES={"default": {"URL": url}, "reports": {"URL": url}}):
        handle = module.build_report.delay(1)
        assert JobRecord.objects.get(pk=handle.id).queue == "reports"


def module_settings_url() -> str:
    from django.conf import settings

    return str(settings.RQ_QUEUES["default"]["URL"])


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None, reason="mypy is not installed (pip install -e '.[lint]')"
)
def test_delay_is_type_checked_like_the_function(tmp_path: Any) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        textwrap.dedent(
            """
            from django_jobs import job

            @job("emails")
            def send(user_id: int, *, urgent: bool = False) -> str:
                return "sent"

            handle = send.delay(1, urgent=True)
            reveal_type(handle)
            reveal_type(send(1))
            send.delay("not an int")
            send.delay(1, loud=True)
            """
        )
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--no-incremental",
            "--strict",
            "--follow-imports=silent",
            str(sample),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    out = result.stdout
    # mypy spells builtins either "builtins.str" or "str", depending on its version.
    assert re.search(r'Revealed type is "django_jobs\.handles\.JobHandle\[(builtins\.)?str\]"', out), out
    assert re.search(r'sample.py:10: note: Revealed type is "(builtins\.)?str"', out), out
    assert 'Argument 1 to "delay" of "JobFunction" has incompatible type "str"; expected "int"' in out, out
    assert 'Unexpected keyword argument "loud" for "delay" of "JobFunction"' in out, out
