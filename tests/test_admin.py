"""The jobs admin as a user sees it: listing, detail, actions, dashboard, progress and redaction.

Real Redis, real workers (``rqworker`` subprocesses, or ``run_burst()`` in
this process) wherever a job has to run; pages are read through the Django
test client as a logged-in superuser.
"""

from __future__ import annotations

import datetime
import html
import json
import re
import threading
import uuid
from contextlib import suppress
from html.parser import HTMLParser
from typing import Any

import pytest
import redis as redis_py
from django.test import Client
from django.test.utils import override_settings
from django.utils import timezone
from rq.job import Job

from django_jobs import get_queue
from django_jobs.models import JobRecord, PendingRemoval
from django_jobs.pauses import PAUSED_KEY
from django_jobs.progress import set_progress
from django_jobs.testing import run_burst
from tests.ports import redis_away
from tests.processes import start_manage, stop, wait_for
from tests.testapp.jobs import add, charge, crunch, echo, explode, flaky, note, sleep_for

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = "/admin/django_jobs/jobrecord/"
DASHBOARD = "/admin/django_jobs/jobrecord/dashboard/"
CARD = "4111111111111111"
UTC = datetime.UTC


# -- reading pages ---------------------------------------------------------------


def page(response: Any) -> str:
    assert response.status_code == 200, response.status_code
    return str(response.content.decode())


def strip_tags(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment)).strip()


def listing_rows(content: str) -> list[dict[str, str]]:
    """The listing's rows, top to bottom: column name → the cell's HTML."""
    body = content.split('<table id="result_list">', 1)[1].split("</table>", 1)[0]
    body = body.split("<tbody>", 1)[1]
    rows = []
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.DOTALL):
        cells = re.findall(r'<t[dh] class="field-(\w+)[^"]*">(.*?)</t[dh]>', row, re.DOTALL)
        rows.append(dict(cells))
    return rows


def listing(client: Client, query: str = "") -> list[dict[str, str]]:
    content = page(client.get(CHANGELIST + query))
    if '<table id="result_list">' not in content:
        return []
    return listing_rows(content)


def shown_ids(client: Client, query: str = "") -> list[str]:
    """The short ids the listing shows, top to bottom."""
    return [strip_tags(row["short_id"]) for row in listing(client, query)]


