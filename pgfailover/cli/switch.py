"""``pgfailover switchover``: move the primary on purpose, losing nothing.

Like ``trigger``: it shows what it found and what it will do, asks (or
takes ``--yes``; without a terminal it refuses to guess), then runs
:meth:`FailoverManager.switchover` here (``--config``, ``--dsn``) or on a
running ``pgfailover serve`` (``--url``, ``--token``). Exit codes: 0 done,
1 refused (the guard is named) or failed, 3 usage errors.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from pgfailover.cli.common import (
    Cluster,
    Seconds,
    UsageProblem,
    cluster_options,
    handle_errors,
    http_call,
)
from pgfailover.cli.ops import echo_event, probing_manager
from pgfailover.errors import PromotionRefused
from pgfailover.guards import Refusal
from pgfailover.report import EXIT_DEGRADED, EXIT_OK
from pgfailover.switchover import choose_switchover

__all__ = ["switchover"]


def _plan_lines(primary: str | None, target: str | None, timeout: float) -> list[str]:
    return [
        f"primary      {primary or '-'}",
        f"target       {target or 'the most advanced streaming standby'}",
        "plan         hold writes, fence "
        f"{primary or 'the primary'} and end its client sessions, wait up to {timeout:g}s "
        "for the target to replay its last WAL, promote it, repoint the other standbys, "
        "release the writes; the old primary then needs `pgfailover rejoin`",
    ]


def _confirm(yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageProblem("not a terminal: pass --yes to confirm the switchover")
    click.confirm("Go ahead?", abort=True)


@click.command()
@cluster_options
@click.option("--to", "target", help="The standby to move the primary to (default: the best).")
@click.option("--force", is_flag=True, help="Allow a nofailover target.")
@click.option(
    "--timeout",
    type=Seconds(min=0, min_open=True, max=600),
    default=30.0,
    show_default=True,
    help="Seconds the target gets to catch up before the switchover is called off.",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@handle_errors
def switchover(
    ctx: click.Context,
    cluster: Cluster,
    target: str | None,
    force: bool,
    timeout: float,
    yes: bool,
    as_json: bool,
) -> None:
    """Move the primary to a standby without losing a write (planned maintenance)."""
    if cluster.url:
        code, status = http_call(cluster, "GET", "/failover/status")
        if code != 200 or not isinstance(status, dict):
            raise click.ClickException(f"{cluster.url}: HTTP {code}")
        if not as_json:
            click.echo("\n".join(_plan_lines(status.get("current_primary"), target, timeout)))
        _confirm(yes)
        body: dict[str, Any] = {"target": target, "force": force, "timeout": timeout}
        # The server may wait `timeout` for another operation, then as long again
        # for the catch-up, then promote: wait for its answer that long.
        code, reply = http_call(
            cluster, "POST", "/failover/switchover", body, timeout=2 * timeout + 60
        )
        _finish(ctx, code == 200, reply, as_json)
        return
    with probing_manager(cluster, timeout=None) as mgr:
        if target is not None:
            mgr.node(target)  # an unknown name is a usage error, named with the known ones
        snap = mgr.check_health()
        choice = choose_switchover(snap, target=target, force=force)
        shown = target if isinstance(choice, Refusal) else choice.node
        lines = _plan_lines(snap.primary, shown, timeout)
        if isinstance(choice, Refusal):
            lines.append(f"refused      guard {choice.guard}: {choice.reason}")
        if not as_json:
            click.echo("\n".join(lines))
        if isinstance(choice, Refusal):
            if as_json:
                click.echo(json.dumps({"refused": choice.reason, "guard": choice.guard}))
            ctx.exit(EXIT_DEGRADED)
        _confirm(yes)
        try:
            event = mgr.switchover(choice.node, force=force, timeout=timeout)
        except PromotionRefused as exc:
            _finish(ctx, False, {"error": str(exc), "guard": exc.guard}, as_json)
            return
        _finish(ctx, event.outcome == "completed", {"event": event.as_dict()}, as_json)


def _finish(ctx: click.Context, ok: bool, reply: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(reply, indent=2, default=str))
    elif isinstance(reply, dict) and "event" in reply:
        echo_event(reply["event"])
    else:
        error = reply.get("error") if isinstance(reply, dict) else reply
        guard = reply.get("guard") if isinstance(reply, dict) else None
        click.echo(
            f"switchover not done: {error}" + (f" (guard {guard})" if guard else ""), err=True
        )
    ctx.exit(EXIT_OK if ok else EXIT_DEGRADED)
