"""What the operational commands share: where the cluster comes from, output, errors.

The cluster comes from ``--config`` (TOML), ``--dsn``, or the environment
(``PGFAILOVER_DSN``/``PGFAILOVER_*`` and the original ``DB_*`` names), in
that order; or, with ``--url``, from a running ``pgfailover serve``, asked
over its HTTP API instead of probing the servers directly.

Exit codes: 0 healthy, 1 degraded / failover running / refused, 2 no
writable primary, 3 usage or configuration errors (including a server that
cannot be asked).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from pgfailover.config import FailoverConfig, Node
from pgfailover.dsn import mask_dsn
from pgfailover.errors import ConfigurationError, PgFailoverError
from pgfailover.report import EXIT_DEGRADED, EXIT_NO_PRIMARY, EXIT_OK, EXIT_USAGE
from pgfailover.sources import load_env, nodes_from_dsn, parse_toml, read_toml

__all__ = [
    "EXIT_DEGRADED",
    "EXIT_NO_PRIMARY",
    "EXIT_OK",
    "EXIT_USAGE",
    "Cluster",
    "cluster_options",
    "handle_errors",
    "http_call",
]


F = TypeVar("F", bound=Callable[..., Any])


class UsageProblem(click.ClickException):
    """A configuration or usage mistake: one line, exit code 3."""

    exit_code = EXIT_USAGE


def handle_errors(func: F) -> F:
    """One clear line and an exit code instead of a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigurationError as exc:
            raise UsageProblem(mask_dsn(str(exc))) from None
        except PgFailoverError as exc:
            raise click.ClickException(mask_dsn(str(exc))) from None

    return wrapper  # type: ignore[return-value]


@dataclass
class Cluster:
    """Where a command gets the cluster from."""

    nodes: list[Node] | None
    config: FailoverConfig
    url: str | None
    token: str | None
    server: dict[str, Any]

    def probe_config(self, timeout: float | None) -> FailoverConfig:
        """Settings for a one-shot manager: no idle pool connections."""
        changes: dict[str, Any] = {"pool_min_size": 0, "pool_max_size": 2}
        if timeout is not None:
            changes["health_check_timeout"] = timeout
            changes["connect_timeout"] = timeout
        return self.config.replace(**changes)


def _load(config: Path | None, dsn: str | None, url: str | None, token: str | None) -> Cluster:
    token = token or os.environ.get("PGFAILOVER_ADMIN_TOKEN") or None
    if url:
        if not url.startswith(("http://", "https://")):
            raise UsageProblem(f"--url must be an http:// or https:// URL, not {url!r}")
        return Cluster(None, FailoverConfig(), url.rstrip("/"), token, {})
    if config is not None:
        data = read_toml(config)
        nodes, settings = parse_toml(data, config)
        server = _server_table(data, config)
        return Cluster(nodes, settings, None, token or server.get("token"), server)
    if dsn:
        _, settings = load_env()
        return Cluster(nodes_from_dsn(dsn), settings, None, token, {})
    env_nodes, settings = load_env()
    if env_nodes is None:
        raise UsageProblem(
            "no cluster given: use --config FILE, --dsn DSN or --url URL, "
            "or set PGFAILOVER_DSN (or DB_HOST...)"
        )
    return Cluster(env_nodes, settings, None, token, {})


SERVER_KEYS = {
    "host",
    "port",
    "admin_host",
    "admin_port",
    "token",
    "promotion",
    "log_format",
    "name",
}


def _server_table(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """The ``[server]`` table of a config file (what ``pgfailover serve`` reads)."""
    table = data.get("server", {})
    if not isinstance(table, dict):
        raise ConfigurationError(f"config file {path}: [server] must be a table")
    unknown = sorted(set(table) - SERVER_KEYS)
    if unknown:
        raise ConfigurationError(
            f"config file {path} [server]: unknown key(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(SERVER_KEYS))})"
        )
    return table


def cluster_options(func: F) -> F:
    """``--config``, ``--dsn``, ``--url``, ``--token``; passes ``cluster``."""

    @click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        help="TOML file with the nodes and settings.",
    )
    @click.option("--dsn", help="libpq multi-host URL or key/value string (host=a,b,c ...).")
    @click.option("--url", help="Ask a running `pgfailover serve` at this URL instead.")
    @click.option(
        "--token",
        help="Admin token for --url (default: $PGFAILOVER_ADMIN_TOKEN).",
    )
    @wraps(func)
    def wrapper(
        *args: Any,
        config_path: Path | None,
        dsn: str | None,
        url: str | None,
        token: str | None,
        **kwargs: Any,
    ) -> Any:
        try:
            cluster = _load(config_path, dsn, url, token)
        except ConfigurationError as exc:
            raise UsageProblem(mask_dsn(str(exc))) from None
        return func(*args, cluster=cluster, **kwargs)

    return wrapper  # type: ignore[return-value]


def http_call(
    cluster: Cluster,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    timeout: float = 60.0,
) -> tuple[int, Any]:
    """Ask ``pgfailover serve``; (status, JSON body). Unreachable: exit 3."""
    assert cluster.url is not None  # noqa: S101 - callers check
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - scheme checked in _load
        cluster.url + path, data=data, method=method
    )
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if cluster.token:
        request.add_header("Authorization", f"Bearer {cluster.token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        with exc:  # an error response holds the connection until closed
            try:
                return exc.code, json.loads(exc.read() or b"null")
            except json.JSONDecodeError:
                return exc.code, {"error": f"HTTP {exc.code} from {cluster.url}"}
    except (urllib.error.URLError, OSError, json.JSONDecodeError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UsageProblem(f"cannot reach pgfailover serve at {cluster.url}: {reason}") from None
