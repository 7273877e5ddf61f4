"""The ``pgfailover`` command line, behind the ``cli`` extra.

``pip install 'pgfailover[cli]'`` brings click (the commands),
prometheus-client (``serve``'s ``/metrics``) and waitress (``serve``'s HTTP
server). The library itself needs
neither: this module imports nothing until :func:`main` has checked that
they are there, so a missing extra is one line and exit 3, not a traceback.
The commands are in :mod:`pgfailover.cli.app`.
"""

from __future__ import annotations

import importlib.util
import sys

__all__ = ["main"]

_NEEDS = ("click", "prometheus_client", "waitress")


def main() -> None:
    """Run the ``pgfailover`` command (the console script's entry point)."""
    missing = [name for name in _NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"pgfailover: the command line needs {' and '.join(missing)}: "
            "pip install 'pgfailover[cli]'",
            file=sys.stderr,
        )
        sys.exit(3)
    from pgfailover.cli.app import main as run

    run()
