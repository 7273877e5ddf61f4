"""The Django app (for the ``pgfailover_status`` management command)."""

from __future__ import annotations

from django.apps import AppConfig


class PgFailoverConfig(AppConfig):
    """``INSTALLED_APPS += ["pgfailover.contrib.django"]``."""

    name = "pgfailover.contrib.django"
    label = "pgfailover"
    verbose_name = "pgfailover"
