"""The jobs admin in a real browser, against the example project and a real worker.

A user registers on the example site; their account is deleted before the
welcome email goes out, so the email job fails. An admin finds it in the
admin, reads its traceback, requeues it once the account is back, and sees it
finish and show up on the dashboard's chart. Screenshots of every step go to
``screenshots/test_browser/`` at the repository root.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.ports import free_port
from tests.processes import ROOT, run_manage, start_manage, terminate
from tests.test_example_project import example_env, wait_for

pytestmark = pytest.mark.slow  # a browser, and the demo in a subprocess

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

if not CHROMIUM.exists():
    pytest.skip(
        f"no Chromium at {CHROMIUM} (install it with `apt-get install -y chromium`)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed (pip install -e '.[test]')"
)
expect = sync_api.expect

SCREENSHOTS = ROOT / "screenshots" / "test_browser"
WORKER_QUEUES = ("high", "default", "low", "emails")
EMAIL_JOB = "example_project.accounts.jobs.send_registration_email"
SCORE_JOB = "example_project.accounts.jobs.score_signup"
#: How long Playwright waits for a page or an element (it polls; nothing asserts on time).
WAIT_MS = 30_000
expect.set_options(timeout=WAIT_MS)


class Example:
    """``manage.py demo --no-worker`` on a free port; workers are run in bursts by the test."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / "demo.log"
        self.process = start_manage(
            "demo", "--port", str(self.port), "--no-worker", base_env=env, output=self.log_path
        )

    def log(self) -> str:
        return "demo output:\n" + self.log_path.read_text(errors="replace")

    def wait_until_serving(self) -> None:
        def banner() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"The demo exited with {self.process.returncode} before serving.\n{self.log()}")
            # The demo prints its banner once its web server accepts connections.
            return "  Login:" in self.log_path.read_text(errors="replace")

        wait_for(banner, 90, "the demo's banner", self.log)

    def manage(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a management command of the example, in the demo's environment; fail if it fails."""
        result = run_manage(*args, base_env=self.env, timeout=180)
        assert result.returncode == 0, (
            f"manage.py {' '.join(args)} exited with {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
        return result

    def shell(self, code: str) -> Any:
        """Run Python in ``manage.py shell``; return what it printed last, read as JSON."""
        output = self.manage("shell", "--no-imports", "-c", code).stdout
        return json.loads(output.strip().splitlines()[-1])

    def run_worker(self) -> str:
        """Run every queued job with a burst worker on the demo's queues; return its output."""
        result = self.manage("rqworker", *WORKER_QUEUES, "--burst")
        return result.stdout + result.stderr

    def stop(self) -> None:
        terminate(self.process)  # the demo stops its web server on SIGTERM


@pytest.fixture
def example(tmp_path: Path, redis_url: str) -> Iterator[Example]:
    env = example_env(tmp_path, REDIS_URL=redis_url)
    env.pop("DATABASE_URL", None)  # the example's own SQLite file, in tmp_path
    example = Example(tmp_path, env)
    try:
        example.wait_until_serving()
        yield example
    finally:
        example.stop()


@pytest.fixture
def page() -> Iterator[Page]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1920, "height": 1080})
            page = context.new_page()
            page.set_default_timeout(WAIT_MS)
            page.set_default_navigation_timeout(WAIT_MS)
            yield page
        finally:
            browser.close()


class Screenshots:
    """Full-page screenshots, numbered in the order the steps are taken."""

    def __init__(self, page: Page, directory: Path) -> None:
        self.page = page
        self.directory = directory
        self.count = 0
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)

    def take(self, name: str) -> Path:
        self.count += 1
        path = self.directory / f"{self.count:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@contextlib.contextmanager
def explained_failure(shots: Screenshots, example: Example) -> Iterator[None]:
    """On a failure, keep a screenshot of where the browser was and attach the demo's output."""
    try:
        yield
    except BaseException as exc:
        with contextlib.suppress(Exception):
            exc.add_note(f"screenshot: {shots.take('failure')}\npage: {shots.page.url}")
        exc.add_note(example.log())
        raise


def job_row(page: Page, job_id: str) -> Locator:
    """The job's row in the admin's listing (its link shows the id's first 12 characters)."""
    link = page.get_by_role("link", name=job_id[:12], exact=True)
    return page.locator("#result_list tbody tr").filter(has=link)


def test_admin_in_a_browser(example: Example, page: Page) -> None:
    shots = Screenshots(page, SCREENSHOTS)
    with explained_failure(shots, example):
        walk_through_the_admin(example, page, shots)


