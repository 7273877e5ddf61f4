"""The ``pgfailover`` command line.

Every command group lives in its own module; this one assembles them. User
mistakes print one clear line and exit non-zero, never a traceback: 3 for
usage and configuration errors (a bad flag, DSN or config file, a server
that cannot be asked), and each command's own codes otherwise (see
:mod:`pgfailover.cli.common`).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from pgfailover import __version__
from pgfailover.cli.common import EXIT_USAGE
from pgfailover.cli.lab import lab
from pgfailover.cli.maint import pause, resume
from pgfailover.cli.ops import check_health, history, status, trigger, watch
from pgfailover.cli.rejoin import rejoin
from pgfailover.cli.serve import demo, serve
from pgfailover.cli.switch import switchover

__all__ = ["cli", "main"]


class _Group(click.Group):
    """A click group whose usage errors exit with 3 (click's default 2 means "no primary")."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        if not kwargs.pop("standalone_mode", True):
            return super().main(*args, standalone_mode=False, **kwargs)  # type: ignore[call-overload]
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)  # type: ignore[call-overload]
        except click.ClickException as exc:
            exc.show()
            sys.exit(EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pgfailover")
@click.option("-v", "--verbose", count=True, help="More log output (-v INFO, -vv DEBUG).")
def cli(verbose: int) -> None:
    """pgfailover: keep writing to the real PostgreSQL primary through failovers."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose == 0:
        # What the commands find is in their output; state-change log lines and the
        # pool's retries would repeat it on stderr (serve sets up its own logging).
        # Restored when the command ends, so an embedding process keeps its levels.
        quiet = [logging.getLogger("psycopg.pool"), logging.getLogger("pgfailover")]
        saved = [(logger, logger.level) for logger in quiet]
        for logger in quiet:
            logger.setLevel(logging.ERROR)

        def restore() -> None:
            for logger, old_level in saved:
                logger.setLevel(old_level)

        click.get_current_context().call_on_close(restore)


for command in (
    status,
    check_health,
    watch,
    trigger,
    switchover,
    rejoin,
    pause,
    resume,
    history,
    serve,
    demo,
    lab,
):
    cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="pgfailover")
