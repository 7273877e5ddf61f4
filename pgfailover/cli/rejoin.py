"""``pgfailover rejoin``: bring a node back as a standby, on its own host.

Run it as the data directory's owner (``sudo -u postgres pgfailover rejoin
...``): it stops the server, rewinds it from the primary when the timelines
diverged, makes it a standby of the primary and starts it (see
:mod:`pgfailover.rejoin`). Exit codes: 0 streaming again, 1 a step failed
(the line says which), 3 usage mistakes (root, a wrong directory).
"""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import click

from pgfailover.cli.common import Seconds, UsageProblem, handle_errors
from pgfailover.dsn import parse_dsn
from pgfailover.rejoin import rejoin as rejoin_node
from pgfailover.rejoin import subprocess_runner

__all__ = ["rejoin"]


def _bindir(given: Path | None) -> Path:
    if given is not None:
        if not (given / "pg_rewind").is_file():
            raise UsageProblem(f"--bindir {given}: no pg_rewind there")
        return given
    from pgfailover.lab.binaries import find_binaries

    return find_binaries().bindir


def _running(pg_ctl: str, datadir: Path) -> bool:
    result = subprocess.run(
        [pg_ctl, "status", "-D", str(datadir)], capture_output=True, text=True, check=False
    )
    return result.returncode == 0


@click.command()
@click.argument("node")
@click.option(
    "--pgdata",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The node's data directory.",
)
@click.option("--primary", "primary_dsn", required=True, help="DSN of the current primary.")
@click.option(
    "--bindir", type=click.Path(file_okay=False, path_type=Path), help="PostgreSQL binaries."
)
@click.option("--no-start", is_flag=True, help="Leave starting it to your service manager.")
@click.option("--timeout", type=Seconds(min=1), default=60.0, show_default=True)
@handle_errors
def rejoin(
    node: str,
    pgdata: Path,
    primary_dsn: str,
    bindir: Path | None,
    no_start: bool,
    timeout: float,
) -> None:
    """Make NODE (its data directory here) a standby of the primary again."""
    if os.geteuid() == 0:
        raise UsageProblem(
            "run as the data directory's owner (sudo -u postgres pgfailover rejoin ...), "
            "not as root: PostgreSQL refuses to run as root"
        )
    parse_dsn(primary_dsn, field="--primary")  # a bad DSN is a usage mistake (exit 3)
    datadir = pgdata.resolve()
    if not datadir.is_dir():
        raise UsageProblem(f"--pgdata {pgdata}: no such directory")
    owner = datadir.stat().st_uid
    if owner != os.geteuid():
        name = pwd.getpwuid(owner).pw_name
        raise UsageProblem(f"{datadir} belongs to {name}: run as {name}")
    bins = _bindir(bindir)
    pg_ctl = str(bins / "pg_ctl")
    log = datadir / "pgfailover-rejoin.log"

    def stop() -> None:
        if _running(pg_ctl, datadir):
            subprocess_runner([pg_ctl, "stop", "-D", str(datadir), "-m", "fast", "-w"])

    def start() -> None:
        subprocess_runner([pg_ctl, "start", "-D", str(datadir), "-w", "-l", str(log)])

    rejoin_node(
        datadir,
        primary_dsn,
        name=node,
        bindir=bins,
        run=subprocess_runner,
        stop=stop,
        start=None if no_start else start,
        timeout=timeout,
        progress=lambda line: click.echo(f"rejoin {node}: {line}"),
    )
