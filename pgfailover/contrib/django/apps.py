"""The Django app: the ``pgfailover_status`` command, and statement counting.

With the app installed, every statement Django runs on the cluster's
aliases is counted in the manager's ``pgfailover_queries_total`` (see
:func:`pgfailover.contrib.django.count_statement`).
"""

from __future__ import annotations

from django.apps import AppConfig


class PgFailoverConfig(AppConfig):
    """``INSTALLED_APPS += ["pgfailover.contrib.django"]``."""

    name = "pgfailover.contrib.django"
    label = "pgfailover"
    verbose_name = "pgfailover"

    def ready(self) -> None:
        """Count statements on every connection Django opens to the cluster."""
        from django.db.backends.signals import connection_created

        from pgfailover.contrib.django import install_counting

        connection_created.connect(install_counting, dispatch_uid="pgfailover-counting")
