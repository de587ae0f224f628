"""One test per system check id, plus a clean configuration that passes."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.core import checks
from django.test.utils import override_settings

from django_jobs.checks import (
    check_allowed_functions,
    check_app_order,
    check_options,
    check_queues,
    check_retention,
    check_schedule,
    check_serializer,
)

URL = {"URL": "redis://127.0.0.1:6379/0"}


def ids(messages: list[Any]) -> list[str]:
    return [message.id for message in messages]


@pytest.mark.django_db(databases=["default", "jobs"])  # some checks query the database on Django 6.1
def test_configured_test_settings_pass_all_checks() -> None:
    assert [m for m in checks.run_checks() if m.id.startswith("django_jobs")] == []


@pytest.mark.parametrize("value", [None, {}, []])
def test_e001_missing_or_empty_rq_queues(settings: Any, value: Any) -> None:
    if value is None:
        del settings.RQ_QUEUES
    else:
        settings.RQ_QUEUES = value
    messages = check_queues()
    assert ids(messages) == ["django_jobs.E001"]
    assert "RQ_QUEUES" in messages[0].hint


def test_e002_queue_without_connection_settings(settings: Any) -> None:
    settings.RQ_QUEUES = {"default": URL, "emails": {"DEFAULT_TIMEOUT": 30}}
    messages = check_queues()
    assert ids(messages) == ["django_jobs.E002"]
    assert "'emails'" in messages[0].msg


@pytest.mark.parametrize(
    "config",
    [
        {"HOST": "localhost", "PORT": 6379, "DB": 0},
        {"UNIX_SOCKET_PATH": "/tmp/redis.sock", "DB": 0},
        {"SENTINELS": [("localhost", 26379)], "MASTER_NAME": "mymaster"},
        {"USE_REDIS_CACHE": "default"},
    ],
)
def test_every_django_rq_connection_style_satisfies_e002(settings: Any, config: dict[str, Any]) -> None:
    settings.RQ_QUEUES = {"default": config}
    assert check_queues() == []


@pytest.mark.parametrize(
    ("config", "missing"),
    [
        ({"HOST": "localhost", "DB": 0}, "PORT"),
        ({"UNIX_SOCKET_PATH": "/tmp/redis.sock"}, "DB"),
        ({"SENTINELS": [("localhost", 26379)]}, "MASTER_NAME"),
    ],
)
def test_e006_incomplete_connection_settings(settings: Any, config: dict[str, Any], missing: str) -> None:
    settings.RQ_QUEUES = {"default": config}
    messages = check_queues()
    assert ids(messages) == ["django_jobs.E006"]
    assert f"not {missing}" in messages[0].msg


def test_e007_per_queue_serializer_is_not_used(settings: Any) -> None:
    settings.RQ_QUEUES = {"default": {**URL, "SERIALIZER": "rq.serializers.JSONSerializer"}}
    messages = check_queues()
    assert ids(messages) == ["django_jobs.E007"]
    assert "DJANGO_JOBS['SERIALIZER']" in messages[0].hint


@pytest.mark.parametrize(
    ("retention", "says"),
    [
        (["finished", 60], "must be a dict of status to seconds or timedelta"),
        ({"queued": 60}, "'queued', whose rows are never pruned"),
        ({"finshed": 60}, "did you mean 'finished'?"),
        ({"failed": -1}, "['failed'] is -1"),
        ({"failed": "30d"}, "['failed'] is '30d'"),
        ({"failed": dt.timedelta(days=-1)}, "['failed'] is datetime.timedelta(days=-1)"),
        ({"failed": True}, "['failed'] is True"),
        ({"failed": 1e20}, "['failed'] is 1e+20"),
    ],
)
def test_e008_malformed_retention(settings: Any, retention: Any, says: str) -> None:
    settings.DJANGO_JOBS = {"RETENTION": retention}
    messages = check_retention()
    assert ids(messages) == ["django_jobs.E008"]
    assert says in messages[0].msg
    assert "None keeps them forever" in messages[0].hint
    settings.DJANGO_JOBS = {"RETENTION": {"finished": 3600, "failed": dt.timedelta(days=90), "stopped": None}}
    assert check_retention() == []
    settings.DJANGO_JOBS = {"RETENTION": None}
    assert check_retention() == []


def test_e003_unknown_key_suggests_the_close_one(settings: Any) -> None:
    settings.DJANGO_JOBS = {"SERIALISER": "json"}
    messages = check_options()
    assert ids(messages) == ["django_jobs.E003"]
    assert "'SERIALIZER'" in messages[0].hint


@pytest.mark.parametrize(
    "options",
    [
        {"PROGRESS_INTERVAL": -1},
        {"PAUSE_CHECK_INTERVAL": "2"},
        {"REDACT": "password"},
        {"REDACT": [1]},
        {"SYNCHRONOUS_START": "yes"},
        {"SYNCHRONOUS_START": 1},
    ],
)
def test_e004_admin_option_values(settings: Any, options: dict[str, Any]) -> None:
    settings.DJANGO_JOBS = options
    assert ids(check_options()) == ["django_jobs.E004"]


def test_e004_bad_option_values(settings: Any) -> None:
    settings.DJANGO_JOBS = {"SERIALIZER": "no.such.module.Serializer", "WAIT_POLL_INTERVAL": 0}
    messages = check_options()
    assert ids(messages) == ["django_jobs.E004", "django_jobs.E004"]
    settings.DJANGO_JOBS = ["not", "a", "dict"]
    assert ids(check_options()) == ["django_jobs.E004"]
    settings.DJANGO_JOBS = {"ORPHAN_GRACE": float("nan"), "RECONCILE_INTERVAL": float("inf")}
    messages = check_options()
    assert ids(messages) == ["django_jobs.E004", "django_jobs.E004"]
    assert "must be a positive number of seconds, not nan" in messages[1].msg


def test_e005_default_queue_not_configured(settings: Any) -> None:
    settings.DJANGO_JOBS = {"DEFAULT_QUEUE": "missing"}
    messages = check_options()
    assert ids(messages) == ["django_jobs.E005"]
    assert "default, high, low, emails" in messages[0].hint


def test_w001_django_rq_listed_before_django_jobs(settings: Any) -> None:
    apps = [app for app in settings.INSTALLED_APPS if app != "django_jobs"]
    with override_settings(INSTALLED_APPS=[*apps[:-1], "django_rq", "django_jobs", apps[-1]]):
        assert ids(check_app_order()) == ["django_jobs.W001"]
    with override_settings(INSTALLED_APPS=[*apps[:-1], "django_jobs", "django_rq", apps[-1]]):
        assert check_app_order() == []


def test_w002_pickle_serializer_in_either_setting(settings: Any) -> None:
    settings.DJANGO_JOBS = {"SERIALIZER": "pickle"}
    messages = check_serializer()
    assert ids(messages) == ["django_jobs.W002"]
    assert "DJANGO_JOBS['SERIALIZER']" in messages[0].msg
    settings.DJANGO_JOBS = {}
    settings.RQ_QUEUES = {"default": {**URL, "SERIALIZER": "rq.serializers.PickleSerializer"}}
    assert ids(check_serializer()) == ["django_jobs.W002"]
    settings.RQ_QUEUES = {"default": URL}
    assert check_serializer() == []


@pytest.mark.parametrize(
    "value", [{"legacy.jobs.send": True}, 42, ["legacy jobs.send"], ["legacy..send"], [""], [7]]
)
def test_e009_malformed_allowed_functions(settings: Any, value: Any) -> None:
    settings.DJANGO_JOBS = {"ALLOWED_FUNCTIONS": value}
    messages = check_allowed_functions()
    assert ids(messages) == ["django_jobs.E009"]
    assert "legacy.reports." in messages[0].hint


def test_w003_bare_wildcard_allows_every_function(settings: Any) -> None:
    settings.DJANGO_JOBS = {"ALLOWED_FUNCTIONS": ["legacy.jobs.", "*"]}
    messages = check_allowed_functions()
    assert ids(messages) == ["django_jobs.W003"]
    assert "anyone who can write to your Redis can run code" in messages[0].msg
    settings.DJANGO_JOBS = {"ALLOWED_FUNCTIONS": ["legacy.jobs.", "legacy.reports.*", "legacy.jobs.send"]}
    assert check_allowed_functions() == []


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ({"func": "os.system", "interval": 60}, "'os.system', which is not a @job function"),
        ({"func": "tests.testapp.jobs.echo"}, "Give exactly one of a cron expression"),
        ({"func": "tests.testapp.jobs.echo", "interval": -5}, "The interval must be a whole number"),
        (
            {"func": "tests.testapp.jobs.echo", "cron": "0 3 * * *", "args": ["a\x00"]},
            "holds the character NUL",
        ),
        ({"func": "tests.testapp.jobs.echo", "interval": 5, "kwargs": []}, "must be a JSON object"),
        ("every minute", "must be a dict, not str"),
    ],
)
def test_e010_malformed_schedule_entry(settings: Any, entry: Any, says: str) -> None:
    settings.DJANGO_JOBS = {"SCHEDULE": {"nightly": entry}}
    messages = check_schedule()
    assert ids(messages) == ["django_jobs.E010"]
    assert says in messages[0].msg
    settings.DJANGO_JOBS = {
        "SCHEDULE": {"nightly": {"func": "tests.testapp.jobs.echo", "interval": 60, "args": [1]}}
    }
    assert check_schedule() == []


@pytest.mark.slow
def test_checks_run_through_manage_check(manage: Any) -> None:
    result = manage("check")
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout
