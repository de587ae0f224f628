"""``manage.py demo``: the whole example in one command, on embedded defaults.

It starts a throwaway Redis (unless ``REDIS_URL`` names one), migrates,
makes a demo superuser, then runs a worker and the development server as
child processes until Ctrl-C or SIGTERM, and stops everything it started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from django_jobs.testing import RedisServer, RedisServerError

MANAGE_PY = Path(__file__).resolve().parents[4] / "manage.py"
#: The worker's queues, in priority order: the first is always emptied first.
WORKER_QUEUES = ("high", "default", "low", "emails")
#: How long the children get to stop after SIGTERM (a worker finishes its current job first).
STOP_TIMEOUT = 15.0
#: How long the development server gets to start answering.
START_TIMEOUT = 60.0
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def url_host(host: str) -> str:
    """The host as it goes in a URL or in runserver's addrport (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host else host


def connect_host(host: str) -> str:
    """Where to connect to reach a server bound to ``host``."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def ensure_port_free(host: str, port: int) -> None:
    """Raise CommandError when nothing can listen on ``host:port``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As runserver does: a port left in TIME_WAIT by a previous run is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise CommandError(
                f"Cannot serve on {url_host(host)}:{port}: {exc.strerror or exc}. "
                f"Another program (or an earlier demo) is using the port; stop it or pick another "
                f"with --port, e.g. --port {port + 1}."
            ) from None


