"""A job on a queue that the test settings do not define until a test adds it."""

from django_jobs import job


@job("reports")
def build_report(report_id: int) -> int:
    return report_id
