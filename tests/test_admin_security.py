"""Who may see and do what in the jobs admin: every URL and every action, for every kind of user."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from django_jobs import get_queue, pauses
from django_jobs.models import JobRecord
from django_jobs.push import push
from django_jobs.spec import JobSpec

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/django_jobs/jobrecord/"
DASHBOARD = "/admin/django_jobs/jobrecord/dashboard/"
DASHBOARD_ENTRY = "/admin/django_jobs/dashboard/"
WORKER = "w-security"
ACTIONS = ("requeue_jobs", "cancel_jobs", "stop_jobs", "delete_jobs")
#: The permission each action needs (besides view), and the one for pausing queues.
PERMISSION = {
    "requeue_jobs": "requeue_jobrecord",
    "cancel_jobs": "cancel_jobrecord",
    "stop_jobs": "stop_jobrecord",
    "delete_jobs": "delete_jobrecord",
    "pause": "pause_queue",
}

ADD = "tests.testapp.jobs.add"


# -- users ---------------------------------------------------------------------------------


def login(*codenames: str, staff: bool = True, superuser: bool = False, csrf: bool = False) -> Client:
    user = User.objects.create_user(
        f"user-{uuid.uuid4().hex[:8]}", password="x", is_staff=staff, is_superuser=superuser
    )
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="django_jobs", codename__in=codenames)
    )
    assert user.user_permissions.count() == len(codenames)
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user)
    return client


ROLES: dict[str, Callable[[], Client]] = {
    "anonymous": Client,
    # Every permission, but not staff: the admin is still closed.
    "not staff": lambda: login(*PERMISSION.values(), "view_jobrecord", staff=False),
    "staff without permissions": lambda: login(),
    "view only": lambda: login("view_jobrecord"),
    "superuser": lambda: login(superuser=True),
}


# -- jobs and what changed ------------------------------------------------------------------


class Jobs:
    """One job in each status an action applies to, in the database and (where it matters) in Redis."""

    def __init__(self, redis: Any) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.redis = redis
        self.ids = {status: f"{status}-{suffix}" for status in ("queued", "failed", "started", "finished")}
        JobRecord.objects.bulk_create(
            JobRecord(
                id=job_id,
                func_name="tests.testapp.jobs.add",
                queue="high" if status == "started" else "default",
                status=status,
                args=[1, 2],
                options={},
                worker_name=WORKER if status == "started" else "",
            )
            for status, job_id in self.ids.items()
        )
        assert push(
            JobSpec(self.ids["queued"], "tests.testapp.jobs.add", "default", [1, 2], {}, {}, "default")
        )
        # A job a worker is running: RQ knows which worker, so a stop request goes to that worker.
        assert push(JobSpec(self.ids["started"], ADD, "high", [1, 2], {}, {}, "default"))
        redis.hset(f"rq:job:{self.ids['started']}", "worker_name", WORKER)
        self.pubsub = redis.pubsub()
        self.pubsub.subscribe(f"rq:pubsub:{WORKER}")
        assert self.pubsub.get_message(timeout=5)["type"] == "subscribe"
        self.before = self.state()

    def stop_requests(self) -> list[str]:
        messages = []
        while message := self.pubsub.get_message(ignore_subscribe_messages=True, timeout=0.3):
            messages.append(message["data"].decode())
        return messages

    def state(self) -> dict[str, Any]:
        return {
            "rows": dict(JobRecord.objects.values_list("pk", "status")),
            "redis": sorted(get_queue("default").get_job_ids()),
            "paused": pauses.paused(self.redis),
        }

    def assert_unchanged(self) -> None:
        assert self.state() == self.before
        assert self.stop_requests() == []

    def close(self) -> None:
        self.pubsub.close()


@pytest.fixture
def jobs(redis: Any) -> Iterator[Jobs]:
    created = Jobs(redis)
    yield created
    created.close()


def assert_login_redirect(response: Any) -> None:
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=")


def page_messages(client: Client, response: Any) -> list[str]:
    assert response.status_code == 302
    content = client.get(response["Location"]).content.decode()
    block = re.search(r'<ul class="messagelist">(.*?)</ul>', content, re.DOTALL)
    return re.findall(r"<li[^>]*>(.*?)</li>", block[1], re.DOTALL) if block else []


# -- every URL --------------------------------------------------------------------------------

URLS: dict[str, tuple[str, str, dict[str, str]]] = {
    "changelist": ("get", CHANGELIST, {}),
    "detail": ("get", CHANGELIST + "{finished}/change/", {}),
    "detail post": ("post", CHANGELIST + "{finished}/change/", {"status": "failed"}),
    "dashboard": ("get", DASHBOARD, {}),
    "pause": ("post", DASHBOARD, {"queue": "default", "do": "pause"}),
    "dashboard entry": ("get", DASHBOARD_ENTRY, {}),
    "add": ("get", CHANGELIST + "add/", {}),
    "add post": ("post", CHANGELIST + "add/", {"func_name": "x", "queue": "default"}),
    "delete": ("get", CHANGELIST + "{finished}/delete/", {}),
    "delete post": ("post", CHANGELIST + "{finished}/delete/", {"post": "yes"}),
    "history": ("get", CHANGELIST + "{finished}/history/", {}),
}

#: status code, or (302, where to) — per role and URL; anonymous and "not staff" go to the login page.
EXPECTED: dict[str, dict[str, Any]] = {
    "staff without permissions": dict.fromkeys(URLS, 403),
    "view only": {
        "changelist": 200,
        "detail": 200,
        "detail post": 403,
        "dashboard": 200,
        "pause": 403,
        "dashboard entry": (302, DASHBOARD),
        "add": 403,
        "add post": 403,
        "delete": 403,
        "delete post": 403,
        "history": 200,
    },
    "superuser": {
        "changelist": 200,
        "detail": 200,
        "detail post": 403,
        "dashboard": 200,
        "pause": (302, DASHBOARD),
        "dashboard entry": (302, DASHBOARD),
        "add": 403,
        "add post": 403,
        "delete": 200,
        "delete post": (302, "/admin/"),  # Django's way for a model no one may change
        "history": 200,
    },
}


def request(client: Client, url_name: str, jobs: Jobs) -> Any:
    method, url, data = URLS[url_name]
    return getattr(client, method)(url.format(**jobs.ids), data)


@pytest.mark.parametrize("url_name", URLS)
@pytest.mark.parametrize("role", ["anonymous", "not staff"])
def test_outsiders_are_sent_to_the_login_page(role: str, url_name: str, jobs: Jobs) -> None:
    assert_login_redirect(request(ROLES[role](), url_name, jobs))
    jobs.assert_unchanged()


@pytest.mark.parametrize("url_name", URLS)
@pytest.mark.parametrize("role", EXPECTED)
def test_every_url_for_staff(role: str, url_name: str, jobs: Jobs) -> None:
    response = request(ROLES[role](), url_name, jobs)
    expected = EXPECTED[role][url_name]
    if isinstance(expected, tuple):
        assert (response.status_code, response["Location"]) == expected
    else:
        assert response.status_code == expected
    if (role, url_name) == ("superuser", "pause"):
        assert pauses.is_paused("default")
    elif (role, url_name) == ("superuser", "delete post"):
        assert not JobRecord.objects.filter(pk=jobs.ids["finished"]).exists()
    else:
        jobs.assert_unchanged()


def test_view_permission_shows_the_listing_and_details_but_no_action_and_no_pause(jobs: Jobs) -> None:
    client = login("view_jobrecord")
    listing = client.get(CHANGELIST).content.decode()
    for job_id in jobs.ids.values():
        assert job_id[:12] in listing
    assert 'name="action"' not in listing  # no action at all, not even Django's delete_selected
    assert jobs.ids["finished"] in client.get(f"{CHANGELIST}{jobs.ids['finished']}/change/").content.decode()
    dashboard = client.get(DASHBOARD).content.decode()
    assert 'name="do"' not in dashboard  # no pause or resume button


# -- every action ------------------------------------------------------------------------------


def action_data(action: str, jobs: Jobs, *, confirm: bool) -> dict[str, Any]:
    data = {"action": action, "index": "0", "select_across": "0", "_selected_action": list(jobs.ids.values())}
    if confirm:
        data["confirm"] = "yes"
    return data


@pytest.mark.parametrize("confirm", [False, True], ids=["first post", "confirm post"])
@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("role", ["anonymous", "not staff", "staff without permissions", "view only"])
def test_actions_need_their_permission(role: str, action: str, confirm: bool, jobs: Jobs) -> None:
    client = ROLES[role]()
    response = client.post(CHANGELIST, action_data(action, jobs, confirm=confirm))
    if role in ("anonymous", "not staff"):
        assert_login_redirect(response)
    elif role == "staff without permissions":
        assert response.status_code == 403
    else:  # view only: the listing, with no action carried out
        assert response.status_code == 200
        assert "Are you sure?" not in response.content.decode()
    jobs.assert_unchanged()


def assert_done(action: str, jobs: Jobs) -> None:
    """What each action does to the fixture's four jobs, and only that."""
    after = jobs.state()
    rows, ids = after["rows"], jobs.ids
    if action == "requeue_jobs":
        assert rows == {**jobs.before["rows"], ids["failed"]: "queued"}
        assert after["redis"] == sorted([ids["queued"], ids["failed"]])
    elif action == "cancel_jobs":
        assert rows == {**jobs.before["rows"], ids["queued"]: "canceled"}
        assert after["redis"] == []
    elif action == "stop_jobs":
        assert after == jobs.before
        assert len(requests := jobs.stop_requests()) == 1 and ids["started"] in requests[0]
    else:
        assert rows == {ids["started"]: "started"}
        assert after["redis"] == []
    if action != "stop_jobs":
        assert jobs.stop_requests() == []
    assert after["paused"] == set()


