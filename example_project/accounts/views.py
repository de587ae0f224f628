"""Registration, a report button, and a live page per job."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.html import format_html
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from django_jobs import get_job
from django_jobs.models import FINAL_STATUSES, JobRecord

from .forms import RegistrationForm
from .jobs import nightly_report, score_signup, send_registration_email


def job_payload(record: JobRecord) -> dict[str, Any]:
    """What the status page shows of a job, as JSON."""

    def iso(value: Any) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": record.id,
        "function": record.func_name,
        "queue": record.queue,
        "status": record.status,
        "result": record.result,
        "error": record.error,
        "attempts": record.attempts,
        "enqueued_at": iso(record.enqueued_at),
        "started_at": iso(record.started_at),
        "ended_at": iso(record.ended_at),
        "final": record.status in FINAL_STATUSES,
    }


def register(request: HttpRequest) -> HttpResponse:
    """Show the form; on a valid POST create the user and enqueue its jobs."""
    if request.method == "POST":
        form = RegistrationForm(request.POST)
        if form.is_valid():
            # The jobs' rows are written with the user; both reach Redis only
            # once this commits, so a worker never looks for a user that is
            # not there yet, and a failed save sends no email.
            with transaction.atomic():
                user = form.save()
                email_job = send_registration_email.delay(user.pk)
                score_job = score_signup.delay(user.pk)
            messages.success(
                request,
                format_html(
                    "Created user <strong>{}</strong>. Its welcome email is the job below; "
                    'its signup score runs on the high queue as <a href="{}">job {}</a>.',
                    user.get_username(),
                    reverse("accounts:job", args=[score_job.id]),
                    score_job.id,
                ),
            )
            return redirect("accounts:job", job_id=email_job.id)
    else:
        form = RegistrationForm()
    recent_jobs = JobRecord.objects.only("id", "func_name", "queue", "status", "enqueued_at")[:10]
    return render(request, "accounts/register.html", {"form": form, "recent_jobs": recent_jobs})


@require_POST
def enqueue_report(request: HttpRequest) -> HttpResponse:
    """Enqueue the report on the low queue and show its job."""
    handle = nightly_report.delay()
    messages.info(request, "Report enqueued on the low queue.")
    return redirect("accounts:job", job_id=handle.id)


def job_detail(request: HttpRequest, job_id: str) -> HttpResponse:
    """A page that follows one job until it ends."""
    record = get_job(job_id).record
    if record is None:
        raise Http404(f"No job with id {job_id!r}.")
    job = job_payload(record)
    result = None if job["result"] is None else json.dumps(job["result"], indent=2)
    return render(request, "accounts/job_detail.html", {"job": job, "result_json": result})


@never_cache
def job_status(request: HttpRequest, job_id: str) -> JsonResponse:
    """The job's row as JSON, polled by the job page."""
    record = get_job(job_id).record
    if record is None:
        return JsonResponse({"error": f"No job with id {job_id!r}."}, status=404)
    return JsonResponse(job_payload(record))
