from __future__ import annotations

from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules
from django.utils.translation import gettext_lazy as _

from . import checks, queues  # noqa: F401  (registers the system checks and the settings signal)
from .conf import conf


class DjangoJobsConfig(AppConfig):
    name = "django_jobs"
    verbose_name = _("Background jobs")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        if conf.autodiscover:
            autodiscover_modules(*conf.autodiscover)
