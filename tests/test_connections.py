"""``RQ_QUEUES`` in django-rq's format: every connection style reaches a real Redis."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_py
from django.test.utils import override_settings
from rq.job import Job

from django_jobs import get_queue
from django_jobs.queues import get_connection
from django_jobs.testing import RedisServer
from tests.ports import free_port
from tests.testapp.jobs import add

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as started:
        yield started


def enqueue_lands_in(client: redis_py.Redis, queue: str = "default") -> None:
    handle = add.delay(1, 2)
    assert client.lrange(f"rq:queue:{queue}", 0, -1) == [handle.id.encode()]


def test_host_port_db(server: RedisServer) -> None:
    config = {"HOST": "127.0.0.1", "PORT": server.port, "DB": 3}
    with override_settings(RQ_QUEUES={"default": config}):
        enqueue_lands_in(redis_py.Redis(port=server.port, db=3))


def test_url_with_db_key(server: RedisServer) -> None:
    with override_settings(RQ_QUEUES={"default": {"URL": f"redis://127.0.0.1:{server.port}", "DB": 5}}):
        enqueue_lands_in(redis_py.Redis(port=server.port, db=5))


def test_password(server: RedisServer) -> None:
    redis_py.Redis(port=server.port).config_set("requirepass", "s3cret")
    config = {"HOST": "127.0.0.1", "PORT": server.port, "DB": 0, "PASSWORD": "s3cret"}
    with override_settings(RQ_QUEUES={"default": config}):
        enqueue_lands_in(redis_py.Redis(port=server.port, password="s3cret"))
    with (
        override_settings(RQ_QUEUES={"default": {**config, "PASSWORD": "wrong"}}),
        pytest.raises(redis_py.RedisError),
    ):
        get_connection("default").ping()


def test_unix_socket() -> None:
    directory = tempfile.mkdtemp(prefix="rq-sock-")
    path = os.path.join(directory, "redis.sock")
    with (
        RedisServer(extra_args=["--unixsocket", path, "--unixsocketperm", "700"]),
        override_settings(RQ_QUEUES={"default": {"UNIX_SOCKET_PATH": path, "DB": 0}}),
    ):
        enqueue_lands_in(redis_py.Redis(unix_socket_path=path))


def test_sentinel(server: RedisServer) -> None:
    directory = tempfile.mkdtemp(prefix="rq-sentinel-")
    conf_path = os.path.join(directory, "sentinel.conf")
    with open(conf_path, "w") as handle:
        handle.write(f"sentinel monitor mymaster 127.0.0.1 {server.port} 1\n")
    with SentinelProcess(conf_path) as port:
        config = {"SENTINELS": [("127.0.0.1", port)], "MASTER_NAME": "mymaster", "DB": 0}
        with override_settings(RQ_QUEUES={"default": config}):
            enqueue_lands_in(redis_py.Redis(port=server.port))


class SentinelProcess:
    """A real redis-server in sentinel mode, watching the given master."""

    def __init__(self, conf_path: str) -> None:
        import subprocess

        from django_jobs.testing import find_redis_server

        self.port = free_port()
        with open(conf_path, "a") as handle:
            handle.write(f"port {self.port}\nbind 127.0.0.1\n")
        self.process = subprocess.Popen(
            [find_redis_server(), conf_path, "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def __enter__(self) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                masters = redis_py.Redis(port=self.port).sentinel_masters()
                if "mymaster" in masters:
                    return self.port
            except redis_py.RedisError:
                pass
            time.sleep(0.1)
        raise AssertionError("sentinel did not come up")

    def __exit__(self, *exc: Any) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def test_ssl_settings_build_an_ssl_connection() -> None:
    # No TLS-enabled server here: check the connection that django-rq's settings build.
    with override_settings(RQ_QUEUES={"default": {"HOST": "127.0.0.1", "PORT": 6380, "DB": 0, "SSL": True}}):
        pool = get_connection("default").connection_pool
        assert pool.connection_class is redis_py.SSLConnection
    with override_settings(
        RQ_QUEUES={"default": {"URL": "rediss://127.0.0.1:6380/0", "SSL_CERT_REQS": None}}
    ):
        pool = get_connection("default").connection_pool
        assert pool.connection_class is redis_py.SSLConnection
        assert pool.connection_kwargs["ssl_cert_reqs"] is None


def test_default_timeout_and_result_ttl(redis_url: str) -> None:
    config = {"URL": redis_url, "DEFAULT_TIMEOUT": 77, "DEFAULT_RESULT_TTL": 1234}
    with override_settings(RQ_QUEUES={"default": config}):
        handle = add.delay(1, 1)
        queue = get_queue("default")
        job = Job.fetch(handle.id, connection=queue.connection, serializer=queue.serializer)
        assert (job.timeout, job.result_ttl) == (77, 1234)


def test_queues_sharing_settings_share_one_connection_pool() -> None:
    assert get_connection("high") is get_connection("default")