def page_messages(content: str) -> list[str]:
    block = re.search(r'<ul class="messagelist">(.*?)</ul>', content, re.DOTALL)
    return (
        [strip_tags(item) for item in re.findall(r"<li[^>]*>(.*?)</li>", block[1], re.DOTALL)]
        if block
        else []
    )


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[list[tuple[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "form":
            self.forms.append([])
        elif tag == "input" and self.forms and values.get("name"):
            self.forms[-1].append((str(values["name"]), values.get("value") or ""))


def confirmation_form(content: str) -> dict[str, list[str]]:
    """The fields the confirmation page's "Yes, I'm sure" button posts."""
    parser = _Forms()
    parser.feed(content)
    for form in parser.forms:
        if ("confirm", "yes") in form:
            data: dict[str, list[str]] = {}
            for name, value in form:
                data.setdefault(name, []).append(value)
            return data
    raise AssertionError("the page has no confirmation form")


def confirm_count(content: str) -> str:
    found = re.search(r'<p class="dj-confirm-count">(.*?)</p>', content, re.DOTALL)
    assert found, "no count on the confirmation page"
    return " ".join(strip_tags(found[1]).split())


def run_action(
    client: Client,
    action: str,
    selected: list[str],
    *,
    query: str = "",
    select_across: bool = False,
) -> tuple[str, str]:
    """Choose an action in the listing, then confirm it; return (confirmation page, listing after)."""
    url = CHANGELIST + query
    first = client.post(
        url,
        {
            "action": action,
            "index": "0",
            "select_across": "1" if select_across else "0",
            "_selected_action": selected,
        },
    )
    confirmation = page(first)
    assert "Are you sure?" in confirmation
    second = client.post(url, confirmation_form(confirmation))
    assert second.status_code == 302, second.status_code
    return confirmation, page(client.get(second["Location"]))


def make_rows(count: int, *, prefix: str, status: str, queue: str = "default", **fields: Any) -> list[str]:
    """Insert ``count`` rows at once (no Redis), as enqueued jobs would have them."""
    fields.setdefault("func_name", "tests.testapp.jobs.add")
    records = [
        JobRecord(
            id=f"{prefix}-{index:06d}",
            queue=queue,
            status=status,
            args=[index, 1],
            kwargs={},
            options={"timeout": 60},
            **fields,
        )
        for index in range(count)
    ]
    JobRecord.objects.bulk_create(records, batch_size=2000)
    return [record.id for record in records]


def in_redis(job_id: str) -> bool:
    return bool(Job.exists(job_id, connection=get_queue().connection))


# -- listing ---------------------------------------------------------------------


def test_listing_shows_the_columns_of_each_job(admin_client: Client) -> None:
    ok, bad = add.delay(2, 3), explode.delay("boom")
    waiting = echo.delay("later")
    assert run_burst(["default", "low"])
    rows = {strip_tags(row["short_id"]): row for row in listing(admin_client)}
    assert set(rows) == {ok.id[:12], bad.id[:12], waiting.id[:12]}

    finished = rows[ok.id[:12]]
    record = JobRecord.objects.get(pk=ok.id)
    assert f"/admin/django_jobs/jobrecord/{ok.id}/change/" in finished["short_id"]
    assert strip_tags(finished["func_name"]) == "tests.testapp.jobs.add"
    assert strip_tags(finished["queue"]) == "default"
    assert "class='dj-badge dj-finished dj-tone-good'" in finished["status_badge"]
    assert strip_tags(finished["status_badge"]) == "finished"
    assert strip_tags(finished["attempts"]) == "1"
    assert strip_tags(finished["enqueued_at"]) not in ("", "-")
    assert strip_tags(finished["started_at"]) not in ("", "-")
    assert re.fullmatch(r"\d+ ms", strip_tags(finished["duration_display"]))
    assert strip_tags(finished["worker_name"]) == record.worker_name != ""
    assert strip_tags(finished["progress_display"]) == "-"

    failed = rows[bad.id[:12]]
    assert "class='dj-badge dj-failed dj-tone-bad'" in failed["status_badge"]
    assert strip_tags(failed["queue"]) == "low"

    queued = rows[waiting.id[:12]]
    assert "class='dj-badge dj-queued dj-tone-waiting'" in queued["status_badge"]
    assert strip_tags(queued["attempts"]) == "0"
    assert strip_tags(queued["started_at"]) == "-"
    assert strip_tags(queued["duration_display"]) == "-"


def test_listing_is_newest_first(admin_client: Client) -> None:
    now = timezone.now()
    for minutes, name in ((30, "middle"), (60, "oldest"), (1, "newest")):
        make_rows(1, prefix=name, status="queued", enqueued_at=now - datetime.timedelta(minutes=minutes))
    assert shown_ids(admin_client) == ["newest-00000", "middle-00000", "oldest-00000"]


def test_filter_choices_come_from_statuses_settings_and_the_registry(admin_client: Client) -> None:
    content = page(admin_client.get(CHANGELIST))
    for status in ("scheduled", "queued", "deferred", "started", "finished", "failed", "canceled", "stopped"):
        assert f'href="?status={status}"' in content
    for queue in ("default", "high", "low", "emails"):  # no job ever ran on most of them
        assert f'href="?queue={queue}"' in content
    for name in ("add", "charge", "crunch", "flaky", "sleep_for"):
        assert f'href="?func_name=tests.testapp.jobs.{name}"' in content


def test_filters_by_status_queue_and_function(admin_client: Client) -> None:
    make_rows(2, prefix="add-failed", status="failed", queue="default")
    make_rows(1, prefix="add-queued", status="queued", queue="default")
    make_rows(1, prefix="echo-failed", status="failed", queue="high", func_name="tests.testapp.jobs.echo")
    failed = sorted(shown_ids(admin_client, "?status=failed"))
    assert failed == ["add-failed-0", "add-failed-0", "echo-failed-"]
    assert shown_ids(admin_client, "?queue=high") == ["echo-failed-"]
    assert sorted(shown_ids(admin_client, "?func_name=tests.testapp.jobs.add")) == [
        "add-failed-0",
        "add-failed-0",
        "add-queued-0",
    ]
    assert shown_ids(admin_client, "?status=failed&queue=high") == ["echo-failed-"]
    assert shown_ids(admin_client, "?status=finished") == []
    assert len(listing(admin_client, "?status=failed&queue=default")) == 2


def test_date_hierarchy_drills_down_by_year_month_and_day(admin_client: Client) -> None:
    for prefix, moment in (
        ("may", datetime.datetime(2023, 5, 10, 12, tzinfo=UTC)),
        ("july", datetime.datetime(2023, 7, 1, 12, tzinfo=UTC)),
        ("feb", datetime.datetime(2024, 2, 3, 12, tzinfo=UTC)),
    ):
        make_rows(1, prefix=prefix, status="finished", enqueued_at=moment)
    content = page(admin_client.get(CHANGELIST))
    assert "?enqueued_at__year=2023" in content and "?enqueued_at__year=2024" in content

    year = page(admin_client.get(CHANGELIST + "?enqueued_at__year=2023"))
    assert sorted(strip_tags(row["short_id"]) for row in listing_rows(year)) == ["july-000000", "may-000000"]
    assert "enqueued_at__month=5" in year and "enqueued_at__month=7" in year
    assert "enqueued_at__month=8" not in year

    month = page(admin_client.get(CHANGELIST + "?enqueued_at__year=2023&enqueued_at__month=5"))
    assert [strip_tags(row["short_id"]) for row in listing_rows(month)] == ["may-000000"]
    assert "enqueued_at__day=10" in month

    day = "?enqueued_at__year=2023&enqueued_at__month=5&enqueued_at__day=10"
    assert shown_ids(admin_client, day) == ["may-000000"]
    assert shown_ids(admin_client, "?enqueued_at__year=2023&enqueued_at__month=5&enqueued_at__day=11") == []


def test_search_by_exact_id_id_prefix_and_function(admin_client: Client) -> None:
    first, second = add.delay(1, 1), add.delay(2, 2)
    other = echo.delay("x")
    assert shown_ids(admin_client, f"?q={first.id}") == [first.id[:12]]
    assert shown_ids(admin_client, f"?q={second.id[:6]}") == [second.id[:12]]
    assert sorted(shown_ids(admin_client, "?q=tests.testapp.jobs.add")) == sorted(
        [first.id[:12], second.id[:12]]
    )
    assert shown_ids(admin_client, "?q=echo") == [other.id[:12]]
    assert shown_ids(admin_client, "?q=no-such-job") == []


def test_no_add_button_and_no_edit_form(admin_client: Client) -> None:
    handle = add.delay(1, 1)
    content = page(admin_client.get(CHANGELIST))
    assert "/admin/django_jobs/jobrecord/add/" not in content
    assert admin_client.get(CHANGELIST + "add/").status_code == 403
    detail = page(admin_client.get(f"{CHANGELIST}{handle.id}/change/"))
    assert 'name="_save"' not in detail and 'name="_continue"' not in detail
    assert 'name="func_name"' not in detail and 'name="status"' not in detail
    # Posting to the detail page changes nothing either.
    admin_client.post(f"{CHANGELIST}{handle.id}/change/", {"status": "finished", "func_name": "x"})
    assert JobRecord.objects.get(pk=handle.id).status == "queued"


@pytest.fixture
def many_rows() -> list[str]:
    """10,050 finished jobs, one a second, the oldest last: more than the listing counts."""
    start = timezone.now()
    rows = [
        JobRecord(
            id=f"many-{index:06d}",
            func_name="tests.testapp.jobs.add",
            queue="default",
            status="finished",
            enqueued_at=start - datetime.timedelta(seconds=index),
        )
        for index in range(10_050)
    ]
    JobRecord.objects.bulk_create(rows, batch_size=2000)
    return [row.id for row in rows]


def test_listing_over_the_count_cap_does_not_claim_a_wrong_total(
    admin_client: Client, many_rows: list[str]
) -> None:
    content = page(admin_client.get(CHANGELIST))
    assert len(listing_rows(content)) == 50
    # The listing may say "10,000+" (where its count stops) or the true count; 10001 is neither.
    assert not re.search(r"\b10001 (jobs|results)|All 10001 selected|Select all 10001", content)


def test_paging_reaches_the_oldest_job_beyond_the_count_cap(
    admin_client: Client, many_rows: list[str]
) -> None:
    content = page(admin_client.get(CHANGELIST))
    last = max(int(number) for number in re.findall(r'href="\?p=(\d+)"', content))
    assert shown_ids(admin_client, f"?p={last}")[-1] == many_rows[-1][:12]


# -- detail ------------------------------------------------------------------------


def detail(client: Client, job_id: str) -> str:
    return page(client.get(f"{CHANGELIST}{job_id}/change/"))


def pretty(value: Any) -> str:
    return html.escape(json.dumps(value, indent=2, ensure_ascii=False))


def test_detail_shows_arguments_and_result_as_pretty_json(admin_client: Client) -> None:
    value = {"flag": True, "nested": [1, "two"]}  # in PostgreSQL's jsonb key order
    handle = echo.apply_async(kwargs={"value": value})
    positional = add.delay(20, 22)
    assert run_burst(["high", "default"])
    content = detail(admin_client, handle.id)
    assert f"<pre class='dj-json'>{pretty({'value': value})}</pre>" in content  # keyword arguments
    assert f"<pre class='dj-json'>{pretty(value)}</pre>" in content  # result
    assert f"<pre class='dj-json'>{pretty([])}</pre>" in content  # no positional arguments
    content = detail(admin_client, positional.id)
    assert f"<pre class='dj-json'>{pretty([20, 22])}</pre>" in content
    assert "<pre class='dj-json'>42</pre>" in content
    assert JobRecord.objects.get(pk=positional.id).worker_name in content


def test_detail_of_a_failed_job_shows_the_full_traceback(admin_client: Client) -> None:
    handle = explode.delay("card declined")
    run_burst(["low"])
    content = detail(admin_client, handle.id)
    traceback = re.search(r"<pre class='dj-traceback'>(.*?)</pre>", content, re.DOTALL)
    assert traceback
    text = html.unescape(traceback[1])
    assert text.startswith("Traceback (most recent call last)")
    assert 'tests/testapp/jobs.py", line' in text
    assert text.strip().endswith("ValueError: card declined")
    assert "class='dj-badge dj-failed dj-tone-bad'" in content


@pytest.mark.slow
def test_detail_of_a_retried_job_shows_the_error_of_every_attempt(
    admin_client: Client, manage: Any, tmp_path: Any
) -> None:
    marker = tmp_path / "count"
    handle = flaky.delay(str(marker))  # fails twice, then succeeds on its last retry
    assert manage("rqworker", "emails", "--burst").returncode == 0
    content = detail(admin_client, handle.id)
    attempts = re.findall(r"<summary>Attempt (\d+) · ([^<]+)</summary>", content)
    assert [number for number, _ in attempts] == ["1", "2"]
    assert "RuntimeError: attempt 1 fails" in content and "RuntimeError: attempt 2 fails" in content
    assert "class='dj-badge dj-finished dj-tone-good'" in content
    assert "<pre class='dj-json'>&quot;ok after 3&quot;</pre>" in content

    marker.write_text("-5")  # now every attempt fails
    always = flaky.delay(str(marker))
    assert manage("rqworker", "emails", "--burst").returncode == 0
    content = detail(admin_client, always.id)
    assert re.findall(r"<summary>Attempt (\d+) · ", content) == ["1", "2", "3"]
    for count in (-4, -3, -2):
        assert f"RuntimeError: attempt {count} fails" in content


def test_detail_shows_timings_and_the_worker(admin_client: Client) -> None:
    make_rows(
        1,
        prefix="timed",
        status="finished",
        enqueued_at=datetime.datetime(2024, 1, 2, 3, 0, tzinfo=UTC),
        started_at=datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        ended_at=datetime.datetime(2024, 1, 2, 3, 5, 35, tzinfo=UTC),
        worker_name="worker-on-host-7",
        result=2,
    )
    content = detail(admin_client, "timed-000000")
    for label in ("Enqueued at", "Started at", "Ended at", "Duration", "Worker"):
        assert label in content
    assert "Jan. 2, 2024, 3 a.m." in content
    assert "Jan. 2, 2024, 3:04 a.m." in content
    assert "Jan. 2, 2024, 3:05 a.m." in content
    assert "0:01:30" in content
    assert "worker-on-host-7" in content


def test_detail_links_the_jobs_it_waits_for_and_that_wait_for_it(admin_client: Client) -> None:
    first = add.delay(1, 1)
    second = add.apply_async((2, 2), depends_on=first)
    third = add.apply_async((3, 3), depends_on=[first, second])
    content = detail(admin_client, third.id)
    assert f"<a href='{CHANGELIST}{first.id}/change/'>{first.id[:12]}</a>" in content
    assert f"<a href='{CHANGELIST}{second.id}/change/'>{second.id[:12]}</a>" in content
    content = detail(admin_client, first.id)
    assert f"<a href='{CHANGELIST}{second.id}/change/'>{second.id[:12]}</a>" in content
    assert f"<a href='{CHANGELIST}{third.id}/change/'>{third.id[:12]}</a>" in content
    assert "class='dj-badge dj-deferred dj-tone-waiting'" in detail(admin_client, second.id)


# -- progress -------------------------------------------------------------------------


@pytest.mark.slow
def test_progress_is_throttled_and_shown_as_a_bar(admin_client: Client, manage: Any) -> None:
    handle = crunch.delay(1000)
    result = manage("rqworker", "--burst")
    assert result.returncode == 0, result.stderr
    record = JobRecord.objects.get(pk=handle.id)
    assert record.status == "finished"
    assert 1 <= record.result <= 10  # 1,000 reports, a handful of writes
    progress = record.meta["progress"]
    assert (progress["done"], progress["total"], progress["percent"]) == (1000, 1000, 100.0)
    assert progress["message"] == "step 1000"

    bar = "<div class='dj-progress-bar' style='width:100.0%'></div>"
    assert bar in detail(admin_client, handle.id)
    assert "1000/1000 · step 1000" in detail(admin_client, handle.id)
    row = next(r for r in listing(admin_client) if strip_tags(r["short_id"]) == handle.id[:12])
    assert bar in row["progress_display"]
    assert strip_tags(row["progress_display"]) == "1000/1000 · step 1000"


def test_progress_bar_of_a_job_half_way(admin_client: Client) -> None:
    make_rows(
        1,
        prefix="half",
        status="started",
        meta={"progress": {"done": 250, "total": 1000, "percent": 25.0, "message": None}},
    )
    row = listing(admin_client)[0]
    assert "style='width:25.0%'" in row["progress_display"]
    assert strip_tags(row["progress_display"]) == "250/1000"


def test_every_report_is_written_when_the_interval_is_zero() -> None:
    with override_settings(DJANGO_JOBS={"PROGRESS_INTERVAL": 0}):
        handle = crunch.delay(5)
        run_burst(["default"])
    assert JobRecord.objects.get(pk=handle.id).result == 5


def test_set_progress_outside_a_job_does_nothing() -> None:
    assert set_progress(1, 2) is False
    assert set_progress(2, 2, force=True) is False


# -- actions ---------------------------------------------------------------------------


@pytest.mark.slow
def test_requeue_a_failed_job_runs_it_again(admin_client: Client, manage: Any, tmp_path: Any) -> None:
    marker = tmp_path / "count"
    marker.write_text("-1")  # three failing calls (one try, two retries), then success
    handle = flaky.delay(str(marker))
    done = add.delay(1, 1)
    assert manage("rqworker", "emails", "default", "--burst").returncode == 0
    record = JobRecord.objects.get(pk=handle.id)
    assert (record.status, record.attempts, len(record.error_history)) == ("failed", 3, 3)
    assert handle.id in get_queue("emails").failed_job_registry.get_job_ids()

    confirmation, after = run_action(admin_client, "requeue_jobs", [handle.id, done.id])
    assert confirm_count(confirmation).startswith("This applies to 2 jobs matching your selection.")
    assert page_messages(after) == ["1 job requeued; skipped: 1 because they were finished."]
    record = JobRecord.objects.get(pk=handle.id)
    assert (record.status, record.attempts, len(record.error_history)) == ("queued", 3, 3)
    assert "RuntimeError: attempt 2 fails" in record.error
    assert get_queue("emails").get_job_ids() == [handle.id]
    assert handle.id not in get_queue("emails").failed_job_registry.get_job_ids()
    assert JobRecord.objects.get(pk=done.id).status == "finished"

    assert manage("rqworker", "emails", "--burst").returncode == 0
    record = JobRecord.objects.get(pk=handle.id)
    assert (record.status, record.result, record.attempts) == ("finished", "ok after 3", 4)
    assert [item["attempt"] for item in record.error_history] == [1, 2, 3]
    content = detail(admin_client, handle.id)
    assert re.findall(r"<summary>Attempt (\d+) · ", content) == ["1", "2", "3"]


def test_the_first_post_only_asks_for_confirmation(admin_client: Client) -> None:
    handle = add.delay(1, 1)
    response = admin_client.post(
        CHANGELIST, {"action": "cancel_jobs", "index": "0", "_selected_action": [handle.id]}
    )
    content = page(response)
    assert confirm_count(content).startswith("This applies to 1 job matching your selection.")
    assert handle.id[:11] in content  # the sample of the jobs it applies to
    assert JobRecord.objects.get(pk=handle.id).status == "queued"
    assert get_queue().get_job_ids() == [handle.id]


def test_confirmation_page_offers_a_working_way_back(admin_client: Client) -> None:
    handle = add.delay(1, 1)
    content = page(
        admin_client.post(
            CHANGELIST, {"action": "cancel_jobs", "index": "0", "_selected_action": [handle.id]}
        )
    )
    back = re.search(r'<a href="([^"]*)" class="button cancel-link">', content)
    assert back
    # Django's own confirmation pages load cancel.js, which makes this link go back; a bare "#" does nothing.
    assert back[1] != "#" or "admin/js/cancel.js" in content


@pytest.mark.slow
def test_cancel_a_queued_job_removes_it_from_redis_and_it_never_runs(
    admin_client: Client, manage: Any
) -> None:
    handle, other = add.delay(1, 1), add.delay(2, 2)
    finished = make_rows(1, prefix="over", status="finished")
    _, after = run_action(admin_client, "cancel_jobs", [handle.id, *finished])
    assert page_messages(after) == ["1 job canceled; skipped: 1 because they were finished."]
    assert JobRecord.objects.get(pk=handle.id).status == "canceled"
    assert get_queue().get_job_ids() == [other.id]
    assert manage("rqworker", "--burst").returncode == 0
    record = JobRecord.objects.get(pk=handle.id)
    assert (record.status, record.attempts, record.started_at) == ("canceled", 0, None)
    assert JobRecord.objects.get(pk=other.id).status == "finished"
    row = next(r for r in listing(admin_client) if strip_tags(r["short_id"]) == handle.id[:12])
    assert "class='dj-badge dj-canceled dj-tone-ended'" in row["status_badge"]


def test_cancel_all_matching_the_filter(admin_client: Client) -> None:
    low = [explode.delay(f"n{index}") for index in range(3)]
    kept = add.delay(1, 1)
    confirmation, after = run_action(
        admin_client, "cancel_jobs", [low[0].id], query="?queue=low", select_across=True
    )
    assert confirm_count(confirmation).startswith("This applies to 3 jobs")
    assert page_messages(after) == ["3 jobs canceled."]
    assert set(JobRecord.objects.filter(queue="low").values_list("status", flat=True)) == {"canceled"}
    assert get_queue("low").count == 0
    assert JobRecord.objects.get(pk=kept.id).status == "queued"
    assert get_queue().get_job_ids() == [kept.id]


@pytest.mark.slow
def test_stop_a_running_job_from_the_admin(admin_client: Client) -> None:
    handle = sleep_for.delay(60)
    waiting = make_rows(1, prefix="waiting", status="queued", queue="low")
    worker = start_manage("rqworker", "default", "--name", "w-admin-stop")
    try:
        wait_for(lambda: handle.status == "started")
        _, after = run_action(admin_client, "stop_jobs", [handle.id, *waiting])
        assert page_messages(after) == ["1 job asked to stop; skipped: 1 because they were queued."]
        wait_for(lambda: handle.status == "stopped")
        record = JobRecord.objects.get(pk=handle.id)
        assert record.ended_at is not None and record.result is None
        assert "class='dj-badge dj-stopped dj-tone-ended'" in detail(admin_client, handle.id)
    finally:
        stop(worker)


@pytest.mark.slow
def test_stop_all_running_jobs_matching_the_filter(admin_client: Client) -> None:
    handle = sleep_for.delay(60)
    queued = add.delay(1, 1)
    worker = start_manage("rqworker", "default", "--name", "w-admin-stop-filter")
    try:
        wait_for(lambda: handle.status == "started")
        _, after = run_action(
            admin_client, "stop_jobs", [handle.id], query="?status=started", select_across=True
        )
        assert page_messages(after) == ["1 job asked to stop."]
        wait_for(lambda: handle.status == "stopped")
        assert queued.wait(timeout=60) == 2  # the worker goes on with the next job
    finally:
        stop(worker)


def test_delete_selected_rows_and_their_redis_jobs(admin_client: Client) -> None:
    queued, kept = add.delay(1, 1), add.delay(2, 2)
    old = make_rows(2, prefix="old", status="finished")
    running = make_rows(1, prefix="running", status="started")
    _, after = run_action(admin_client, "delete_jobs", [queued.id, *old, *running])
    assert page_messages(after) == ["3 jobs deleted; skipped: 1 because they were running."]
    assert set(JobRecord.objects.values_list("pk", flat=True)) == {kept.id, *running}
    assert not in_redis(queued.id)
    assert get_queue().get_job_ids() == [kept.id]


def test_delete_all_matching_the_filter(admin_client: Client) -> None:
    make_rows(5, prefix="done", status="finished")
    failed = make_rows(2, prefix="bad", status="failed")
    confirmation, after = run_action(
        admin_client, "delete_jobs", ["done-000000"], query="?status=finished", select_across=True
    )
    assert confirm_count(confirmation).startswith("This applies to 5 jobs")
    assert page_messages(after) == ["5 jobs deleted."]
    assert sorted(JobRecord.objects.values_list("pk", flat=True)) == failed


def test_deleting_a_job_from_its_own_page_also_takes_it_out_of_redis(admin_client: Client) -> None:
    handle = add.delay(1, 1)
    response = admin_client.post(f"{CHANGELIST}{handle.id}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not JobRecord.objects.filter(pk=handle.id).exists()
    # Like the delete action: otherwise a worker still runs the "deleted" job and its row comes back.
    assert get_queue().get_job_ids() == []
    run_burst(["default"])
    assert not JobRecord.objects.filter(pk=handle.id).exists()


def test_deleting_a_running_job_from_its_page_does_not_report_success(admin_client: Client) -> None:
    running = make_rows(1, prefix="busy", status="started")[0]
    response = admin_client.post(f"{CHANGELIST}{running}/delete/", {"post": "yes"}, follow=True)
    # Running jobs are left alone (as by the delete action): the delete page refuses.
    assert response.status_code == 403
    assert JobRecord.objects.filter(pk=running).exists()


def test_cancel_more_rows_than_one_batch_across_the_filter(admin_client: Client) -> None:
    ids = make_rows(10_050, prefix="bulk", status="queued", queue="low")
    make_rows(3, prefix="bulk-done", status="finished", queue="low")
    other = make_rows(2, prefix="elsewhere", status="queued", queue="default")
    confirmation, after = run_action(
        admin_client, "cancel_jobs", ids[:50], query="?queue=low", select_across=True
    )
    assert confirm_count(confirmation).startswith("This applies to 10053 jobs")
    assert page_messages(after) == ["10050 jobs canceled; skipped: 3 because they were finished."]
    assert JobRecord.objects.filter(queue="low", status="canceled").count() == 10_050
    assert JobRecord.objects.filter(queue="low", status="finished").count() == 3
    assert set(JobRecord.objects.filter(pk__in=other).values_list("status", flat=True)) == {"queued"}


def test_requeue_more_rows_than_one_batch_across_the_filter(admin_client: Client) -> None:
    make_rows(10_050, prefix="again", status="failed", queue="low", func_name="tests.testapp.jobs.explode")
    make_rows(2, prefix="fine", status="finished", queue="low")
    _, after = run_action(
        admin_client, "requeue_jobs", ["again-000000"], query="?queue=low", select_across=True
    )
    assert page_messages(after) == ["10050 jobs requeued; skipped: 2 because they were finished."]
    assert JobRecord.objects.filter(status="queued").count() == 10_050
    assert get_queue("low").count == 10_050


def test_a_canceled_job_that_was_never_in_redis_runs_when_requeued(admin_client: Client) -> None:
    # A queued row that is not in Redis: its push failed (Redis was away) or Redis lost it.
    row = make_rows(1, prefix="lost", status="queued", needs_push=True)[0]
    _, after = run_action(admin_client, "cancel_jobs", [row])
    assert page_messages(after) == ["1 job canceled."]
    _, after = run_action(admin_client, "requeue_jobs", [row])
    assert page_messages(after) == ["1 job requeued."]
    assert JobRecord.objects.get(pk=row).status == "queued"
    assert get_queue().get_job_ids() == [row]
    run_burst(["default"])
    assert JobRecord.objects.get(pk=row).status == "finished"


def redis_later(verb: str) -> str:
    return (
        "Redis could not be reached; it will be cleaned up when it is back, and meanwhile no "
        f"worker runs what was {verb}."
    )


def test_cancel_with_redis_down_cancels_the_row_and_no_worker_runs_the_job(
    admin_client: Client, redis: Any
) -> None:
    handle, kept = note.delay("runs", "canceled"), note.delay("runs", "kept")
    finished = make_rows(1, prefix="over", status="finished")
    with redis_away():
        _, after = run_action(admin_client, "cancel_jobs", [handle.id, *finished])
    assert page_messages(after) == [
        f"1 job canceled; skipped: 1 because they were finished. {redis_later('canceled')}"
    ]
    assert JobRecord.objects.get(pk=handle.id).status == "canceled"
    # Redis is back, and still holds the job: a worker takes it, and skips it.
    assert get_queue().get_job_ids() == [handle.id, kept.id]
    run_burst(["default"])
    assert redis.lrange("runs", 0, -1) == [b"kept"]
    record = JobRecord.objects.get(pk=handle.id)
    assert (record.status, record.attempts, record.started_at) == ("canceled", 0, None)
    assert JobRecord.objects.get(pk=kept.id).status == "finished"
    # Out of its queue and registries, canceled in RQ: as a cancel with Redis up leaves it.
    queue = get_queue()
    assert queue.get_job_ids() == [] and queue.started_job_registry.get_job_ids() == []
    assert queue.canceled_job_registry.get_job_ids() == [handle.id]
    assert PendingRemoval.objects.get(pk=handle.id).removed_at is not None


def test_delete_with_redis_down_deletes_the_row_and_no_worker_runs_the_job(
    admin_client: Client, redis: Any
) -> None:
    handle, kept = note.delay("runs", "deleted"), note.delay("runs", "kept")
    # Enqueued with plain RQ: no row of ours, and it runs as ever (it gets one when it starts).
    plain = get_queue().enqueue("tests.testapp.jobs.note", "runs", "plain")
    with redis_away():
        _, after = run_action(admin_client, "delete_jobs", [handle.id])
    assert page_messages(after) == [f"1 job deleted. {redis_later('deleted')}"]
    assert not JobRecord.objects.filter(pk=handle.id).exists()
    assert in_redis(handle.id)
    run_burst(["default"])
    assert redis.lrange("runs", 0, -1) == [b"kept", b"plain"]
    assert not JobRecord.objects.filter(pk=handle.id).exists()  # the worker did not bring it back
    assert JobRecord.objects.get(pk=plain.id).status == "finished"
    assert JobRecord.objects.get(pk=kept.id).status == "finished"
    assert not in_redis(handle.id)
    assert get_queue().get_job_ids() == [] and get_queue().started_job_registry.get_job_ids() == []


def test_deleting_a_job_from_its_page_with_redis_down(admin_client: Client, redis: Any) -> None:
    handle = note.delay("runs", "deleted")
    with redis_away():
        response = admin_client.post(f"{CHANGELIST}{handle.id}/delete/", {"post": "yes"}, follow=True)
    messages = page_messages(page(response))
    assert redis_later("deleted") in messages
    assert any("was deleted successfully" in message for message in messages)
    assert not JobRecord.objects.filter(pk=handle.id).exists()
    run_burst(["default"])
    assert redis.lrange("runs", 0, -1) == []
    assert not JobRecord.objects.filter(pk=handle.id).exists()
    assert not in_redis(handle.id)


def test_requeue_after_a_cancel_with_redis_down_runs_the_job_once(admin_client: Client, redis: Any) -> None:
    handle = note.delay("runs", "again")
    with redis_away():
        run_action(admin_client, "cancel_jobs", [handle.id])
    _, after = run_action(admin_client, "requeue_jobs", [handle.id])
    assert page_messages(after) == ["1 job requeued."]
    # The job Redis kept from before the cancel went first: the queue holds it once.
    assert get_queue().get_job_ids() == [handle.id]
    assert not PendingRemoval.objects.filter(pk=handle.id).exists()
    run_burst(["default"])
    assert redis.lrange("runs", 0, -1) == [b"again"]
    assert JobRecord.objects.get(pk=handle.id).status == "finished"


# -- dashboard -------------------------------------------------------------------------------


def queue_row(content: str, name: str) -> str:
    found = re.search(rf'<tr data-queue="{name}">(.*?)</tr>', content, re.DOTALL)
    assert found, f"no row for queue {name}"
    return str(found[1])


def redis_counts(content: str, name: str) -> dict[str, int]:
    cells = re.findall(r'<td class="num">(\d+)</td>', queue_row(content, name))
    return dict(zip(("queued", "started", "scheduled", "deferred", "failed"), map(int, cells), strict=True))


def database_counts(content: str, name: str) -> dict[str, int]:
    badges = re.findall(
        r'<span class="dj-badge dj-(\w+) dj-tone-\w+">\w+ (\d+)</span>', queue_row(content, name)
    )
    return {status: int(count) for status, count in badges}


def test_dashboard_shows_redis_and_database_counts_per_queue(admin_client: Client) -> None:
    first, _ = add.delay(1, 1), add.delay(2, 2)
    add.apply_async((3, 3), depends_on=first)
    get_queue().enqueue_in(datetime.timedelta(hours=1), "tests.testapp.jobs.add", 4, 4)
    explode.delay("boom")
    echo.delay("hi")
    run_burst(["low", "high"])
    make_rows(2, prefix="old", status="canceled", queue="emails", ended_at=timezone.now())

    content = page(admin_client.get(DASHBOARD))
    assert redis_counts(content, "default") == {
        "queued": 2,
        "started": 0,
        "scheduled": 1,
        "deferred": 1,
        "failed": 0,
    }
    assert database_counts(content, "default") == {"queued": 2, "deferred": 1}
    assert redis_counts(content, "low") == {
        "queued": 0,
        "started": 0,
        "scheduled": 0,
        "deferred": 0,
        "failed": 1,
    }
    assert database_counts(content, "low") == {"failed": 1}
    assert database_counts(content, "high") == {"finished": 1}
    assert database_counts(content, "emails") == {"canceled": 2}
    assert redis_counts(content, "emails")["queued"] == 0
    assert f'href="{CHANGELIST}?queue=low&amp;status=failed"' in content


@pytest.mark.slow
def test_dashboard_lists_running_workers_and_their_current_job(admin_client: Client) -> None:
    handle = sleep_for.delay(60)
    worker = start_manage("rqworker", "default", "high", "--name", "w-dashboard")
    try:
        wait_for(lambda: handle.status == "started")
        content = page(admin_client.get(DASHBOARD))
        workers = content.split('<table id="dj-workers">', 1)[1].split("</table>", 1)[0]
        row = re.search(r"<tr><td>w-dashboard</td>(.*?)</tr>", workers, re.DOTALL)
        assert row, workers
        assert "<td>busy</td>" in row[1]
        assert f"{CHANGELIST}{handle.id}/change/" in row[1]
        assert "default, high" in row[1]
        assert redis_counts(content, "default")["started"] == 1
        assert database_counts(content, "default") == {"started": 1}
        handle.stop()
        wait_for(lambda: handle.status == "stopped")
    finally:
        stop(worker)
    content = page(admin_client.get(DASHBOARD))
    assert "w-dashboard" not in content
    assert "No worker is running" in content


class RedisCommands:
    """The commands Redis runs while this is open, in Redis's order, from its MONITOR feed."""

    def __init__(self, url: str) -> None:
        self.client = redis_py.Redis.from_url(url)  # a connection of its own for the feed
        self.commands: list[str] = []

    def __enter__(self) -> RedisCommands:
        self.monitor = self.client.monitor().__enter__()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        return self

    def _read(self) -> None:
        with suppress(Exception):  # until __exit__ closes the connection
            while True:
                with suppress(redis_py.TimeoutError):
                    self.commands.append(self.monitor.next_command()["command"])

    def __exit__(self, *exc: object) -> None:
        self.monitor.connection.disconnect()
        self.reader.join(30)
        self.monitor.__exit__()
        self.client.close()

    def mark(self) -> int:
        """Send a command of this test's own; return the number of commands up to it."""
        token = f"mark-{uuid.uuid4().hex}"
        self.client.echo(token)
        wait_for(lambda: f"ECHO {token}" in self.commands)
        return self.commands.index(f"ECHO {token}") + 1

    def count_since(self, position: int, command: str) -> int:
        return self.commands[position:].count(command)


#: What a worker sends to read the paused queues (nothing else sends it).
READ_PAUSES = f"SMEMBERS {PAUSED_KEY}"


@pytest.mark.slow
def test_pause_and_resume_a_queue_from_the_dashboard(admin_client: Client, redis_url: str) -> None:
    worker = start_manage("rqworker", "default", "high", "--name", "w-pause")
    try:
        wait_for(lambda: "w-pause" in page(admin_client.get(DASHBOARD)))
        with RedisCommands(redis_url) as redis_commands:
            response = admin_client.post(DASHBOARD, {"queue": "default", "do": "pause"}, follow=True)
            content = page(response)
            assert response.redirect_chain == [(DASHBOARD, 302)]
            assert page_messages(content) == [
                "Queue 'default' paused: workers take no new jobs from it until it is resumed."
            ]
            assert '<span class="dj-paused">paused</span>' in queue_row(content, "default")
            assert 'value="resume"' in queue_row(content, "default")
            assert "dj-paused" not in queue_row(content, "high")
            # The worker reads the paused queues every PAUSE_CHECK_INTERVAL (2 s): wait until it
            # has read them since the pause.
            paused_at = redis_commands.mark()
            wait_for(lambda: redis_commands.count_since(paused_at, READ_PAUSES) >= 1)

            held = add.delay(1, 1)  # its queue comes first in the worker's order
            assert echo.delay("through").wait(timeout=60) == "through"
            # The worker reads the pauses again and takes another job: still not the held one.
            ran_at = redis_commands.mark()
            wait_for(lambda: redis_commands.count_since(ran_at, READ_PAUSES) >= 1)
            assert echo.delay("again").wait(timeout=60) == "again"
            assert held.status == "queued"
            assert get_queue().get_job_ids() == [held.id]

        response = admin_client.post(DASHBOARD, {"queue": "default", "do": "resume"}, follow=True)
        assert page_messages(page(response)) == ["Queue 'default' resumed."]
        assert "dj-paused" not in queue_row(page(response), "default")
        assert held.wait(timeout=60) == 2
    finally:
        stop(worker)


def chart_bars(content: str, chart_id: str) -> dict[str, list[float]]:
    """The heights of the finished and the failed bars of one chart, oldest bucket first."""
    chart = content.split(f'id="{chart_id}"', 1)[1].split("</figure>", 1)[0]
    return {
        kind: [float(h) for h in re.findall(rf'<rect class="{kind}"[^>]* height="([\d.]+)"', chart)]
        for kind in ("finished", "failed")
    }


def chart_caption(content: str, chart_id: str) -> str:
    chart = content.split(f'id="{chart_id}"', 1)[1].split("</figure>", 1)[0]
    return strip_tags(chart.split("<figcaption>", 1)[1])


def test_charts_have_bars_once_jobs_ended(admin_client: Client) -> None:
    empty = page(admin_client.get(DASHBOARD))
    bars = chart_bars(empty, "dj-chart-hour")
    assert len(bars["finished"]) == len(bars["failed"]) == 60  # one a minute
    assert not any(bars["finished"] + bars["failed"])

    for handle in (add.delay(1, 1), add.delay(2, 2), explode.delay("boom")):
        assert handle.status == "queued"
    run_burst(["default", "low"])
    content = page(admin_client.get(DASHBOARD))
    for chart_id, buckets in (("dj-chart-hour", 60), ("dj-chart-day", 24)):
        bars = chart_bars(content, chart_id)
        assert len(bars["finished"]) == buckets
        assert any(bars["finished"]) and any(bars["failed"])
        assert "2 finished, 1 failed" in chart_caption(content, chart_id)


def test_dashboard_refreshes_itself_unless_told_not_to(admin_client: Client) -> None:
    assert '<meta http-equiv="refresh" content="5">' in page(admin_client.get(DASHBOARD))
    quiet = page(admin_client.get(DASHBOARD + "?refresh=0"))
    assert 'http-equiv="refresh"' not in quiet
    assert 'href="?refresh=5"' in quiet


def test_admin_index_and_listing_link_to_the_dashboard(admin_client: Client) -> None:
    index = page(admin_client.get("/admin/"))
    assert 'href="/admin/django_jobs/dashboard/"' in index
    response = admin_client.get("/admin/django_jobs/dashboard/")
    assert (response.status_code, response["Location"]) == (302, DASHBOARD)
    assert f'href="{DASHBOARD}"' in page(admin_client.get(CHANGELIST))


# -- redaction -------------------------------------------------------------------------------------


def admin_pages(job_id: str) -> list[str]:
    return [
        CHANGELIST,
        f"{CHANGELIST}?q={job_id}",
        f"{CHANGELIST}{job_id}/change/",
        f"{CHANGELIST}{job_id}/history/",
        f"{CHANGELIST}{job_id}/delete/",
        DASHBOARD,
    ]


def test_redacted_arguments_never_show_in_the_admin(admin_client: Client) -> None:
    handle = charge.delay(5, CARD, cvv="123")
    record = JobRecord.objects.get(pk=handle.id)
    assert record.args == [5, CARD] and record.kwargs == {"cvv": "123"}  # the job still gets them
    for url in admin_pages(handle.id):
        assert CARD not in page(admin_client.get(url)), url
    content = detail(admin_client, handle.id)
    assert f"<pre class='dj-json'>{pretty([5, '••••'])}</pre>" in content
    assert "&quot;cvv&quot;: &quot;123&quot;" in content  # not named in any REDACT
    confirmation = page(
        admin_client.post(
            CHANGELIST, {"action": "cancel_jobs", "index": "0", "_selected_action": [handle.id]}
        )
    )
    assert CARD not in confirmation


def test_no_page_of_the_dashboard_entry_shows_redacted_arguments(admin_client: Client) -> None:
    handle = charge.delay(5, CARD, cvv="123")
    for suffix in ("", f"{handle.id}/change/", f"{handle.id}/history/", f"{handle.id}/delete/"):
        response = admin_client.get(f"/admin/django_jobs/dashboard/{suffix}")
        assert CARD not in response.content.decode(), suffix


@pytest.mark.slow
def test_worker_log_describes_the_job_without_the_secret(manage: Any) -> None:
    handle = charge.delay(5, CARD, cvv="123")
    result = manage("rqworker", "--burst")
    assert result.returncode == 0, result.stderr
    assert JobRecord.objects.get(pk=handle.id).result == "charged 5"
    output = result.stdout + result.stderr
    assert handle.id in output  # the worker did log the job
    assert "tests.testapp.jobs.charge(5, ••••, cvv='123')" in output
    assert CARD not in output


@pytest.mark.slow
def test_global_redact_setting_masks_more_names(admin_client: Client, manage: Any) -> None:
    with override_settings(DJANGO_JOBS={"REDACT": ["cvv"]}):
        handle = charge.delay(5, CARD, cvv="123")
        content = detail(admin_client, handle.id)
        assert CARD not in content
        assert "&quot;cvv&quot;: &quot;••••&quot;" in content
        assert "&quot;123&quot;" not in content
    result = manage("rqworker", "--burst")
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "tests.testapp.jobs.charge(5, ••••, cvv=••••)" in output
    assert CARD not in output and "'123'" not in output
    assert JobRecord.objects.get(pk=handle.id).kwargs == {"cvv": "123"}


def test_stop_with_redis_down_says_so_instead_of_failing(admin_client: Client) -> None:
    running = make_rows(1, prefix="running", status="started")
    with redis_away():
        _, after = run_action(admin_client, "stop_jobs", running)  # a 500 would raise here
    assert page_messages(after) == [
        "0 jobs asked to stop; skipped: 1 because Redis could not be reached (try again once it is back)."
    ]
    assert JobRecord.objects.get(pk=running[0]).status == "started"
