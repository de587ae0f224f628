"""``manage.py rqreconcile``: make Redis agree with the database now (the scheduler also does it)."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError
from redis.exceptions import RedisError

from django_jobs import outcomes, recovery, removals
from django_jobs.conf import conf
from django_jobs.management import flags
from django_jobs.queues import get_connection


class Command(BaseCommand):
    help = (
        "Repair Redis from the database: write back outcomes kept during a database outage, take "
        "out of Redis the jobs of rows canceled or deleted while it was away, push jobs whose push "
        "failed or that Redis lost, and end or retry the jobs of dead workers."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Report what would be done; do nothing.")
        parser.add_argument(
            "--grace",
            type=flags.seconds(0),
            default=None,
            help="Seconds a worker's heartbeat must stay missing before its jobs count as orphaned, "
            "0 to 86,400 (default DJANGO_JOBS['ORPHAN_GRACE']). The command waits that long if it "
            "sees such a worker.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        grace = conf.orphan_grace if options["grace"] is None else options["grace"]
        dry_run = options["dry_run"]
        connection = get_connection()
        try:
            connection.ping()
        except (RedisError, OSError) as exc:
            raise CommandError(f"Cannot reach Redis ({exc}). Check RQ_QUEUES and that it runs.") from None
        try:
            if dry_run:
                self.stdout.write(
                    f"{outcomes.pending(connection)} outcome(s) kept in Redis would be written."
                )
            else:
                self.stdout.write(f"Wrote {outcomes.replay_spool(connection)} outcome(s) kept in Redis.")
            removed = removals.sweep(dry_run=dry_run)
            self.stdout.write(
                f"{'Would take' if dry_run else 'Took'} {len(removed)} job(s) out of Redis whose rows "
                "were canceled or deleted while it was away."
            )
            pushed = recovery.push_pending(dry_run=dry_run) + recovery.reconcile(dry_run=dry_run)
            self.stdout.write(f"{'Would push' if dry_run else 'Pushed'} {len(pushed)} job(s) again.")
            watch = recovery.OrphanWatch(grace=grace)
            orphans = watch.recover(dry_run=dry_run)
            if not orphans and watch.missing_since:
                self.stdout.write(
                    f"Workers without a heartbeat: {', '.join(sorted(watch.missing_since))}; "
                    f"waiting {grace:g} s to be sure they are dead."
                )
                time.sleep(grace)
                orphans = watch.recover(dry_run=dry_run)
            self.stdout.write(
                f"{'Would recover' if dry_run else 'Recovered'} {len(orphans)} job(s) of dead workers."
            )
        except DatabaseError as exc:
            raise CommandError(f"The database is unavailable ({exc}); nothing more was done.") from None
