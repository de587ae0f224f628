"""A job's started, finished and failed registries are built once per queue and client, and are
what RQ's own ``Job`` would build."""

from __future__ import annotations

import pytest
from redis import Redis
from rq.job import Job

from django_jobs.queues import get_queue
from tests.testapp.jobs import add

pytestmark = pytest.mark.django_db(transaction=True)

REGISTRIES = ("started_job_registry", "finished_job_registry", "failed_job_registry")


@pytest.mark.parametrize("name", REGISTRIES)
def test_a_registry_is_built_once_per_queue_and_is_rqs_own(name: str) -> None:
    queue = get_queue("default")
    first, second = (queue.fetch_job(add.delay(n, 1).id) for n in (1, 2))
    assert first is not None and second is not None
    kept = getattr(first, name)
    assert getattr(first, name) is kept
    assert getattr(second, name) is kept
    built_by_rq = getattr(Job, name).fget(first)  # RQ's own property: a new object each time
    assert type(kept) is type(built_by_rq)
    assert (kept.name, kept.key, kept.job_class, kept.serializer) == (
        built_by_rq.name,
        built_by_rq.key,
        built_by_rq.job_class,
        built_by_rq.serializer,
    )
    assert kept.connection is first.connection


@pytest.mark.parametrize("name", REGISTRIES)
def test_another_queue_or_another_client_gets_a_registry_of_its_own(name: str, redis_url: str) -> None:
    default, emails = get_queue("default"), get_queue("emails")
    job = default.fetch_job(add.delay(1, 2).id)
    other_queue_job = emails.fetch_job(add.apply_async(args=(3, 4), queue="emails").id)
    assert job is not None and other_queue_job is not None
    assert getattr(other_queue_job, name).name == "emails"
    assert getattr(job, name).name == "default"

    client = Redis.from_url(redis_url)
    same_job_other_client = default.job_class.fetch(job.id, connection=client, serializer=default.serializer)
    registry = getattr(same_job_other_client, name)
    assert registry.connection is client
    assert registry.key == getattr(job, name).key
    assert getattr(job, name).connection is job.connection  # the first client's is built again
