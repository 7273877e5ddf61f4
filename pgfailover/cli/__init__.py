"""The ``pgfailover`` command line.

Every command group lives in its own module; this one assembles them. User
mistakes print one clear line and exit non-zero, never a traceback.
"""

from __future__ import annotations

import logging

import click

from pgfailover import __version__
from pgfailover.cli.lab import lab

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pgfailover")
@click.option("-v", "--verbose", count=True, help="More log output (-v INFO, -vv DEBUG).")
def cli(verbose: int) -> None:
    """pgfailover: keep writing to the real PostgreSQL primary through failovers."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


cli.add_command(lab)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="pgfailover")
