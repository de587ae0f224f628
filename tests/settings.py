"""Settings for django_jobs' own tests.

SQLite files by default (worker subprocesses must see the same database, so
not in memory); PostgreSQL when DATABASE_URL is set. Redis comes from
REDIS_URL, which the test session sets to a throwaway server it starts
unless the environment already gives one.
"""

import os
import tempfile

BASE_DIR = os.path.dirname(os.path.abspath(__file__))
SECRET_KEY = "django-jobs-tests-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django_jobs",
    "tests.testapp",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
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

_DB_DIR = os.environ.get("DJANGO_JOBS_TEST_DB_DIR") or tempfile.gettempdir()
if os.environ.get("DATABASE_URL"):
    import dj_database_url

    DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"])}
    # One test database per run, so that runs side by side (tox envs) do not collide.
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_{os.getpid()}"}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.path.join(_DB_DIR, "django_jobs_tests.sqlite3"),
            "OPTIONS": {"timeout": 30},
            "TEST": {"NAME": os.path.join(_DB_DIR, f"django_jobs_test_{os.getpid()}.sqlite3")},
        }
    }

# A second alias, for the tests that route job rows to their own database.
DATABASES["jobs"] = {**DATABASES["default"]}
if DATABASES["jobs"]["ENGINE"].endswith("sqlite3"):
    DATABASES["jobs"]["NAME"] = os.path.join(_DB_DIR, "django_jobs_tests_jobs.sqlite3")
    DATABASES["jobs"]["TEST"] = {
        "NAME": os.path.join(_DB_DIR, f"django_jobs_test_jobs_{os.getpid()}.sqlite3")
    }
else:
    DATABASES["jobs"]["TEST"] = {"NAME": f"{DATABASES['default']['TEST']['NAME']}_jobs"}

if os.environ.get("DJANGO_JOBS_TEST_CONN_MAX_AGE"):
    DATABASES["default"]["CONN_MAX_AGE"] = int(os.environ["DJANGO_JOBS_TEST_CONN_MAX_AGE"])

# Periodic jobs for scheduler subprocesses started by a test.
if os.environ.get("DJANGO_JOBS_TEST_SCHEDULE"):
    import json

    DJANGO_JOBS = {"SCHEDULE": json.loads(os.environ["DJANGO_JOBS_TEST_SCHEDULE"])}

# Other DJANGO_JOBS options for subprocesses started by a test (JSON).
if os.environ.get("DJANGO_JOBS_TEST_OPTIONS"):
    import json

    DJANGO_JOBS = {**globals().get("DJANGO_JOBS", {}), **json.loads(os.environ["DJANGO_JOBS_TEST_OPTIONS"])}

# A worker subprocess started by a test uses the test database by this name.
if os.environ.get("DJANGO_JOBS_TEST_DB_NAME"):
    DATABASES["default"]["NAME"] = os.environ["DJANGO_JOBS_TEST_DB_NAME"]

# Database outage tests: reach PostgreSQL through a proxy the test can cut, or give up
# sooner on a locked SQLite file.
if os.environ.get("DJANGO_JOBS_TEST_DB_PORT"):
    DATABASES["default"]["PORT"] = int(os.environ["DJANGO_JOBS_TEST_DB_PORT"])
    DATABASES["default"]["HOST"] = "127.0.0.1"
if os.environ.get("DJANGO_JOBS_TEST_DB_TIMEOUT"):
    DATABASES["default"].setdefault("OPTIONS", {})
    if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        DATABASES["default"]["OPTIONS"]["timeout"] = float(os.environ["DJANGO_JOBS_TEST_DB_TIMEOUT"])
    else:
        DATABASES["default"]["OPTIONS"]["connect_timeout"] = int(
            float(os.environ["DJANGO_JOBS_TEST_DB_TIMEOUT"])
        )

# PostgreSQL with psycopg's prepared statements on, as a deployment turns them on (CI runs the
# suite on PostgreSQL both ways: Django's default is off).
_prepare_threshold = os.environ.get("DJANGO_JOBS_TEST_PREPARE_THRESHOLD")
if _prepare_threshold and DATABASES["default"]["ENGINE"].endswith("postgresql"):
    for _alias in ("default", "jobs"):
        DATABASES[_alias]["OPTIONS"] = {
            **DATABASES[_alias].get("OPTIONS", {}),
            "prepare_threshold": int(_prepare_threshold),
        }

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
RQ_QUEUES = {
    "default": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 60},
    "high": {"URL": REDIS_URL},
    "low": {"URL": REDIS_URL},
    "emails": {"URL": REDIS_URL},
}

# The suite does not test password hashing: the fastest hasher spares the half second that
# Django's default (PBKDF2) spends on each user the admin tests create and log in.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_jobs": {"handlers": ["console"], "level": "WARNING"}},
}
