"""``manage.py pgfailover_status``: the cluster as the app's manager sees it."""

from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import BaseCommand

from pgfailover.contrib.django import get_manager
from pgfailover.report import exit_code_for, render


class Command(BaseCommand):
    """Probe every node now and print the cluster (exit codes as `pgfailover status`)."""

    help = "Probe every node of the pgfailover cluster and print its status."

    def add_arguments(self, parser: Any) -> None:
        """``--json``."""
        parser.add_argument("--json", action="store_true", help="Print JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        """Print the status; exit 0 healthy, 1 degraded, 2 no writable primary."""
        mgr = get_manager()
        mgr.check_health()
        status = mgr.get_failover_status()
        if options["json"]:
            self.stdout.write(json.dumps(status, indent=2, default=str))
        else:
            self.stdout.write(render(status, colour=self.stdout.isatty()))
        code = exit_code_for(status)
        if code:
            sys.exit(code)
