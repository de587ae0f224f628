"""Leaving the worker's command channel (at a ``--burst`` exit or a warm shutdown) ends its
listening thread within RQ's join, even when the thread reads the unsubscribe's confirmation
before it is told to stop (then RQ's own thread waits a minute for a new subscription)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from django_jobs.queues import get_queues, resolve_serializer
from django_jobs.worker import BatchWorker, SimpleWorker, Worker


@pytest.mark.parametrize("worker_class", [Worker, SimpleWorker, BatchWorker])
def test_the_listening_thread_has_ended_when_unsubscribe_returns(worker_class: Any) -> None:
    queues = get_queues(["default"])
    worker = worker_class(queues, connection=queues[0].connection, serializer=resolve_serializer())
    worker.subscribe()
    pubsub, thread = worker.pubsub, worker.pubsub_thread
    assert pubsub.subscribed_event.wait(10) and thread.is_alive()
    unsubscribe = pubsub.unsubscribe

    def confirmation_read_before_anything_else(*args: Any) -> Any:
        # The listening thread reads the confirmation before the worker's next step: the order
        # that left RQ's own thread waiting for a new subscription past its join.
        sent = unsubscribe(*args)
        deadline = time.monotonic() + 10
        while pubsub.subscribed_event.is_set() and time.monotonic() < deadline:
            time.sleep(0.001)
        return sent

    pubsub.unsubscribe = confirmation_read_before_anything_else
    worker.unsubscribe()
    assert not pubsub.subscribed_event.is_set()  # the confirmation was read
    assert not thread.is_alive()
