"""TCP ports on 127.0.0.1 for the tests: a free one to serve on, and a closed one that refuses."""

from __future__ import annotations

import functools
import socket
from typing import Any

from django.test.utils import override_settings


def free_port() -> int:
    """A port nothing uses now, for a server the test starts on it (the system picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@functools.cache
def _held_closed() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, never listening
    return sock


def closed_port() -> int:
    """A port where every connection is refused, for as long as the test session runs.

    This process holds it with a socket that is bound and never listens: the system
    refuses connections to it, and no server the suite starts can take it meanwhile.
    """
    return int(_held_closed().getsockname()[1])


def redis_away(*names: str) -> Any:
    """``override_settings`` under which Redis cannot be reached: every queue of the test settings
    (or ``names``) on the closed port. The test's real Redis keeps its data meanwhile, and is
    back when the block ends."""
    url = f"redis://127.0.0.1:{closed_port()}/0"
    queues = names or ("default", "high", "low", "emails")
    return override_settings(RQ_QUEUES={name: {"URL": url} for name in queues})
