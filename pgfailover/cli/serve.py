"""``pgfailover serve``: the arbiter daemon, and ``pgfailover demo``.

``serve`` runs one long-lived manager, ``promotion=auto`` unless told
otherwise, with the status/admin HTTP API and ``/metrics``. Applications
then run their own managers in ``external`` mode and follow the promotions
this process makes, by probing or through its snapshot stream
(``--stream-port``, :mod:`pgfailover.stream`): one process decides. With
``--etcd`` several arbiters run and only the holder of the lease promotes
(:mod:`pgfailover.lease`). It logs to stderr (plain
or JSON lines) and stops cleanly on SIGTERM and SIGINT: the HTTP server
first, then the manager, within about a second.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
import threading
import urllib.parse
from datetime import datetime, timezone
from types import FrameType
from typing import Any

import click

from pgfailover.cli.common import Cluster, UsageProblem, cluster_options, handle_errors
from pgfailover.config import FailoverConfig, ServerSettings
from pgfailover.etcd import Etcd
from pgfailover.haproxy import AgentServer
from pgfailover.lease import ArbiterLease
from pgfailover.listener import AdminServer
from pgfailover.manager import FailoverManager
from pgfailover.notify import Webhooks, shown
from pgfailover.server import serve as serve_api
from pgfailover.stream import StreamServer
from pgfailover.topology.urls import parse_source, source_urls

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
    # The stream's server (uvicorn) would say it started a "server process": it is a thread.
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)


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
    "--haproxy-agent-port",
    type=click.IntRange(0, 65535),
    help="Answer HAProxy agent checks on this port (examples/haproxy/haproxy.cfg).",
)
@click.option("--haproxy-agent-host", help="Address of the agent port (default: --host).")
@click.option(
    "--stream-port",
    type=click.IntRange(0, 65535),
    help="Stream every snapshot to the managers that follow this arbiter (their `source`).",
)
@click.option("--stream-host", help="Address of the stream port (default: --host).")
@click.option(
    "--etcd",
    help="One of several arbiters: only the holder of a lease in this etcd "
    "(http://[user:password@]host:2379[,...]) promotes; the others take over when it "
    "expires.",
)
@click.option(
    "--etcd-ttl",
    type=click.IntRange(2, 300),
    help="Seconds the arbiter lease lasts without renewal (default 5).",
)
@click.option("--etcd-prefix", help="Where the lease's key lives in etcd (default /pgfailover).")
@click.option(
    "--etcd-cacert", help="For an https:// etcd: the CA certificate(s) that signed etcd's."
)
@click.option("--etcd-cert", help="For an etcd that asks for client certificates: this client's.")
@click.option("--etcd-key", help="The key of --etcd-cert (unless in that file; no passphrase).")
@click.option(
    "--promotion",
    type=click.Choice(["auto", "external", "manual"]),
    help="Promotion mode (default: auto; this process is the arbiter).",
)
@click.option("--name", help="Cluster name: the `cluster` label of the metrics.")
@click.option(
    "--webhook",
    "webhooks",
    multiple=True,
    help="POST each event (state changes, failovers) as JSON to this URL; repeatable.",
)
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
    haproxy_agent_port: int | None,
    haproxy_agent_host: str | None,
    stream_port: int | None,
    stream_host: str | None,
    etcd: str | None,
    etcd_ttl: int | None,
    etcd_prefix: str | None,
    etcd_cacert: str | None,
    etcd_cert: str | None,
    etcd_key: str | None,
    promotion: str | None,
    name: str | None,
    webhooks: tuple[str, ...],
    log_format: str | None,
) -> None:
    """Run the arbiter: a manager with the HTTP API and /metrics, until SIGTERM.

    The admin endpoints (trigger, check-health) need a token: --token,
    $PGFAILOVER_ADMIN_TOKEN, or `token` in the config's [server] table;
    without one they are disabled.
    """
    if cluster.url or cluster.nodes is None:
        raise UsageProblem("serve probes the cluster itself: give --config, --dsn or the env")
    given: dict[str, Any] = {
        "host": host,
        "port": port,
        "admin_host": admin_host,
        "admin_port": admin_port,
        "haproxy_agent_host": haproxy_agent_host,
        "haproxy_agent_port": haproxy_agent_port,
        "stream_host": stream_host,
        "stream_port": stream_port,
        "etcd": etcd,
        "etcd_ttl": etcd_ttl,
        "etcd_prefix": etcd_prefix,
        "etcd_ca_file": etcd_cacert,
        "etcd_cert_file": etcd_cert,
        "etcd_key_file": etcd_key,
        "promotion": promotion,
        "name": name,
        "log_format": log_format,
    }
    # Options override the [server] table, and pass the same schema check.
    server = dataclasses.replace(
        cluster.server, **{k: v for k, v in given.items() if v is not None}
    )
    _setup_logging(server.log_format, ctx.find_root().params.get("verbose", 0))
    config = _arbiter_config(cluster.config, server, promotion)
    lease = _lease(server)
    mgr = FailoverManager(
        nodes=cluster.nodes, config=config, name=server.name, promotion_gate=lease
    )
    for url in webhooks:
        _check_webhook(url)
    notifier = Webhooks(webhooks, cluster=mgr.name).attach(mgr) if webhooks else None
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s: shutting down", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    listeners: list[AdminServer | AgentServer | StreamServer] = []
    try:
        # Bind first: a port that is taken fails before the manager touches the cluster.
        api, agent = _listen(mgr, server, cluster.token, listeners)
        stream = _stream(mgr, server, listeners)
        if lease is not None:
            lease.start()
        mgr.open()
        snap = mgr.snapshot
        logger.info(
            "serving cluster %s on %s (promotion %s, admin %s); primary %s, state %s",
            mgr.name,
            api.url,
            server.promotion,
            f"on {api.admin_url}" if cluster.token else "disabled",
            snap.primary or "-",
            snap.state.value,
        )
        # Machine-readable readiness line on stdout (tests and scripts wait for it).
        ready: dict[str, Any] = {"url": api.url, "admin_url": api.admin_url, "cluster": mgr.name}
        if agent is not None:
            ready["haproxy_agent"] = f"{agent.host}:{agent.port}"
        if stream is not None:
            ready["stream_url"] = stream.url
        if lease is not None:
            ready["lease"] = {"key": lease.key, "identity": lease.identity}
        click.echo(json.dumps(ready), nl=True)
        sys.stdout.flush()
        stop.wait()
    finally:
        for listener in reversed(listeners):
            listener.close(timeout=1)
        # A promotion in progress is finished (repointing included) before
        # the process exits; with nothing running this takes milliseconds.
        mgr.close(timeout=10)
        if lease is not None:  # after the manager: a promotion in progress ends first
            # Still promoting after the close's timeout: let the lease expire, never hand
            # it over while the promotion may still reach the server.
            lease.close(revoke=not mgr.promoting)
        if notifier is not None:
            notifier.close(timeout=2)  # the last events, if the receivers answer
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        logger.info("stopped")


def _arbiter_config(
    config: FailoverConfig, server: ServerSettings, promotion: str | None
) -> FailoverConfig:
    """The serving manager's settings: ``promotion`` from the server's, and a source
    only if it is Patroni's.

    An arbiter that follows Patroni (``source = "patroni+..."``) re-streams
    Patroni's view to its own followers: hundreds of application processes
    then cost Patroni and etcd what one arbiter costs. Patroni promotes, so
    such an arbiter never does (``--promotion auto`` is refused; the default
    becomes ``external``). Another arbiter's stream is not followed: an
    arbiter probes.
    """
    if config.source is None:
        return config.replace(promotion=server.promotion)
    if parse_source(config.source).kind == "arbiter":
        logger.info("serve probes the cluster itself: an arbiter does not follow another")
        return config.replace(
            promotion=server.promotion,
            source=None,
            source_ca_file=None,
            source_cert_file=None,
            source_key_file=None,
        )
    if promotion == "auto":
        raise UsageProblem(
            "--promotion auto: this config follows Patroni (source), and Patroni promotes; "
            "use --promotion external"
        )
    chosen = "external" if server.promotion == "auto" else server.promotion
    logger.info("serve follows Patroni (promotion %s) and streams its view", chosen)
    return config.replace(promotion=chosen)


def _check_webhook(url: str) -> None:
    try:
        parts = urllib.parse.urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:
        valid = False
    if not valid:
        raise UsageProblem(f"--webhook must be an http:// or https:// URL, not {shown(url)!r}")


def _lease(server: ServerSettings) -> ArbiterLease | None:
    """The arbiter lease in etcd (``--etcd``), not started yet; ``None`` without one."""
    if server.etcd is None:
        return None
    # A call waits at most a third of the TTL: a renewal that hangs must fail in time to retry.
    timeout = max(0.5, min(2.0, server.etcd_ttl / 3))
    etcd = Etcd(
        source_urls(server.etcd, setting="etcd", what="etcd endpoints"),
        timeout=timeout,
        ssl_context=server.etcd_tls().context("etcd"),
    )
    return ArbiterLease(etcd, server.name, ttl=server.etcd_ttl, prefix=server.etcd_prefix)


def _stream(
    mgr: FailoverManager,
    server: ServerSettings,
    listeners: list[AdminServer | AgentServer | StreamServer],
) -> StreamServer | None:
    """Start the snapshot stream for followers, if asked (added to ``listeners``)."""
    if server.stream_port is None:
        return None
    host = server.stream_host or server.host
    try:
        stream = StreamServer(mgr, host, server.stream_port)
    except OSError as exc:
        raise UsageProblem(
            f"cannot listen on {host}:{server.stream_port} (stream): {exc.strerror or exc}"
        ) from None
    listeners.append(stream)
    logger.info("streaming snapshots to followers on %s", stream.url)
    return stream


def _listen(
    mgr: FailoverManager,
    server: ServerSettings,
    token: str | None,
    listeners: list[AdminServer | AgentServer | StreamServer],
) -> tuple[AdminServer, AgentServer | None]:
    """Start the HTTP API and, if asked, the HAProxy agent (added to ``listeners``)."""
    try:
        api = serve_api(
            mgr,
            host=server.host,
            port=server.port,
            token=token,
            admin_host=server.admin_host,
            admin_port=server.admin_port,
        )
    except OSError as exc:
        where = f"{server.host}:{server.port}"
        if server.admin_port is not None:
            where += f" and {server.admin_host}:{server.admin_port}"
        raise UsageProblem(f"cannot listen on {where}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    listeners.append(api)
    if server.haproxy_agent_port is None:
        return api, None
    host = server.haproxy_agent_host or server.host
    try:
        agent = AgentServer(lambda: mgr.snapshot, host, server.haproxy_agent_port)
    except OSError as exc:
        raise UsageProblem(
            f"cannot listen on {host}:{server.haproxy_agent_port} (HAProxy agent): "
            f"{exc.strerror or exc}"
        ) from None
    listeners.append(agent)
    logger.info("answering HAProxy agent checks on %s:%d", agent.host, agent.port)
    return api, agent


@click.command()
def demo() -> None:
    """A live failover on a local 3-node cluster, with a report (what `make demo` runs)."""
    from pgfailover.demo import main as demo_main

    code = demo_main()
    if code:
        sys.exit(code)
