"""``DJANGO_JOBS["PUSH"] = "background"``: the row in the caller's thread, the push in another."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import transaction
from django.test.utils import override_settings

from django_jobs import get_queue
from django_jobs.checks import check_options
from django_jobs.models import JobRecord
from django_jobs.pusher import flush
from tests.ports import closed_port
from tests.processes import run_manage
from tests.testapp.jobs import add, echo

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def background(settings: Any) -> None:
    settings.DJANGO_JOBS = {"PUSH": "background"}


@pytest.mark.slow
def test_delay_pushes_from_a_thread_and_the_jobs_run() -> None:
    handles = [add.delay(n, n) for n in range(50)]
    assert flush()
    assert sorted(get_queue("default").get_job_ids()) == sorted(h.id for h in handles)
    assert run_manage("rqworker", "--burst").returncode == 0
    assert [h.result for h in handles] == [2 * n for n in range(50)]
    pushers = [t for t in threading.enumerate() if t.name == "django-jobs-pusher"]
    assert len(pushers) == 1


def test_nothing_is_pushed_before_the_commit_nor_after_a_rollback() -> None:
    with transaction.atomic():
        kept = add.delay(1, 1)
        assert flush()
        assert get_queue("default").count == 0  # not before the commit
    with pytest.raises(RuntimeError), transaction.atomic():
        add.delay(2, 2)
        raise RuntimeError("roll back")
    assert flush()
    assert get_queue("default").get_job_ids() == [kept.id]
    assert JobRecord.objects.count() == 1


def test_canceled_before_the_commit_is_never_pushed() -> None:
    with transaction.atomic():
        handle = echo.delay("x")
        assert handle.cancel() is True
    assert flush()
    assert get_queue("high").count == 0
    assert handle.status == "canceled"


def test_redis_down_marks_the_rows_for_a_later_push() -> None:
    with override_settings(RQ_QUEUES={"default": {"URL": f"redis://127.0.0.1:{closed_port()}/0"}}):
        handles = [add.delay(n, 1) for n in range(3)]  # the caller does not wait for Redis
        assert flush(timeout=60)
    rows = JobRecord.objects.filter(pk__in=[h.id for h in handles])
    assert sorted(rows.values_list("status", "needs_push")) == [("queued", True)] * 3


def test_push_mode_is_checked(settings: Any) -> None:
    settings.DJANGO_JOBS = {"PUSH": "later"}
    messages = check_options()
    assert [m.id for m in messages] == ["django_jobs.E004"]
    assert "'immediate', 'background' or 'redis-first'" in messages[0].msg


def test_run_burst_waits_for_background_pushes() -> None:
    from django_jobs.testing import run_burst

    handles = [add.delay(n, 2) for n in range(20)]
    assert run_burst(["default"]) is True
    assert [h.result for h in handles] == [n + 2 for n in range(20)]
