"""``django_jobs.testing``: the throwaway Redis server."""

from __future__ import annotations

from typing import Any

import pytest
import redis as redis_py

from django_jobs.testing import RedisServer, RedisServerError, find_redis_server


def test_redis_server_starts_answers_and_stops() -> None:
    server = RedisServer().start()
    try:
        client = redis_py.Redis.from_url(server.url)
        assert client.ping() is True
        assert client.config_get("save") == {"save": ""}  # keeps nothing on disk
    finally:
        server.stop()
    with pytest.raises(redis_py.ConnectionError):
        redis_py.Redis.from_url(server.url, socket_connect_timeout=1).ping()


def test_bad_redis_server_bin_is_a_clear_error(monkeypatch: Any, tmp_path: Any) -> None:
    monkeypatch.setenv("REDIS_SERVER_BIN", str(tmp_path / "missing-redis-server"))
    with pytest.raises(RedisServerError, match=r"REDIS_SERVER_BIN=.* is not an executable file"):
        find_redis_server()


def test_progress_helpers_are_exported_and_inert_outside_a_job() -> None:
    from django_jobs import get_current_job, set_progress

    assert get_current_job() is None
    assert set_progress(1, 10) is False