@pytest.mark.parametrize("allowed", ["requeue_jobs", "cancel_jobs", "stop_jobs", "delete_jobs", "pause"])
@pytest.mark.parametrize("action", ACTIONS)
def test_each_permission_allows_exactly_its_action(action: str, allowed: str, jobs: Jobs) -> None:
    client = login("view_jobrecord", PERMISSION[allowed])
    listing = client.get(CHANGELIST).content.decode()
    offered = set(re.findall(r'<option value="(\w+)"', listing))
    assert offered == ({allowed} if allowed in ACTIONS else set())

    first = client.post(CHANGELIST, action_data(action, jobs, confirm=False))
    if action != allowed:
        if allowed in ACTIONS:  # the user has actions, just not this one
            assert page_messages(client, first) == ["No action selected."]
        else:
            assert first.status_code == 200 and "Are you sure?" not in first.content.decode()
        second = client.post(CHANGELIST, action_data(action, jobs, confirm=True))
        assert second.status_code in (200, 302)
        jobs.assert_unchanged()
        return
    assert "This applies to 4 jobs" in first.content.decode()
    jobs.assert_unchanged()  # asking is not doing
    second = client.post(CHANGELIST, action_data(action, jobs, confirm=True))
    assert second.status_code == 302
    assert_done(action, jobs)


