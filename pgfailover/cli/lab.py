"""``pgfailover lab ...``: drive a replication lab from a shell.

The lab lives in a directory (``--dir``, ``PGFAILOVER_LAB_DIR``, or a default
under the system temp dir), so each command is a separate process that
reopens it from its state file, on the backend that made it: the local one
(this machine's PostgreSQL binaries) or ``--backend docker`` (containers).
Network faults (``blackhole``, ``partition``, ``backlog``, ``heal``) live in the
firewall, tagged with the lab, need root and the local backend.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from pgfailover.cli.common import UsageProblem, handle_errors
from pgfailover.lab import open_lab
from pgfailover.lab.base import CLIENT_HOST
from pgfailover.lab.local import STATE_FILE, LocalLab, default_lab_dir

if TYPE_CHECKING:
    from pgfailover.lab.docker import DockerLab

__all__ = ["lab"]

BACKENDS = ("local", "docker")


dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=default_lab_dir,
    show_default="$PGFAILOVER_LAB_DIR or /tmp/pgfailover-lab-UID",
    help="Directory holding the lab.",
)


def _print_nodes(the_lab: LocalLab | DockerLab) -> None:
    click.echo(f"lab in {the_lab.directory} ({the_lab.describe()})")
    for info in the_lab.nodes:
        click.echo(f"  {info.name}  {info.dsn}")
    click.echo(f"multi-host URL: {the_lab.url}")
    if the_lab.client_host:
        click.echo(f"client address: {the_lab.client_host} (same ports; 'lab partition' cuts it)")


@click.group()
def lab() -> None:
    """A local streaming-replication cluster to try pgfailover on."""


@lab.command()
@click.option("--standbys", default=2, show_default=True, type=click.IntRange(0, 8))
@click.option("--sync", is_flag=True, help="Quorum synchronous replication.")
@click.option(
    "--quorum",
    default=1,
    show_default=True,
    type=click.IntRange(1, 8),
    help="With --sync: how many standbys must acknowledge (ANY K).",
)
@click.option(
    "--pg-version",
    type=int,
    default=None,
    help="PostgreSQL major version to use (local backend; docker runs 15).",
)
@click.option(
    "--backend",
    default=lambda: os.environ.get("PGFAILOVER_LAB") or "local",
    show_default="$PGFAILOVER_LAB or local",
    help="local (this machine's PostgreSQL binaries) or docker (containers on a Docker "
    "engine, the image built from Debian's packages on $PGFAILOVER_BASE_IMAGE).",
)
@dir_option
@handle_errors
def up(
    standbys: int,
    sync: bool,
    quorum: int,
    pg_version: int | None,
    backend: str,
    directory: Path,
) -> None:
    """Create a cluster (or restart the one already in --dir)."""

    def progress(message: str) -> None:
        click.echo(f"  {message}", err=True)

    if backend not in BACKENDS:
        raise UsageProblem(
            f"--backend / PGFAILOVER_LAB: {backend!r} is not a lab backend ({', '.join(BACKENDS)})"
        )
    if backend == "docker" and pg_version not in (None, 15):
        raise UsageProblem(f"--pg-version {pg_version}: the docker lab runs PostgreSQL 15")
    the_lab: LocalLab | DockerLab
    if (directory / STATE_FILE).exists():
        click.echo(f"restarting the lab in {directory}", err=True)
        the_lab = open_lab(directory)
        the_lab.start_all(progress)
    elif backend == "docker":
        from pgfailover.lab.docker import DockerLab

        click.echo(f"creating a docker lab of {standbys + 1} nodes in {directory}", err=True)
        the_lab = DockerLab.create(
            directory,
            standbys=standbys,
            sync=min(quorum, standbys) if sync else 0,
            progress=progress,
        )
    else:
        click.echo(f"creating a lab of {standbys + 1} nodes in {directory}", err=True)
        the_lab = LocalLab.create(
            directory,
            standbys=standbys,
            sync=min(quorum, standbys) if sync else 0,
            version=pg_version,
            progress=progress,
        )
    _print_nodes(the_lab)


@lab.command()
@dir_option
@handle_errors
def down(directory: Path) -> None:
    """Stop every node and remove the lab (its directory; a docker lab's containers too)."""
    open_lab(directory).destroy()
    click.echo(f"lab in {directory} removed")


@lab.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@dir_option
@handle_errors
def status(as_json: bool, directory: Path) -> None:
    """Each node's process, role, timeline, upstream and LSN."""
    the_lab = open_lab(directory)
    rows = the_lab.status()
    if as_json:
        json.dump([r.as_dict() for r in rows], sys.stdout, indent=2)
        click.echo()
        return
    header = (
        f"{'node':<8}{'port':<7}{'process':<9}{'role':<9}{'tl':<4}{'upstream':<10}{'sync':<8}"
        f"{'fault':<10}lsn"
    )
    click.echo(header)
    for r in rows:
        click.echo(
            f"{r.name:<8}{r.port:<7}{r.process:<9}{r.role or '-':<9}{r.timeline or '-'!s:<4}"
            f"{r.upstream or '-':<10}{r.sync_state or '-':<8}{r.fault or '-':<10}{r.lsn or '-'}"
        )


@lab.command()
@click.option(
    "--client-address",
    is_flag=True,
    help=f"Connect through {CLIENT_HOST}, the path 'lab partition' cuts.",
)
@dir_option
@handle_errors
def config(client_address: bool, directory: Path) -> None:
    """Print a pgfailover.toml for the lab (nodes named as in the lab)."""
    lines = []
    for node in open_lab(directory).manager_nodes(client_address=client_address):
        lines += ["[[nodes]]", f"name = {json.dumps(node.name)}", f"dsn = {json.dumps(node.dsn)}"]
        lines += [f"priority = {node.priority}", ""]
    click.echo("\n".join(lines), nl=False)


def _node_action(name: str, verb: str, help_text: str) -> None:
    @lab.command(name=name, help=help_text)
    @click.argument("node")
    @dir_option
    @handle_errors
    def command(node: str, directory: Path) -> None:
        the_lab = open_lab(directory)
        getattr(the_lab, name)(node)
        click.echo(f"{node} {verb}")


_node_action("start", "started", "Start a stopped node.")
_node_action("kill", "killed", "Node loss: SIGKILL the postmaster and every child.")
_node_action("pause", "paused", "A hung server: SIGSTOP every process of the node.")
_node_action("resume", "resumed", "SIGCONT a paused node.")
_node_action("promote", "promoted", "pg_promote() a standby.")
_node_action(
    "blackhole",
    "black-holed: every packet to or from its port is dropped (undo: lab heal)",
    "The node vanishes: drop every TCP packet to or from its port, no reset (root).",
)
_node_action(
    "partition",
    f"cut off from clients on {CLIENT_HOST}; replication goes on (undo: lab heal)",
    f"Cut the node off from clients on {CLIENT_HOST}; replication keeps streaming (root).",
)
_node_action(
    "backlog",
    "refusing new connections silently (SYNs dropped); open ones go on (undo: lab heal)",
    "A full listen backlog: new connections hang, open ones go on (root).",
)


@lab.command()
@click.argument("node", required=False)
@dir_option
@handle_errors
def heal(node: str | None, directory: Path) -> None:
    """Remove NODE's network fault, or every fault of the lab (root)."""
    open_lab(directory).heal(node)
    click.echo(f"{node or 'every node'} healed")


@lab.command()
@click.argument("node")
@click.option(
    "--mode", type=click.Choice(["smart", "fast", "immediate"]), default="fast", show_default=True
)
@dir_option
@handle_errors
def stop(node: str, mode: str, directory: Path) -> None:
    """Stop a node cleanly."""
    open_lab(directory).stop(node, mode)  # type: ignore[arg-type]
    click.echo(f"{node} stopped ({mode})")


@lab.command()
@click.argument("node")
@click.argument("upstream")
@dir_option
@handle_errors
def follow(node: str, upstream: str, directory: Path) -> None:
    """Repoint a running standby at UPSTREAM."""
    open_lab(directory).follow(node, upstream)
    click.echo(f"{node} streams from {upstream}")


@lab.command()
@click.argument("node")
@click.option("--to", "upstream", default=None, help="Upstream node (default: the primary).")
@dir_option
@handle_errors
def rejoin(node: str, upstream: str | None, directory: Path) -> None:
    """pg_rewind an old primary and start it as a standby."""
    the_lab = open_lab(directory)
    the_lab.rejoin(node, upstream)
    click.echo(f"{node} rejoined as a standby of {upstream or the_lab.primary()}")
