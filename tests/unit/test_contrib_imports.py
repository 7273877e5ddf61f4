"""The core package imports without any framework; each integration needs only its own."""

from __future__ import annotations

import subprocess
import sys

BLOCK = """
import sys
for name in ("django", "flask", "sqlalchemy", "flask_sqlalchemy"):
    sys.modules[name] = None  # importing it now raises ImportError
import pgfailover, pgfailover.contrib, pgfailover.contrib.causality, pgfailover.server
import pgfailover.cli
try:
    import pgfailover.contrib.flask
except ImportError:
    print("flask integration needs flask")
"""


def test_core_imports_without_the_frameworks() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "flask integration needs flask"