@pytest.mark.parametrize("allowed", [*ACTIONS, "pause"])
def test_only_the_pause_permission_pauses_queues(allowed: str, jobs: Jobs) -> None:
    client = login("view_jobrecord", PERMISSION[allowed])
    response = client.post(DASHBOARD, {"queue": "default", "do": "pause"})
    buttons = 'name="do"' in client.get(DASHBOARD).content.decode()
    if allowed == "pause":
        assert (response.status_code, response["Location"]) == (302, DASHBOARD)
        assert pauses.is_paused("default")
        assert buttons
        assert client.post(DASHBOARD, {"queue": "default", "do": "resume"}).status_code == 302
        assert not pauses.is_paused("default")
    else:
        assert response.status_code == 403
        assert not buttons
        jobs.assert_unchanged()


# -- CSRF --------------------------------------------------------------------------------------


def csrf_token(client: Client) -> str:
    client.get(CHANGELIST)
    return str(client.cookies["csrftoken"].value)


@pytest.mark.parametrize("confirm", [False, True], ids=["first post", "confirm post"])
@pytest.mark.parametrize("action", ACTIONS)
def test_actions_without_a_csrf_token_are_refused(action: str, confirm: bool, jobs: Jobs) -> None:
    client = login(superuser=True, csrf=True)
    response = client.post(CHANGELIST, action_data(action, jobs, confirm=confirm))
    assert response.status_code == 403
    assert b"CSRF" in response.content
    jobs.assert_unchanged()
    # The same request with the token goes through.
    data = {**action_data(action, jobs, confirm=confirm), "csrfmiddlewaretoken": csrf_token(client)}
    response = client.post(CHANGELIST, data)
    if confirm:
        assert response.status_code == 302
        assert_done(action, jobs)
    else:
        assert response.status_code == 200 and b"Are you sure?" in response.content


