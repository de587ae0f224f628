"""The flags of the four commands: each refuses what its command cannot use, naming the flag, the
value and what it takes, as a ``CommandError`` (``call_command``) or a usage error (the shell)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.core.management import CommandError, call_command, load_command_class


def refused(command: str, *args: str) -> str:
    with pytest.raises(CommandError) as info:
        call_command(command, *args)
    return str(info.value)


def parsed(command: str, *args: str) -> dict[str, Any]:
    """The options as the command's parser reads them (the command does not run)."""
    parser = load_command_class("django_jobs", command).create_parser("manage.py", command)
    return vars(parser.parse_args(list(args)))


SCHEDULER_SECONDS = "expected a number of seconds from 0.1 to 86,400"
GRACE = "expected a number of seconds from 0 to 86,400"
AT_LEAST_1 = "expected a whole number of at least 1"
HEARTBEAT_SECONDS = "expected a whole number from 1 to 86,400 (seconds)"
UP_TO_1000 = "expected a whole number from 1 to 1,000"
PRUNE_BATCH = (
    "expected a whole number from 1 to 10,000 (rows deleted per transaction: more would hold locks longer)"
)
LEVEL = "expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL (in either case)"
CLASSES = "Use 'fork' (the default), 'simple', 'batch', or the dotted path of a subclass"


@pytest.mark.parametrize(
    ("command", "flag", "value", "message"),
    [
        # Seconds with fractions: not a number, NaN, infinities, below and above the range.
        ("rqscheduler", "--interval", "nan", SCHEDULER_SECONDS),
        ("rqscheduler", "--interval", "0", SCHEDULER_SECONDS),
        ("rqscheduler", "--interval", "1e-9", SCHEDULER_SECONDS),
        ("rqscheduler", "--interval", "soon", SCHEDULER_SECONDS),
        ("rqscheduler", "--lock-ttl", "nan", SCHEDULER_SECONDS),
        ("rqscheduler", "--lock-ttl", "inf", SCHEDULER_SECONDS),
        ("rqscheduler", "--lock-ttl", "1e9", SCHEDULER_SECONDS),
        ("rqreconcile", "--grace", "nan", GRACE),
        ("rqreconcile", "--grace", "-inf", GRACE),
        ("rqreconcile", "--grace", "-1", GRACE),
        ("rqreconcile", "--grace", "1e300", GRACE),
        # Whole numbers: fractions, NaN, zero, negatives, too large.
        ("rqworker", "--max-jobs", "0", AT_LEAST_1),
        ("rqworker", "--max-jobs", "2.5", AT_LEAST_1),
        ("rqworker", "--max-idle-time", "-5", AT_LEAST_1 + " (seconds)"),
        ("rqworker", "--worker-ttl", "nan", HEARTBEAT_SECONDS),
        ("rqworker", "--worker-ttl", "99999999999999999", HEARTBEAT_SECONDS),
        ("rqworker", "--job-monitoring-interval", "0", HEARTBEAT_SECONDS),
        ("rqworker", "--job-monitoring-interval", "1e6", HEARTBEAT_SECONDS),
        ("rqworker", "--pool", "0", UP_TO_1000),
        ("rqworker", "--pool", "100000", UP_TO_1000),
        ("rqworker", "--batch-size", "0", UP_TO_1000),
        ("rqworker", "--batch-size", "1000000", UP_TO_1000),
        ("rqprune", "--batch-size", "0", PRUNE_BATCH),
        ("rqprune", "--batch-size", "10001", PRUNE_BATCH),
        ("rqprune", "--max-batches", "nan", AT_LEAST_1),
        # Logging levels, on both commands that have the flag.
        ("rqworker", "--logging-level", "BOGUS", LEVEL),
        ("rqscheduler", "--logging-level", "loud", LEVEL),
        # Worker classes: missing, empty, malformed, not a worker, not one that records jobs.
        ("rqworker", "--worker-class", "no.such.Worker", "'no.such.Worker' cannot be imported (No module"),
        ("rqworker", "--worker-class", "", "'' names no class. " + CLASSES),
        ("rqworker", "--worker-class", ".relative", "'.relative' cannot be imported"),
        ("rqworker", "--worker-class", "os.path", "'os.path' is not an RQ worker class. " + CLASSES),
        ("rqworker", "--worker-class", "django_jobs.models.JobRecord", "is not an RQ worker class"),
        ("rqworker", "--worker-class", "rq.SimpleWorker", "'rq.SimpleWorker' does not record jobs"),
    ],
)
def test_a_bad_flag_is_refused_with_what_the_flag_takes(
    command: str, flag: str, value: str, message: str
) -> None:
    text = refused(command, f"{flag}={value}")
    assert text.startswith(f"Error: argument {flag}: ")
    assert message in text
    if message.startswith("expected"):
        assert text.endswith(f"{message}, not {value!r}")


@pytest.mark.parametrize(
    ("command", "args", "message"),
    [
        (
            "rqscheduler",
            ["--interval", "2", "--lock-ttl", "1"],
            "--lock-ttl (1.0) must be longer than --interval (2.0)",
        ),
        (
            "rqworker",
            ["--worker-class", "simple", "--batch-size", "5"],
            "--batch-size applies to the batch worker only",
        ),
    ],
)
def test_flags_that_do_not_go_together_are_refused(command: str, args: list[str], message: str) -> None:
    assert message in refused(command, "--burst", *args)


def test_a_bad_worker_class_setting_is_named_as_the_setting(settings: Any) -> None:
    settings.DJANGO_JOBS = {"WORKER_CLASS": "no.such.Worker"}
    text = refused("rqworker", "--burst")
    assert text.startswith("DJANGO_JOBS['WORKER_CLASS'] 'no.such.Worker' cannot be imported")


def test_the_values_at_the_ends_of_each_range_are_taken() -> None:
    options = parsed(
        "rqworker",
        "--pool=1000",
        "--batch-size=1000",
        "--worker-ttl=86400",
        "--job-monitoring-interval=1",
        "--max-jobs=1",
        "--max-idle-time=1",
        "--logging-level=warning",
        "--worker-class=django_jobs.worker.BatchWorker",
    )
    assert (options["pool"], options["batch_size"], options["worker_ttl"]) == (1000, 1000, 86400)
    assert options["logging_level"] == "WARNING"
    assert options["worker_class"] == "django_jobs.worker.BatchWorker"  # as given: the pool hands it on
    options = parsed("rqscheduler", "--interval=0.1", "--lock-ttl=86400", "--logging-level=Debug")
    assert (options["interval"], options["lock_ttl"], options["logging_level"]) == (0.1, 86400.0, "DEBUG")
    assert parsed("rqreconcile", "--grace=0")["grace"] == 0.0
    assert parsed("rqprune", "--batch-size=10000", "--max-batches=1")["batch_size"] == 10000


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["rqscheduler", "--interval", "nan", "--burst"],
            "manage.py rqscheduler: error: argument --interval: expected a number of seconds from 0.1 "
            "to 86,400, not 'nan'",
        ),
        (
            ["rqworker", "--burst", "--logging-level", "BOGUS"],
            "manage.py rqworker: error: argument --logging-level: expected one of DEBUG, INFO, WARNING, "
            "ERROR, CRITICAL (in either case), not 'BOGUS'",
        ),
    ],
)
def test_from_the_shell_a_bad_flag_is_a_usage_error_without_a_traceback(
    manage: Any, args: list[str], error: str
) -> None:
    result = manage(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("usage: manage.py ")
    assert lines[-1] == error
    assert not re.search(r"^error|Error:", "\n".join(lines[:-1]), re.MULTILINE)  # one error line
