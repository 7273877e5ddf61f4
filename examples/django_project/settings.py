"""Settings of the Django example: every database alias from one pgfailover source."""

from __future__ import annotations

from source import cluster_source

from pgfailover.contrib.django import databases

SOURCE = cluster_source()
PGFAILOVER = {
    "source": SOURCE,
    "settings": {"promotion": "auto", "failover_cooldown": 0},
}
DATABASES = databases(SOURCE)
DATABASE_ROUTERS = ["pgfailover.contrib.django.FailoverRouter"]
MIDDLEWARE = ["pgfailover.contrib.django.FailoverMiddleware"]
INSTALLED_APPS = ["pgfailover.contrib.django", "notes"]
ROOT_URLCONF = "notes.urls"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
SECRET_KEY = "pgfailover-example-not-secret"  # noqa: S105 - an example on loopback
DEBUG = True
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