def test_pause_without_a_csrf_token_is_refused(jobs: Jobs) -> None:
    client = login(superuser=True, csrf=True)
    response = client.post(DASHBOARD, {"queue": "default", "do": "pause"})
    assert response.status_code == 403
    assert b"CSRF" in response.content
    assert not pauses.is_paused("default")
    response = client.post(
        DASHBOARD, {"queue": "default", "do": "pause", "csrfmiddlewaretoken": csrf_token(client)}
    )
    assert response.status_code == 302
    assert pauses.is_paused("default")


# -- crafted input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "refresh",
    ["0;url=https://evil.example/", "1; URL=https://evil.example/", '5"><script>alert(1)</script>'],
)
def test_the_refresh_parameter_cannot_redirect_or_inject(refresh: str) -> None:
    client = login(superuser=True)
    content = client.get(DASHBOARD, {"refresh": refresh}).content.decode()
    assert "<script>alert(1)" not in content
    # A refresh may only reload this page, never send the browser to another address.
    metas = re.findall(r'<meta http-equiv="refresh" content="([^"]*)">', content)
    assert not [value for value in metas if "url" in value.lower()], metas


def test_pausing_an_unknown_queue_is_refused_not_a_server_error() -> None:
    client = login(superuser=True)
    client.raise_request_exception = False
    response = client.post(DASHBOARD, {"queue": "no-such-queue", "do": "pause"})
    assert response.status_code in (302, 400)
    assert pauses.paused(get_queue().connection) == set()


def test_job_data_is_escaped_on_every_page() -> None:
    payload = "<script>alert(1)</script>"
    JobRecord.objects.create(
        id="xss-job",
        func_name=f"tests.testapp.jobs.{payload}",
        queue="default",
        status="failed",
        args=[payload],
        kwargs={"note": payload},
        result=payload,
        error=f"ValueError: {payload}",
        error_history=[{"attempt": 1, "at": payload, "error": payload}],
        worker_name=payload,
        meta={"progress": {"done": 1, "total": 2, "percent": 50.0, "message": payload}, "x": payload},
    )
    client = login(superuser=True)
    for url in (CHANGELIST, f"{CHANGELIST}xss-job/change/", DASHBOARD, f"{CHANGELIST}?q=xss"):
        content = client.get(url).content.decode()
        assert "xss-job" in content or url == DASHBOARD
        assert payload not in content, url
