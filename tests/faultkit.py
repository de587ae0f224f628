"""Tools for tests that break things on purpose: workers, schedulers and a database that goes away."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from django.db import connection

from tests.ports import free_port
from tests.processes import start_manage

#: Fast failure detection for the processes a test starts (production: 10 s beats, 20 s grace).
FAST = {"ORPHAN_GRACE": 1, "RECONCILE_INTERVAL": 2}


def start(
    command: str,
    *args: str,
    env: dict[str, str] | None = None,
    output: Path | None = None,
    options: dict[str, Any] | None = None,
) -> subprocess.Popen[str]:
    """Start ``manage.py command`` on the test database, with fast failure detection.

    Its output goes to the file ``output`` (a long run would fill a pipe and block the
    process), else to a pipe that :func:`tests.processes.stop` reads. ``options`` are
    ``DJANGO_JOBS`` settings for it (default :data:`FAST`).
    """
    if command == "rqworker":
        args = (*args, "--job-monitoring-interval", "1")
    elif command == "rqscheduler":
        args = (*args, "--interval", "0.5", "--lock-ttl", "5")
    return start_manage(command, *args, env=env, output=output, options=FAST if options is None else options)


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (a forking worker's work-horse), from /proc."""
    found: list[int] = []
    with suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(child) for child in handle.read().split()]
    return found


class TcpProxy:
    """Forwards a local port to the database; ``cut()`` drops every connection and refuses new ones."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
        with self.lock:
            # Closed connections leave the list (a long run opens one per job).
            for end in (source, sink):
                if end in self.sockets:
                    self.sockets.remove(end)
                    end.close()

    def cut(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@contextmanager
def database_outage_for_worker() -> Iterator[tuple[dict[str, str], Any]]:
    """Environment for a worker, and a context manager that makes its database unavailable.

    SQLite: an exclusive lock held by another connection (so the test process
    must not write meanwhile either). PostgreSQL: the worker reaches it
    through a :class:`TcpProxy` that the outage cuts; the test process keeps
    its direct connection.
    """
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        path = settings["NAME"]

        @contextmanager
        def outage() -> Iterator[None]:
            locker = sqlite3.connect(path, isolation_level=None, timeout=30)
            locker.execute("BEGIN EXCLUSIVE")  # every other writer now gets "database is locked"
            try:
                yield
            finally:
                locker.execute("ROLLBACK")
                locker.close()

        yield {"DJANGO_JOBS_TEST_DB_TIMEOUT": "0.2"}, outage
        return

    proxy = TcpProxy((settings["HOST"] or "127.0.0.1", int(settings["PORT"] or 5432)))
    proxy.start()

    @contextmanager
    def outage() -> Iterator[None]:
        proxy.cut()  # PostgreSQL unreachable: connections drop, new ones are refused
        try:
            yield
        finally:
            proxy.start()

    try:
        yield {"DJANGO_JOBS_TEST_DB_PORT": str(proxy.port), "DJANGO_JOBS_TEST_DB_TIMEOUT": "2"}, outage
    finally:
        proxy.cut()
