"""``pgfailover serve``: the arbiter daemon, and ``pgfailover demo``.

``serve`` runs one long-lived manager, ``promotion=auto`` unless told
otherwise, with the status/admin HTTP API and ``/metrics``. Applications
then run their own managers in ``external`` mode and follow the promotions
this process makes: exactly one process decides. It logs to stderr (plain
or JSON lines) and stops cleanly on SIGTERM and SIGINT: the HTTP server
first, then the manager, within about a second.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from datetime import datetime, timezone
from types import FrameType
from typing import Any

import click

from pgfailover.cli.common import Cluster, UsageProblem, cluster_options, handle_errors
from pgfailover.manager import FailoverManager
from pgfailover.server import serve as serve_api

__all__ = ["demo", "serve"]

logger = logging.getLogger("pgfailover.serve")


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data)


def _setup_logging(fmt: str, verbose: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    logging.getLogger("pgfailover").setLevel(logging.NOTSET)
    # A dead node's pool retries in the background; one line per failed probe is enough.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


@click.command()
@cluster_options
@click.option("--host", help="Address of the HTTP API (default 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port of the HTTP API (default 8008).")
@click.option(
    "--admin-port",
    type=click.IntRange(0, 65535),
    help="Serve the admin endpoints only on this port (the main port answers them 403).",
)
@click.option("--admin-host", help="Address of the admin port (default 127.0.0.1).")
@click.option(
    "--promotion",
    type=click.Choice(["auto", "external", "manual"]),
    help="Promotion mode (default: auto; this process is the arbiter).",
)
@click.option("--name", help="Cluster name: the `cluster` label of the metrics.")
@click.option(
    "--log-format",
    type=click.Choice(["plain", "json"]),
    help="Log line format on stderr (default plain).",
)
@click.pass_context
@handle_errors
def serve(
    ctx: click.Context,
    cluster: Cluster,
    host: str | None,
    port: int | None,
    admin_port: int | None,
    admin_host: str | None,
    promotion: str | None,
    name: str | None,
    log_format: str | None,
) -> None:
    """Run the arbiter: a manager with the HTTP API and /metrics, until SIGTERM.

    The admin endpoints (trigger, check-health) need a token: --token,
    $PGFAILOVER_ADMIN_TOKEN, or `token` in the config's [server] table;
    without one they are disabled.
    """
    if cluster.url or cluster.nodes is None:
        raise UsageProblem("serve probes the cluster itself: give --config, --dsn or the env")
    server = cluster.server
    _setup_logging(log_format or server.log_format, ctx.find_root().params.get("verbose", 0))
    mode = promotion or server.promotion
    config = cluster.config.replace(promotion=mode)
    mgr = FailoverManager(nodes=cluster.nodes, config=config, name=name or server.name)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s: shutting down", signal.Signals(signum).name)
        stop.set()

    listen_host = host or server.host
    listen_port = port if port is not None else server.port
    admin_listen_host = admin_host or server.admin_host
    admin_listen_port = admin_port if admin_port is not None else server.admin_port
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    api = None
    try:
        mgr.open()
        try:
            api = serve_api(
                mgr,
                host=listen_host,
                port=listen_port,
                token=cluster.token,
                admin_host=admin_listen_host,
                admin_port=admin_listen_port,
            )
        except OSError as exc:
            where = f"{listen_host}:{listen_port}"
            if admin_listen_port is not None:
                where += f" and {admin_listen_host}:{admin_listen_port}"
            raise UsageProblem(f"cannot listen on {where}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise UsageProblem(str(exc)) from None
        snap = mgr.snapshot
        logger.info(
            "serving cluster %s on %s (promotion %s, admin %s); primary %s, state %s",
            mgr.name,
            api.url,
            mode,
            f"on {api.admin_url}" if cluster.token else "disabled",
            snap.primary or "-",
            snap.state.value,
        )
        # Machine-readable readiness line on stdout (tests and scripts wait for it).
        ready = {"url": api.url, "admin_url": api.admin_url, "cluster": mgr.name}
        click.echo(json.dumps(ready), nl=True)
        sys.stdout.flush()
        stop.wait()
    finally:
        if api is not None:
            api.close(timeout=1)
        # A promotion in progress is finished (repointing included) before
        # the process exits; with nothing running this takes milliseconds.
        mgr.close(timeout=10)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        logger.info("stopped")


@click.command()
def demo() -> None:
    """A live failover on a local 3-node cluster, with a report (what `make demo` runs)."""
    from pgfailover.demo import main as demo_main

    code = demo_main()
    if code:
        sys.exit(code)
