"""The example's background jobs. They take primary keys and return JSON values.

django_jobs imports this module at startup (it autodiscovers ``jobs``
modules), so the worker knows these functions by their dotted path.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.mail import send_mail
from django.db.models import Count
from django.utils import timezone

from django_jobs import job

# A stand-in for a real list of throwaway-mail providers.
DISPOSABLE_DOMAINS = frozenset({"mailinator.com", "guerrillamail.com", "10minutemail.com", "example.org"})


@job("emails", retry=3)
def send_registration_email(user_id: int) -> str:
    """Send the welcome email to a new user; return the address it went to."""
    user = get_user_model().objects.get(pk=user_id)
    send_mail(
        subject="Welcome to the django_jobs example",
        message=(
            f"Hello {user.get_username()},\n\n"
            "your account is ready. This email was sent by a background job on the "
            "'emails' queue; its row is in the admin under Background jobs.\n"
        ),
        from_email=None,  # DEFAULT_FROM_EMAIL
        recipient_list=[user.email],
    )
    return str(user.email)


@job("high")
def score_signup(user_id: int) -> dict[str, Any]:
    """Score a new account for signs of a throwaway signup (a stand-in for a real check)."""
    user = get_user_model().objects.get(pk=user_id)
    reasons = []
    domain = user.email.rpartition("@")[2].lower()
    if domain in DISPOSABLE_DOMAINS:
        reasons.append(f"disposable email domain {domain}")
    if sum(char.isdigit() for char in user.get_username()) >= 4:
        reasons.append("many digits in the username")
    return {"user_id": user.pk, "score": 100 - 40 * len(reasons), "reasons": reasons}


@job("low")
def nightly_report() -> dict[str, Any]:
    """Count users and jobs: the kind of slow, unhurried work the low queue is for."""
    from django_jobs.models import JobRecord

    users = get_user_model().objects
    since = timezone.now() - timedelta(days=1)
    # order_by() drops the model's default ordering, which would split the groups.
    jobs_by_status = dict(JobRecord.objects.order_by().values_list("status").annotate(count=Count("pk")))
    return {
        "users": users.count(),
        "new_users_24h": users.filter(date_joined__gte=since).count(),
        "jobs": jobs_by_status,
        "generated_at": timezone.now().isoformat(),
    }
