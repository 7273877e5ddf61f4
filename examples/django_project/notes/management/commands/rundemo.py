"""``manage.py rundemo``: migrate (through the primary), then runserver on 127.0.0.1:8000."""

from __future__ import annotations

from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    """Migrate, then serve."""

    help = "Create the tables through the primary and serve the example on 127.0.0.1:8000."

    def handle(self, *args: Any, **options: Any) -> None:
        """Run migrate then runserver."""
        call_command("migrate", run_syncdb=True, verbosity=1)
        call_command("runserver", "127.0.0.1:8000")