def walk_through_the_admin(example: Example, page: Page, shots: Screenshots) -> None:
    base = example.base

    # -- log in to the admin ---------------------------------------------------------------
    page.goto(f"{base}/admin/")
    expect(page).to_have_url(re.compile(r"/admin/login/"))
    page.fill("#id_username", "admin")
    page.fill("#id_password", "admin")
    shots.take("admin-login")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#site-name")).to_have_text("Django administration")
    apps = page.locator("#content-main")
    expect(apps.get_by_role("link", name="Background jobs")).to_be_visible()
    expect(apps.get_by_role("link", name="Jobs", exact=True)).to_be_visible()
    shots.take("admin-index")

    # -- register on the site: the welcome email is a job, waiting (no worker runs yet) ---------
    page.goto(f"{base}/")
    expect(page.get_by_role("heading", name="Create an account")).to_be_visible()
    page.fill("#id_username", "ada")
    page.fill("#id_email", "ada@example.com")
    page.fill("#id_password1", "analytical-engine-1843")
    page.fill("#id_password2", "analytical-engine-1843")
    shots.take("registration-form")
    page.get_by_role("button", name="Register").click()
    expect(page).to_have_url(re.compile(r"/jobs/[A-Za-z0-9_-]+/$"))
    match = re.search(r"/jobs/([A-Za-z0-9_-]+)/$", page.url)
    assert match, page.url
    job_id = match.group(1)
    expect(page.locator(".messages")).to_contain_text("Created user ada.")
    expect(page.locator("h1")).to_have_text(EMAIL_JOB)
    expect(page.locator("#job-status")).to_have_text("queued")
    shots.take("registered-job-queued")

    # -- the job in the admin's listing ----------------------------------------------------------
    page.goto(f"{base}/admin/django_jobs/jobrecord/")
    row = job_row(page, job_id)
    expect(row).to_have_count(1)
    expect(row.locator("td.field-func_name")).to_have_text(EMAIL_JOB)
    expect(row.locator("td.field-queue")).to_have_text("emails")
    expect(row.locator("td.field-status_badge")).to_have_text("queued")
    expect(row.locator("td.field-attempts")).to_have_text("0")
    expect(page.locator("#result_list tbody tr")).to_have_count(2)  # and the signup score, on "high"
    shots.take("listing-queued")

    # -- the account is deleted before a worker gets to the email: the job fails ----------------
    user_pk = example.shell(
        "import json\n"
        "from django.contrib.auth import get_user_model\n"
        "user = get_user_model().objects.get(username='ada')\n"
        "pk = user.pk\n"
        "user.delete()\n"
        "print(json.dumps(pk))"
    )
    example.run_worker()

    page.reload()
    expect(job_row(page, job_id).locator("td.field-status_badge")).to_have_text("failed")
    status_filter = page.locator("#changelist-filter details[data-filter-title='status']")
    status_filter.get_by_role("link", name="failed", exact=True).click()
    expect(page).to_have_url(re.compile(r"[?&]status=failed"))
    expect(status_filter.locator("li.selected")).to_have_text("failed")
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(2)  # the email and the signup score both looked for the user
    expect(rows.locator("td.field-status_badge")).to_have_text(["failed", "failed"])
    row = job_row(page, job_id)
    expect(row.locator("td.field-func_name")).to_have_text(EMAIL_JOB)
    expect(row.locator("td.field-attempts")).to_have_text("4")  # the first run and its 3 retries
    shots.take("listing-failed-filter")

    # -- the failed job's page shows the traceback --------------------------------------------------
    row.get_by_role("link", name=job_id[:12], exact=True).click()
    expect(page).to_have_url(re.compile(rf"/admin/django_jobs/jobrecord/{re.escape(job_id)}/change/"))
    expect(page.locator(".field-status_badge .readonly")).to_have_text("failed")
    traceback = page.locator(".field-error_display pre.dj-traceback")
    expect(traceback).to_contain_text("Traceback (most recent call last)")
    expect(traceback).to_contain_text("DoesNotExist")
    expect(traceback).to_contain_text("User matching query does not exist.")
    expect(page.locator(".field-error_history_display details.dj-attempt")).to_have_count(4)
    shots.take("failed-job-traceback")

    # -- requeue it from the listing, through the confirmation page -----------------------------------
    page.get_by_role("link", name="Close", exact=True).click()  # back to the listing, filter kept
    expect(page).to_have_url(re.compile(r"[?&]status=failed"))
    row = job_row(page, job_id)
    row.locator("input.action-select").check()
    expect(page.locator(".action-counter")).to_contain_text("1 of 2 selected")
    page.select_option("select[name=action]", label="Requeue failed, stopped or canceled jobs")
    shots.take("requeue-action-chosen")
    page.get_by_role("button", name="Go").click()
    expect(page.get_by_role("heading", name="Requeue failed, stopped or canceled jobs")).to_be_visible()
    expect(page.locator(".dj-confirm-count")).to_contain_text(
        "This applies to 1 job matching your selection."
    )
    expect(page.locator("#content li")).to_have_text([re.compile(rf"{EMAIL_JOB} \(failed\)")])
    shots.take("requeue-confirmation")
    page.get_by_role("button", name="Yes, I\N{RIGHT SINGLE QUOTATION MARK}m sure").click()
    expect(page.locator("ul.messagelist li.success")).to_have_text("1 job requeued.")
    # It is no longer failed: only the signup score is left under "failed".
    expect(page.locator("#result_list tbody td.field-func_name")).to_have_text([SCORE_JOB])
    expect(job_row(page, job_id)).to_have_count(0)
    shots.take("requeued")

    page.goto(f"{base}/admin/django_jobs/jobrecord/")
    row = job_row(page, job_id)
    expect(row.locator("td.field-status_badge")).to_have_text("queued")
    expect(row.locator("td.field-attempts")).to_have_text("4")
    shots.take("listing-requeued")

    # -- the account is back, a worker runs the job again, and it finishes ----------------------------
    example.shell(
        "import json\n"
        "from django.contrib.auth import get_user_model\n"
        f"get_user_model().objects.create_user(pk={int(user_pk)}, username='ada', "
        "email='ada@example.com', password='analytical-engine-1843')\n"
        "print(json.dumps(True))"
    )
    example.run_worker()

    page.reload()
    row = job_row(page, job_id)
    expect(row.locator("td.field-status_badge")).to_have_text("finished")
    expect(row.locator("td.field-attempts")).to_have_text("5")
    shots.take("listing-finished")

    row.get_by_role("link", name=job_id[:12], exact=True).click()
    expect(page.locator(".field-status_badge .readonly")).to_have_text("finished")
    expect(page.locator(".field-result_display pre.dj-json")).to_have_text('"ada@example.com"')
    expect(page.locator(".field-error_display .readonly")).to_have_text("-")
    expect(page.locator(".field-error_history_display details.dj-attempt")).to_have_count(4)
    shots.take("finished-job")
    emails = list((example.tmp_path / "sent_emails").iterdir())
    assert len(emails) == 1, emails
    assert "To: ada@example.com" in emails[0].read_text()

    # -- the dashboard: counts per queue and the chart of the last hour ------------------------------
    page.get_by_role("link", name="Close", exact=True).click()
    expect(job_row(page, job_id)).to_have_count(1)
    page.locator(".object-tools").get_by_role("link", name="Dashboard").click()
    expect(page).to_have_url(re.compile(r"/admin/django_jobs/jobrecord/dashboard/"))
    expect(page.locator("#content h1")).to_have_text("Jobs dashboard")
    # The page reloads itself every 5 s; stop that so it holds still for the checks.
    page.get_by_role("link", name="stop refreshing").click()
    expect(page).to_have_url(re.compile(r"\?refresh=0$"))
    expect(page.locator("#dj-queues tr[data-queue='emails'] .dj-badge")).to_have_text(["finished 1"])
    expect(page.locator("#dj-queues tr[data-queue='high'] .dj-badge")).to_have_text(["failed 1"])
    expect(page.locator("#dj-workers tbody")).to_contain_text("No worker is running.")
    chart = page.locator("#dj-chart-hour")
    expect(chart.locator("figcaption")).to_contain_text("1 finished, 1 failed")
    heights = chart.locator("svg rect.finished").evaluate_all(
        "rects => rects.map(rect => rect.getBoundingClientRect().height)"
    )
    assert len(heights) == 60, heights
    assert max(heights) > 0, "no finished bar drawn in the last hour's chart"
    failed_heights = chart.locator("svg rect.failed").evaluate_all(
        "rects => rects.map(rect => rect.getBoundingClientRect().height)"
    )
    assert max(failed_heights) > 0, "no failed bar drawn in the last hour's chart"
    chart.scroll_into_view_if_needed()
    shots.take("dashboard")
