"""``manage.py rqprune``: delete the rows of jobs that ended longer ago than ``RETENTION`` keeps them."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from django_jobs import retention
from django_jobs.conf import conf
from django_jobs.management import flags


class Command(BaseCommand):
    help = (
        "Delete the rows of finished, failed, canceled and stopped jobs older than DJANGO_JOBS['RETENTION'] "
        f"keeps them, in batches of at most {retention.MAX_BATCH_SIZE:,} rows. Jobs that have not ended "
        "are never deleted."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="Count the rows that would be deleted; delete nothing."
        )
        parser.add_argument(
            "--batch-size",
            type=flags.whole_number(
                1, retention.MAX_BATCH_SIZE, note="rows deleted per transaction: more would hold locks longer"
            ),
            default=retention.MAX_BATCH_SIZE,
            help=f"Rows deleted per transaction, 1 to {retention.MAX_BATCH_SIZE:,} "
            f"(default {retention.MAX_BATCH_SIZE:,}).",
        )
        parser.add_argument(
            "--status",
            action="append",
            choices=retention.STATUSES,
            help="Prune rows of this status only (repeat for several; default: all four).",
        )
        parser.add_argument(
            "--max-batches",
            type=flags.whole_number(1),
            default=None,
            help="Stop after this many batches (default: no limit).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        batch_size = options["batch_size"]
        try:
            policy = conf.retention
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from None
        statuses = options["status"] or list(retention.STATUSES)
        statuses = [status for status in retention.STATUSES if status in statuses]
        dry_run = options["dry_run"]
        verbose = options["verbosity"] >= 2

        def report_batch(status: str, deleted: int, seconds: float) -> None:
            self.stdout.write(f"  {status}: deleted {deleted:,} rows in {seconds:.2f} s")

        now = timezone.now()
        counts = retention.prune(
            now,
            batch_size=batch_size,
            max_batches=options["max_batches"],
            dry_run=dry_run,
            statuses=statuses,
            on_batch=report_batch if verbose else None,
        )
        verb = "would be deleted" if dry_run else "deleted"
        for status in statuses:
            keep = policy[status]
            if keep is None:
                self.stdout.write(f"{status}: kept forever, none {verb}")
                continue
            try:
                ended = f"ended before {now - keep:%Y-%m-%d %H:%M:%S %Z}"
            except OverflowError:
                ended = "nothing is that old"
            self.stdout.write(
                f"{status}: {counts[status]:,} {verb} (kept {retention.describe(keep)}: {ended})"
            )
        total = sum(counts.values())
        if dry_run:
            self.stdout.write(f"Dry run: {total:,} rows would be deleted; nothing was deleted.")
        else:
            self.stdout.write(self.style.SUCCESS(f"Deleted {total:,} rows."))
