"""``pgfailover status``, ``check-health``, ``watch``, ``trigger`` and ``history``.

Without ``--url`` each command builds a short-lived manager that probes
every node once, in parallel and bounded by the probe timeout, with no idle
pool connections; with ``--url`` it asks a running ``pgfailover serve``.
Colour only on a terminal (click strips it in a pipe); ``--json`` everywhere
a script may want it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from pgfailover.cli.common import (
    EXIT_DEGRADED,
    EXIT_OK,
    Cluster,
    Seconds,
    UsageProblem,
    cluster_options,
    handle_errors,
    http_call,
    optional_cluster_options,
)
from pgfailover.events import EventLog
from pgfailover.manager import FailoverManager
from pgfailover.report import TriggerPlan, exit_code_for, render, trigger_plan

__all__ = [
    "check_health",
    "echo_event",
    "history",
    "probing_manager",
    "status",
    "trigger",
    "watch",
]

timeout_option = click.option(
    "--timeout",
    type=Seconds(min=0.1),
    help="Probe timeout in seconds (default: the configured health_check_timeout).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@contextmanager
def probing_manager(cluster: Cluster, timeout: float | None) -> Iterator[FailoverManager]:
    """A manager that has probed every node once; closed on exit."""
    assert cluster.nodes is not None  # noqa: S101 - callers check cluster.url first
    mgr = FailoverManager(
        nodes=cluster.nodes, config=cluster.probe_config(timeout), name="pgfailover-cli"
    )
    try:
        mgr.open(start_health_checks=False)
        yield mgr
    finally:
        mgr.close(timeout=2)


def _status(cluster: Cluster, timeout: float | None, *, fresh: bool = False) -> dict[str, Any]:
    if cluster.url:
        if fresh:
            code, body = http_call(cluster, "POST", "/failover/check-health")
        else:
            code, body = http_call(cluster, "GET", "/failover/status")
        if code != 200:
            raise click.ClickException(f"{cluster.url}: HTTP {code}: {_error(body)}")
        if not isinstance(body.get("nodes"), list) or "state" not in body:
            raise UsageProblem(f"{cluster.url} did not answer like pgfailover serve")
        return dict(body)
    with probing_manager(cluster, timeout) as mgr:
        return mgr.get_failover_status()


def _error(body: Any) -> str:
    return str(body.get("error")) if isinstance(body, dict) else str(body)


def _show(status: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(status, indent=2, default=str))
    else:
        click.echo(render(status, colour=True))


@click.command()
@cluster_options
@timeout_option
@json_option
@click.pass_context
@handle_errors
def status(ctx: click.Context, cluster: Cluster, timeout: float | None, as_json: bool) -> None:
    """Probe every node once and show the cluster.

    Exit code: 0 healthy, 1 degraded or failing over, 2 no writable primary,
    3 usage or configuration error.
    """
    result = _status(cluster, timeout)
    _show(result, as_json)
    ctx.exit(exit_code_for(result))


@click.command("check-health")
@cluster_options
@timeout_option
@json_option
@click.pass_context
@handle_errors
def check_health(
    ctx: click.Context, cluster: Cluster, timeout: float | None, as_json: bool
) -> None:
    """Run one probe round now (on the server with --url); output and exit codes as status."""
    result = _status(cluster, timeout, fresh=True)
    _show(result, as_json)
    ctx.exit(exit_code_for(result))


@click.command()
@cluster_options
@timeout_option
@click.option("--interval", type=Seconds(min=0.1), default=2.0, show_default=True, help="Seconds.")
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many refreshes.")
@handle_errors
def watch(cluster: Cluster, timeout: float | None, interval: float, count: int | None) -> None:
    """A live view of the cluster, refreshed in place on a terminal (Ctrl-C to stop)."""
    tty = sys.stdout.isatty()
    shown = 0
    mgr = None
    if cluster.url is None:
        assert cluster.nodes is not None  # noqa: S101 - no --url means nodes were loaded
        cfg = cluster.probe_config(timeout).replace(health_check_interval=interval)
        mgr = FailoverManager(nodes=cluster.nodes, config=cfg, name="pgfailover-watch")
        mgr.open(start_health_checks=True)
    try:
        while True:
            result = _status(cluster, timeout) if mgr is None else mgr.get_failover_status()
            stamp = datetime.now(tz=timezone.utc).strftime("%H:%M:%S")
            if tty:
                click.clear()
            click.echo(f"{stamp}  every {interval:g}s\n{render(result, colour=True)}")
            if not tty:
                click.echo("")
            shown += 1
            if count is not None and shown >= count:
                break
            time.sleep(interval)  # the refresh period of a live view
    except KeyboardInterrupt:
        pass
    finally:
        if mgr is not None:
            mgr.close(timeout=2)


def _preview(mgr: FailoverManager, target: str | None, force: bool) -> TriggerPlan:
    """What the trigger checked (a probe round now) and what it would do."""
    return trigger_plan(mgr.check_health(), mgr.config, time.time(), target, force)


@click.command()
@cluster_options
@timeout_option
@click.option("--to", "target", help="The standby to promote (default: the best candidate).")
@click.option("--force", is_flag=True, help="Skip the forceable guards (see the README).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_context
@handle_errors
def trigger(
    ctx: click.Context,
    cluster: Cluster,
    timeout: float | None,
    target: str | None,
    force: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """A guarded manual failover: check, show the plan, confirm, promote, report."""
    if cluster.url:
        request = {"target": target, "force": force}
        code, body = http_call(cluster, "POST", "/failover/trigger", {**request, "dry_run": True})
        if code != 200 or not isinstance(body, dict) or not isinstance(body.get("plan"), list):
            _http_failure(cluster, code, body)
        plan = TriggerPlan(bool(body.get("allowed")), [str(x) for x in body["plan"]], None)
        _show_or_refuse(ctx, plan, as_json)
        _confirm_failover(yes)
        code, body = http_call(cluster, "POST", "/failover/trigger", request)
        done = code == 200 and isinstance(body, dict) and isinstance(body.get("event"), dict)
        if as_json:
            click.echo(json.dumps(body, indent=2))
        elif done:
            echo_event(body["event"])
        if done:
            ctx.exit(EXIT_OK)
        _http_failure(cluster, code, body)
    with probing_manager(cluster, timeout) as mgr:
        if target is not None:
            mgr.node(target)  # an unknown name is a usage error (exit 3), named with the known
        _show_or_refuse(ctx, _preview(mgr, target, force), as_json)
        _confirm_failover(yes)
        event = mgr.perform_failover(target, force=force)
        if event.outcome == "completed":
            mgr.wait_repointed(mgr.config.sync_standby_attach_timeout + 30)
            event = mgr.events.get(event.id) or event
        if as_json:
            click.echo(json.dumps(event.as_dict(), indent=2, default=str))
        else:
            echo_event(event.as_dict())
        ctx.exit(EXIT_OK if event.outcome == "completed" else EXIT_DEGRADED)


def _show_or_refuse(ctx: click.Context, plan: TriggerPlan, as_json: bool) -> None:
    """Print what was checked and the plan; a refused plan ends here (exit 1)."""
    if not as_json:
        click.echo("\n".join(plan.lines))
    if not plan.allowed:
        if as_json:
            click.echo(json.dumps({"refused": plan.lines}, indent=2))
        ctx.exit(EXIT_DEGRADED)


def _confirm_failover(yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageProblem("not a terminal: pass --yes to confirm the failover")
    click.confirm("Go ahead?", abort=True)


def _http_failure(cluster: Cluster, code: int, body: Any) -> None:
    """A trigger the server did not carry out: one line naming why (and the guard)."""
    if code == 200:
        raise UsageProblem(f"{cluster.url} did not answer like pgfailover serve")
    guard = body.get("guard") if isinstance(body, dict) else None
    raise click.ClickException(
        f"HTTP {code}: {_error(body)}" + (f" (guard {guard})" if guard else "")
    )


def echo_event(event: dict[str, Any]) -> None:
    when = datetime.fromtimestamp(event["started"], tz=timezone.utc).isoformat(timespec="seconds")
    duration = "-" if event.get("duration") is None else f"{event['duration']:.3f}s"
    moved = f"{event.get('from') or '-':>8} -> {event.get('to') or '-':<8}"
    click.echo(
        f"{when}  {event['kind']:<10} {moved} {event['outcome']:<10} {duration:>8}  "
        f"{event['reason']}"
    )
    for note in event.get("notes") or []:
        click.echo(f"    note: {note}")


@click.command()
@optional_cluster_options
@click.option(
    "--file",
    "history_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSON-lines history file (default: the configured history_file).",
)
@click.option("--limit", type=click.IntRange(min=1), help="Only the newest N events.")
@json_option
@handle_errors
def history(cluster: Cluster, history_file: Path | None, limit: int | None, as_json: bool) -> None:
    """Failover events: from `pgfailover serve` (--url) or the history file."""
    if cluster.url:
        code, body = http_call(
            cluster, "GET", "/failover/history" + (f"?limit={limit}" if limit else "")
        )
        if code != 200:
            raise click.ClickException(f"{cluster.url}: HTTP {code}: {_error(body)}")
        if not isinstance(body.get("events"), list):
            raise UsageProblem(f"{cluster.url} did not answer like pgfailover serve")
        events = [e for e in body["events"] if isinstance(e, dict)]
    else:
        path = history_file or cluster.config.history_file
        if path is None:
            raise UsageProblem(
                "no history here: give --file, set history_file in the config, or ask "
                "a running `pgfailover serve` with --url"
            )
        if not Path(path).is_file():
            raise UsageProblem(f"history file {path} does not exist")
        log = EventLog(10_000, Path(path))
        if log.skipped:
            click.echo(
                f"note: {log.skipped} line(s) of {path} skipped: not events (-v shows each)",
                err=True,
            )
        events = [e.as_dict() for e in log.events()]
    if limit:
        events = events[-limit:]
    if as_json:
        click.echo(json.dumps(events, indent=2, default=str))
        return
    if not events:
        click.echo("no failover events")
    for event in events:
        echo_event(event)
