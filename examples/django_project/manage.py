#!/usr/bin/env python3
"""The Django example (run: `python examples/django_project/manage.py rundemo`).

Start a cluster first with `pgfailover lab up` (or set PGFAILOVER_SOURCE to
a pgfailover.toml or a DSN). `rundemo` migrates through the primary and
serves on 127.0.0.1:8000:

    curl 'http://127.0.0.1:8000/notes/add?text=hello'   # written on the primary
    curl http://127.0.0.1:8000/notes/                   # read on a standby
    python examples/django_project/manage.py pgfailover_status
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    sys.path[:0] = [str(HERE), str(HERE.parent)]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
