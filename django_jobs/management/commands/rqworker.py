"""``manage.py rqworker high default``: run jobs from the named queues, in priority order."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections
from redis import Redis
from redis.exceptions import RedisError

from django_jobs.conf import conf
from django_jobs.management import flags
from django_jobs.management.pool import Pool
from django_jobs.queues import UnknownQueueError, get_queues, resolve_serializer
from django_jobs.worker import BATCH_SIZE, BatchWorker

#: The most workers one pool runs (each is a process of its own, with a work-horse beside it).
MAX_POOL = 1_000

#: The most jobs a batch worker takes at once (more would hold them back from other workers, and
#: keep Redis busy with one script for longer).
MAX_BATCH_SIZE = 1_000


def load_worker_class(value: str, source: str = "--worker-class") -> type[Any]:
    """Return the worker class for an alias ("fork", "simple", "batch") or a dotted path."""
    try:
        return flags.load_worker_class(value)
    except ValueError as exc:
        raise CommandError(f"{source} {exc}") from None


class Command(BaseCommand):
    help = (
        "Run a worker on the given queues, in priority order (the first queue is always emptied first). "
        "Every job's row is updated as it starts and ends."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "queues", nargs="*", help="Queue names in priority order (default: the default queue)."
        )
        parser.add_argument("--burst", action="store_true", help="Run until the queues are empty, then exit.")
        parser.add_argument(
            "--with-scheduler",
            action="store_true",
            help="Also run the scheduler loop (as rqscheduler does, under the same leader lease) "
            "and RQ's own scheduler (RQ's enqueue_at/enqueue_in and retry intervals).",
        )
        parser.add_argument(
            "--worker-class",
            type=flags.worker_class,
            default=None,
            help="'fork' (RQ's forking Worker, the default), 'simple' (SimpleWorker), 'batch' "
            "(BatchWorker: a SimpleWorker that takes several jobs at a time), or a dotted path.",
        )
        parser.add_argument(
            "--batch-size",
            type=flags.whole_number(1, MAX_BATCH_SIZE),
            default=None,
            metavar="N",
            help="With --worker-class batch (implied): the most jobs taken from a queue at once, "
            f"1 to {MAX_BATCH_SIZE:,} (default {BATCH_SIZE}).",
        )
        parser.add_argument(
            "--max-jobs", type=flags.whole_number(1), default=None, help="Exit after this many jobs."
        )
        parser.add_argument(
            "--max-idle-time",
            type=flags.whole_number(1, note="seconds"),
            default=None,
            help="Exit after this many idle seconds.",
        )
        parser.add_argument("--name", default=None, help="The worker's name (unique among running workers).")
        parser.add_argument(
            "--worker-ttl",
            type=flags.whole_number(1, flags.DAY, note="seconds"),
            default=None,
            help="Seconds a worker may go without heartbeat, 1 to 86,400.",
        )
        parser.add_argument(
            "--dequeue-strategy",
            choices=["default", "round_robin", "random"],
            default="default",
            help="'default' keeps the queues' priority order.",
        )
        parser.add_argument(
            "--pool",
            type=flags.whole_number(1, MAX_POOL),
            default=1,
            metavar="N",
            help=f"Run N worker processes, supervised by this one (1 to {MAX_POOL:,}).",
        )
        parser.add_argument(
            "--job-monitoring-interval",
            type=flags.whole_number(1, flags.DAY, note="seconds"),
            default=None,
            help="Seconds between two heartbeats while a job runs, 1 to 86,400 (default 10). A dead "
            "worker's jobs are recovered about 3 heartbeats plus DJANGO_JOBS['ORPHAN_GRACE'] after "
            "its death.",
        )
        parser.add_argument(
            "--logging-level",
            type=flags.logging_level,
            default="INFO",
            help="DEBUG, INFO, WARNING, ERROR or CRITICAL.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        names: list[str] = options["queues"] or [conf.default_queue]
        try:
            queues = get_queues(names)
        except UnknownQueueError as exc:
            raise CommandError(str(exc)) from None
        batch_size = options["batch_size"]
        if options["worker_class"] is not None:
            worker_class = load_worker_class(options["worker_class"])
        elif batch_size is not None:
            worker_class = load_worker_class("batch")
        else:
            worker_class = load_worker_class(conf.worker_class, "DJANGO_JOBS['WORKER_CLASS']")
        if batch_size is not None and not issubclass(worker_class, BatchWorker):
            raise CommandError(
                f"--batch-size applies to the batch worker only, not to {worker_class.__name__}: "
                "use --worker-class batch (or leave --worker-class out)."
            )
        connection = queues[0].connection
        kwargs = connection.connection_pool.connection_kwargs
        for queue in queues[1:]:
            if queue.connection.connection_pool.connection_kwargs != kwargs:
                raise CommandError(
                    f"Queues {names[0]!r} and {queue.name!r} use different Redis servers; "
                    "run one worker per Redis server."
                )
        try:
            connection.ping()
        except (RedisError, OSError) as exc:
            raise CommandError(
                f"Cannot reach Redis for queue {names[0]!r} ({exc}). Check RQ_QUEUES[{names[0]!r}] "
                "and that the Redis server is running."
            ) from None

        if options["pool"] > 1:
            self.run_pool(names, options, connection)
            return

        worker = worker_class(
            queues,
            connection=connection,
            name=options["name"],
            serializer=resolve_serializer(),
            worker_ttl=options["worker_ttl"],
            **({"batch_size": batch_size} if batch_size is not None else {}),
            **(
                {"job_monitoring_interval": options["job_monitoring_interval"]}
                if options["job_monitoring_interval"]
                else {}
            ),
        )
        # Nothing opened so far may leak into the work horses.
        connections.close_all()
        scheduler = None
        if options["with_scheduler"]:
            if options["burst"]:
                # One pass now, so that what is already due runs in this burst.
                call_command("rqscheduler", "--burst", "--logging-level", "WARNING")
                connections.close_all()
            else:
                scheduler = self.start_scheduler()
        try:
            worker.work(
                burst=options["burst"],
                with_scheduler=options["with_scheduler"],
                max_jobs=options["max_jobs"],
                max_idle_time=options["max_idle_time"],
                logging_level=options["logging_level"],
                dequeue_strategy=options["dequeue_strategy"],
            )
        finally:
            if scheduler is not None:
                scheduler.terminate()
                try:
                    scheduler.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    scheduler.kill()

    def start_scheduler(self) -> subprocess.Popen[bytes]:
        """Run ``rqscheduler`` beside this worker; it leads only while no other scheduler does."""
        command = [sys.executable, "-m", "django", "rqscheduler", "--settings", conf.settings_module]
        return subprocess.Popen(
            command, env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        )

    def run_pool(self, names: list[str], options: dict[str, Any], connection: Redis) -> None:
        """Run ``--pool N`` workers as child processes (see :mod:`django_jobs.management.pool`)."""
        base = [sys.executable, "-m", "django", "rqworker", *names, "--settings", conf.settings_module]
        for flag in ("burst", "with_scheduler"):
            if options[flag]:
                base.append("--" + flag.replace("_", "-"))
        for flag in (
            "worker_class",
            "max_jobs",
            "max_idle_time",
            "worker_ttl",
            "job_monitoring_interval",
            "batch_size",
            "dequeue_strategy",
            "logging_level",
        ):
            if options[flag] is not None:
                base += ["--" + flag.replace("_", "-"), str(options[flag])]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        prefix = options["name"] or f"pool-{os.uname().nodename}-{os.getpid()}"
        pool = Pool(
            base,
            options["pool"],
            prefix,
            connection=connection,
            queue_names=names,
            env=env,
            burst=options["burst"],
        )
        self.stdout.write(f"Starting {options['pool']} workers on {', '.join(names)}.")
        failed = pool.run()
        if failed:
            raise CommandError(f"{failed} of {options['pool']} pool workers exited with an error.")