class Command(BaseCommand):
    help = (
        "Run the example project on embedded defaults: a throwaway Redis (unless REDIS_URL is set), "
        "migrations, a demo superuser, a worker on the high, default, low and emails queues, and the "
        "development server. Ctrl-C stops everything."
    )

    # The children (migrate, rqworker, runserver) run the checks; running them
    # here too would open the database before the port has been checked.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="Address to serve on (default 127.0.0.1).")
        parser.add_argument("--port", type=int, default=8000, help="Port to serve on (default 8000).")
        parser.add_argument(
            "--no-worker",
            action="store_true",
            help="Do not start a worker (run `manage.py rqworker` yourself).",
        )
        parser.add_argument("--username", default="admin", help="The demo superuser's name (default admin).")
        parser.add_argument(
            "--password",
            default="admin",
            help="The demo superuser's password when it is created (default admin).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        host: str = options["host"]
        port: int = options["port"]
        if not 0 < port < 65536:
            raise CommandError(f"--port must be between 1 and 65535, not {port}.")
        ensure_port_free(host, port)

        self.stop_signal: int | None = None
        self.force_stop = False
        previous = {sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        redis: RedisServer | None = None
        children: list[tuple[str, subprocess.Popen[bytes]]] = []
        try:
            env = self.child_env(host)
            if not env.get("REDIS_URL"):
                self.stdout.write("Starting a throwaway Redis server (REDIS_URL is not set)…")
                try:
                    redis = RedisServer().start()
                except RedisServerError as exc:
                    raise CommandError(str(exc)) from None
                except OSError as exc:  # e.g. REDIS_SERVER_BIN names a file that is not there
                    raise CommandError(
                        f"Cannot start redis-server: {exc}. Set REDIS_URL or fix REDIS_SERVER_BIN."
                    ) from None
                env["REDIS_URL"] = redis.url

            self.stdout.write("Applying migrations…")
            self.run_step("migrate", ["migrate", "--noinput", "-v", "1"], env)
            if self.stop_signal is not None:
                return
            admin_note = self.ensure_superuser(options["username"], options["password"])

            if not options["no_worker"]:
                children.append(("worker", self.spawn(["rqworker", *WORKER_QUEUES], env)))
            children.append(
                ("web server", self.spawn(["runserver", f"{url_host(host)}:{port}", "--noreload"], env))
            )
            if not self.wait_until_listening(connect_host(host), port, children):
                return
            self.print_banner(
                host, port, env["REDIS_URL"], redis is not None, admin_note, options["no_worker"]
            )
            while self.stop_signal is None:
                self.check_children(children)
                time.sleep(0.2)
            self.stdout.write(f"\n{signal.Signals(self.stop_signal).name} received: stopping the demo…")
        finally:
            self.stop_children(children)
            if redis is not None:
                redis.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.stdout.write("Stopped.")

    def request_stop(self, signum: int, frame: Any) -> None:
        # A second Ctrl-C skips the wait for the children's clean exit.
        if self.stop_signal is not None:
            self.force_stop = True
        self.stop_signal = signum

    def child_env(self, host: str) -> dict[str, str]:
        env = dict(os.environ)
        env["DJANGO_SETTINGS_MODULE"] = settings.SETTINGS_MODULE
        env["PYTHONUNBUFFERED"] = "1"
        if host not in LOOPBACK_HOSTS and "DJANGO_ALLOWED_HOSTS" not in env:
            # Reached by another name or address than the loopback ones.
            env["DJANGO_ALLOWED_HOSTS"] = "*"
        return env

    def command(self, args: list[str]) -> list[str]:
        return [sys.executable, str(MANAGE_PY), *args]

    def run_step(self, name: str, args: list[str], env: dict[str, str]) -> None:
        """Run a management command to completion; raise CommandError when it fails."""
        code = subprocess.run(self.command(args), env=env, cwd=MANAGE_PY.parent, check=False).returncode
        if code != 0 and self.stop_signal is None:
            raise CommandError(f"`manage.py {name}` failed with exit code {code} (its output is above).")

    def spawn(self, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        # A session of its own: Ctrl-C in the terminal reaches only this
        # command, which then stops the children in order (the worker first
        # finishes the job it is running), instead of every process at once.
        return subprocess.Popen(
            self.command(args),
            env=env,
            cwd=MANAGE_PY.parent,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def ensure_superuser(self, username: str, password: str) -> str:
        """Create the demo superuser if missing; return how to log in."""
        user_model = get_user_model()
        try:
            user = user_model._default_manager.filter(**{user_model.USERNAME_FIELD: username}).first()
            if user is None:
                user_model._default_manager.create_superuser(
                    **{user_model.USERNAME_FIELD: username},
                    email=f"{username}@example.com",
                    password=password,
                )
                self.stdout.write(f"Created the demo superuser {username!r}.")
                return f"user {username}, password {password}"
            if user.check_password(password):
                return f"user {username}, password {password}"
            return (
                f"user {username} (it already existed, with another password: "
                f"`manage.py changepassword {username}` sets one)"
            )
        finally:
            # The children open their own connections; keep no file or socket open here.
            connections.close_all()

    def check_children(self, children: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
        """Raise CommandError when a child has exited while nobody asked it to."""
        for name, process in children:
            code = process.poll()
            if code is not None and self.stop_signal is None:
                how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
                raise CommandError(
                    f"The {name} stopped unexpectedly ({how}; its output is above). Stopped everything else.",
                    returncode=code if 0 < code < 256 else 1,
                )

    def wait_until_listening(
        self, host: str, port: int, children: list[tuple[str, subprocess.Popen[bytes]]]
    ) -> bool:
        """Wait until the server accepts connections; False when a stop was asked for first."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.stop_signal is not None:
                return False
            self.check_children(children)
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.1)
        raise CommandError(
            f"The web server did not answer on {url_host(host)}:{port} within {START_TIMEOUT:g} s."
        )

    def print_banner(
        self, host: str, port: int, redis_url: str, own_redis: bool, admin_note: str, no_worker: bool
    ) -> None:
        site = f"http://{url_host(connect_host(host))}:{port}/"
        email_dir = getattr(settings, "EMAIL_FILE_PATH", None)
        lines = [
            "",
            self.style.SUCCESS("The django_jobs example is running."),
            "",
            f"  Site:    {site}",
            f"  Admin:   {site}admin/",
            f"  Login:   {admin_note}",
            f"  Redis:   {redis_url}" + (" (throwaway, stopped on exit)" if own_redis else ""),
            "  Worker:  "
            + ("not started (--no-worker)" if no_worker else "queues " + ", ".join(WORKER_QUEUES)),
        ]
        if email_dir:
            lines.append(f"  Emails:  written to {email_dir}")
        if host not in LOOPBACK_HOSTS:
            lines.append(self.style.WARNING(f"  Listening on {host}: a development server with DEBUG on."))
        lines += ["", "Press Ctrl-C to stop.", ""]
        self.stdout.write("\n".join(lines))
        self.stdout.flush()

    def stop_children(self, children: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
        """SIGTERM every child still running, wait, then kill what is left."""
        running = [(name, process) for name, process in reversed(children) if process.poll() is None]
        for _, process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and not self.force_stop:
            if all(process.poll() is not None for _, process in running):
                return
            time.sleep(0.1)
        for name, process in running:
            if process.poll() is None:
                self.stderr.write(f"The {name} did not stop in time; killing it.")
                # Its whole session: a worker's work horse goes with it.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
