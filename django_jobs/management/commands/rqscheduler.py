"""``manage.py rqscheduler``: move delayed jobs into their queues and start periodic runs."""

from __future__ import annotations

import importlib.util
import logging
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from redis.exceptions import RedisError

from django_jobs.management import flags
from django_jobs.queues import get_connection
from django_jobs.scheduler import (
    RQ_SCHEDULER_KEY,
    RQ_SCHEDULER_MISSING,
    Scheduler,
    rq_scheduler_backlog,
)

#: The shortest --interval: a pass costs a few queries, and more passes a second would only keep
#: the database busy.
MIN_INTERVAL = 0.1


def rq_scheduler_installed() -> bool:
    return importlib.util.find_spec("rq_scheduler") is not None


class Command(BaseCommand):
    help = (
        "Run the scheduler: due delayed jobs go into their queues and periodic jobs start their runs. "
        "Run as many as you like; one leads at a time (a Redis lease), the others stand by."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--interval",
            type=flags.seconds(MIN_INTERVAL),
            default=1.0,
            help=f"Seconds between two passes, {MIN_INTERVAL} to 86,400 (default 1).",
        )
        parser.add_argument(
            "--lock-ttl",
            type=flags.seconds(MIN_INTERVAL),
            default=10.0,
            help="Seconds the leader's lease lasts unrenewed; a standby takes over after it. Longer "
            "than --interval, at most 86,400 (default 10).",
        )
        parser.add_argument("--name", default=None, help="This scheduler's name in logs and in the lease.")
        parser.add_argument("--burst", action="store_true", help="Do one pass, then exit.")
        parser.add_argument(
            "--logging-level",
            type=flags.logging_level,
            default="INFO",
            help="DEBUG, INFO, WARNING, ERROR or CRITICAL.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["lock_ttl"] <= options["interval"]:
            raise CommandError(
                f"--lock-ttl ({options['lock_ttl']}) must be longer than --interval ({options['interval']}), "
                "or the leader would lose its lease between two passes."
            )
        try:
            get_connection().ping()
        except (RedisError, OSError) as exc:
            raise CommandError(
                f"Cannot reach Redis ({exc}). Check RQ_QUEUES and that Redis is running."
            ) from None
        logger = logging.getLogger("django_jobs.scheduler")
        if not logger.hasHandlers():
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
            logger.addHandler(handler)
        logger.setLevel(options["logging_level"])
        scheduler = Scheduler(
            interval=options["interval"], lock_ttl=options["lock_ttl"], name=options["name"]
        )
        backlog = rq_scheduler_backlog(scheduler.lock.connection)
        if backlog and not rq_scheduler_installed():
            self.stderr.write(
                self.style.WARNING(RQ_SCHEDULER_MISSING.format(count=backlog, key=RQ_SCHEDULER_KEY))
            )
            scheduler.warned_rq_scheduler = True
        signal.signal(signal.SIGTERM, scheduler.stop)
        signal.signal(signal.SIGINT, scheduler.stop)
        scheduler.run(burst=options["burst"])
