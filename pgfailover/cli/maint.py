"""``pgfailover pause`` and ``resume``: maintenance mode on a running ``pgfailover serve``.

Maintenance mode lives in the process that would promote (the arbiter), so
these commands ask it over its admin API (``--url``, ``--token``); a
one-shot manager built from ``--config`` or ``--dsn`` would forget it on
exit, and is refused with a line saying so. With several arbiters
(``--etcd``) any one of them will do: the pause is written to etcd for all.
"""

from __future__ import annotations

import json
from typing import Any

import click

from pgfailover.cli.common import Cluster, UsageProblem, cluster_options, handle_errors, http_call
from pgfailover.report import EXIT_OK

__all__ = ["pause", "resume"]


def _ask(cluster: Cluster, path: str, body: dict[str, Any] | None, what: str) -> dict[str, Any]:
    if not cluster.url:
        raise UsageProblem(
            f"{what} needs --url (and --token) of the running `pgfailover serve`: "
            "maintenance mode lives in the process that promotes"
        )
    code, reply = http_call(cluster, "POST", path, body)
    if code != 200 or not isinstance(reply, dict):
        error = reply.get("error") if isinstance(reply, dict) else reply
        raise click.ClickException(f"{cluster.url}: HTTP {code}: {error}")
    return reply


def _report(status: dict[str, Any], as_json: bool) -> None:
    maintenance = status.get("maintenance") or {}
    if as_json:
        click.echo(json.dumps(maintenance, indent=2))
    elif maintenance.get("paused"):
        shared = " (every arbiter's, in etcd)" if maintenance.get("shared") else ""
        click.echo(
            f"cluster {status.get('cluster')}: maintenance mode since {maintenance.get('since')}"
            f"{shared}: no automatic promotion until `pgfailover resume`"
        )
    else:
        click.echo(f"cluster {status.get('cluster')}: automatic promotion on")


@click.command()
@cluster_options
@click.option("--reason", default="maintenance", show_default=True, help="Recorded in history.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@handle_errors
def pause(ctx: click.Context, cluster: Cluster, reason: str, as_json: bool) -> None:
    """Maintenance mode: no automatic promotion (probing and routing go on)."""
    _report(_ask(cluster, "/failover/pause", {"reason": reason}, "pause"), as_json)
    ctx.exit(EXIT_OK)


@click.command()
@cluster_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@handle_errors
def resume(ctx: click.Context, cluster: Cluster, as_json: bool) -> None:
    """Leave maintenance mode: a lost primary is failed over again."""
    _report(_ask(cluster, "/failover/resume", None, "resume"), as_json)
    ctx.exit(EXIT_OK)
