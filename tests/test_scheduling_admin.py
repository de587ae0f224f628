"""The admin for periodic jobs: list, validation, enable/disable, run now, drift."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from django_jobs.models import JobRecord, PeriodicJob

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/admin/django_jobs/periodicjob/"


@pytest.fixture
def admin_client() -> Client:
    User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.login(username="root", password="pw")
    return client


def make(name: str = "sums", **fields: Any) -> PeriodicJob:
    defaults: dict[str, Any] = {
        "func_name": "tests.testapp.jobs.add",
        "args": [1, 2],
        "interval": 60,
        "next_run_at": timezone.now() + dt.timedelta(seconds=60),
    }
    return PeriodicJob.objects.create(name=name, **{**defaults, **fields})


def form_data(**overrides: Any) -> dict[str, Any]:
    data = {
        "name": "nightly",
        "func_name": "tests.testapp.jobs.add",
        "args": "[1, 2]",
        "kwargs": "{}",
        "queue": "",
        "cron": "0 3 * * *",
        "interval": "",
        "timezone": "Europe/Paris",
        "missed_runs": "skip",
        "enabled": "on",
    }
    data.update(overrides)
    return data


def test_list_shows_next_run_last_run_link_and_count(admin_client: Client) -> None:
    periodic = make()
    run = JobRecord.objects.create(
        id="run1", func_name="tests.testapp.jobs.add", queue="default", periodic_job=periodic
    )
    PeriodicJob.objects.filter(pk=periodic.pk).update(last_run=run, last_run_at=timezone.now(), total_runs=7)
    html = admin_client.get(URL).content.decode()
    assert "every 60 s" in html
    assert "/admin/django_jobs/jobrecord/run1/change/" in html
    assert ">7<" in html


def test_add_validates_function_cron_and_queue(admin_client: Client) -> None:
    response = admin_client.post(URL + "add/", form_data(func_name="tests.testapp.jobs.nope"))
    assert "is not a @job function of this project" in response.content.decode()
    response = admin_client.post(URL + "add/", form_data(cron="61 * * * *"))
    assert "not a valid cron expression" in response.content.decode()
    response = admin_client.post(URL + "add/", form_data(queue="reports"))
    assert "Unknown queue &#x27;reports&#x27;" in response.content.decode()
    response = admin_client.post(URL + "add/", form_data(cron="", interval=""))
    assert "exactly one" in response.content.decode()
    assert PeriodicJob.objects.count() == 0
    response = admin_client.post(URL + "add/", form_data())
    assert response.status_code == 302
    created = PeriodicJob.objects.get(name="nightly")
    assert created.next_run_at is not None and created.next_run_at > timezone.now()
    assert created.next_run_at.astimezone(dt.timezone(dt.timedelta(hours=1))).hour in (3, 4)  # 03:00 Paris


def test_enable_disable_and_run_now(admin_client: Client) -> None:
    periodic = make(enabled=False)
    admin_client.post(URL, {"action": "enable", "_selected_action": [periodic.pk]})
    periodic.refresh_from_db()
    assert periodic.enabled and periodic.next_run_at > timezone.now()
    admin_client.post(URL, {"action": "disable", "_selected_action": [periodic.pk]})
    assert PeriodicJob.objects.get(pk=periodic.pk).enabled is False

    before = PeriodicJob.objects.get(pk=periodic.pk).next_run_at
    response = admin_client.post(URL, {"action": "run_now", "_selected_action": [periodic.pk]}, follow=True)
    assert "Started a run of: sums" in response.content.decode()
    periodic.refresh_from_db()
    run = JobRecord.objects.get(periodic_job=periodic)
    assert run.args == [1, 2] and run.status == "queued"
    assert periodic.total_runs == 1 and periodic.last_run_id == run.id
    assert periodic.next_run_at == before  # the schedule did not move


def test_drift_of_a_code_schedule_is_shown(admin_client: Client) -> None:
    periodic = make(source="code")
    PeriodicJob.objects.filter(pk=periodic.pk).update(
        code_definition={**periodic.definition(), "interval": 30}
    )
    html = admin_client.get(URL).content.decode()
    assert '<td class="field-drift_display">interval</td>' in html


def test_staff_without_permissions_cannot_see_or_act() -> None:
    user = User.objects.create_user("staff", password="pw", is_staff=True)
    client = Client()
    client.login(username="staff", password="pw")
    periodic = make()
    assert client.get(URL).status_code == 403
    assert client.post(URL, {"action": "run_now", "_selected_action": [periodic.pk]}).status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="view_periodicjob"))
    assert client.get(URL).status_code == 200
    client.post(URL, {"action": "run_now", "_selected_action": [periodic.pk]})
    assert not JobRecord.objects.exists()  # viewing is not enough to run it
