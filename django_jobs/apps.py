from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class DjangoJobsConfig(AppConfig):
    name = "django_jobs"
    verbose_name = _("Background jobs")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.utils.module_loading import autodiscover_modules

        from . import checks, queues  # noqa: F401  (registers checks and the settings signal)
        from .conf import conf

        if conf.autodiscover:
            autodiscover_modules(*conf.autodiscover)
