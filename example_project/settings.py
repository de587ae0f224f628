"""Settings for the example project: a registration page whose welcome email is a background job.

Everything has a local default, so ``python manage.py demo`` runs with nothing
configured. The environment can override:

``REDIS_URL``
    The Redis server for every queue (default ``redis://127.0.0.1:6379/0``;
    ``manage.py demo`` starts a throwaway one and sets it when unset).
``DATABASE_URL``
    A database URL (for example ``postgres://user:pass@host/db``); SQLite
    otherwise.
``EXAMPLE_DB_PATH``
    Where the SQLite file lives (default ``example_project/db.sqlite3``).
``EXAMPLE_EMAIL_DIR``
    Where sent emails are written, one file each (default
    ``example_project/sent_emails/``). ``EXAMPLE_EMAIL_BACKEND=console``
    prints them instead.
``DJANGO_SECRET_KEY``, ``DJANGO_DEBUG``, ``DJANGO_ALLOWED_HOSTS``
    The usual; the defaults are for local use only.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent

# A development key: this project is an example, never a deployment.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-jobs-example-project-insecure-key")
DEBUG = os.environ.get("DJANGO_DEBUG", "1").lower() not in ("0", "false", "no", "")
ALLOWED_HOSTS = [
    host.strip()
    for host in os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")
    if host.strip()
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_jobs",
    "example_project.accounts",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

if os.environ.get("DATABASE_URL"):
    # Imported only here so that the SQLite default needs nothing extra.
    import dj_database_url

    DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"], conn_max_age=60)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("EXAMPLE_DB_PATH") or str(BASE_DIR / "db.sqlite3"),
            "OPTIONS": {
                # The web server and the worker write to the same file: wait
                # for the other's lock instead of failing at once, take the
                # write lock when a transaction starts (no deadlocked upgrades),
                # and let readers run alongside a writer.
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL;",
            },
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
RQ_QUEUES = {
    "default": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 360},
    "high": {"URL": REDIS_URL},
    "low": {"URL": REDIS_URL},
    "emails": {"URL": REDIS_URL},
}

if os.environ.get("EXAMPLE_EMAIL_BACKEND", "file") == "console":
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
else:
    EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    EMAIL_FILE_PATH = os.environ.get("EXAMPLE_EMAIL_DIR") or str(BASE_DIR / "sent_emails")
DEFAULT_FROM_EMAIL = "welcome@example.com"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"

LOGIN_URL = "admin:login"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_jobs": {"handlers": ["console"], "level": "INFO"}},
}
