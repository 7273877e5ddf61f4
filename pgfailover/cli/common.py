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
import math
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from pgfailover import schema
from pgfailover.config import FailoverConfig, Node, ServerSettings, check_token
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
    "Seconds",
    "cluster_options",
    "handle_errors",
    "http_call",
    "optional_cluster_options",
]


F = TypeVar("F", bound=Callable[..., Any])


class Seconds(click.FloatRange):
    """A number of seconds: a float range that refuses ``nan`` and ``inf``."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        converted = super().convert(value, param, ctx)
        if not math.isfinite(converted):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return converted


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
    server: ServerSettings

    def probe_config(self, timeout: float | None) -> FailoverConfig:
        """Settings for a one-shot manager: no idle pool connections."""
        changes: dict[str, Any] = {"pool_min_size": 0, "pool_max_size": 2}
        if timeout is not None:
            changes["health_check_timeout"] = timeout
            changes["connect_timeout"] = timeout
        return self.config.replace(**changes)


def _load(
    config: Path | None, dsn: str | None, url: str | None, token: str | None, optional: bool
) -> Cluster:
    token = token or os.environ.get("PGFAILOVER_ADMIN_TOKEN") or None
    if token is not None:
        try:
            check_token(token)
        except ValueError as exc:
            raise UsageProblem(f"--token / PGFAILOVER_ADMIN_TOKEN: {exc}") from None
    given = [
        name for name, value in (("--config", config), ("--dsn", dsn), ("--url", url)) if value
    ]
    if len(given) > 1:
        raise UsageProblem(f"give one of --config, --dsn or --url, not {' and '.join(given)}")
    if url:
        return Cluster(None, FailoverConfig(), _check_url(url), token, ServerSettings())
    if config is not None:
        data = read_toml(config)
        nodes, settings = parse_toml(data, config)
        server = _server_table(data, config)
        return Cluster(nodes, settings, None, token or server.token, server)
    if dsn:
        _, settings = load_env()
        return Cluster(nodes_from_dsn(dsn), settings, None, token, ServerSettings())
    env_nodes, settings = load_env()
    if env_nodes is None and not optional:
        raise UsageProblem(
            "no cluster given: use --config FILE, --dsn DSN or --url URL, "
            "or set PGFAILOVER_DSN (or DB_HOST...)"
        )
    return Cluster(env_nodes, settings, None, token, ServerSettings())


def _check_url(url: str) -> str:
    """``--url`` as a base URL, or a UsageProblem saying what is wrong with it."""
    # Never echo credentials (up to the last '@') or a query (a token in it).
    shown = re.sub(r"//.*@", "//***@", re.split(r"[?#]", url, maxsplit=1)[0])
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        # Python's message may quote a piece of the user info (a password).
        detail = "not a valid URL" if "@" in url or "?" in url else str(exc)
        raise UsageProblem(f"--url {shown!r}: {detail}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageProblem(f"--url must be an http:// or https:// URL with a host, not {shown!r}")
    if any(c.isspace() for c in url) or not url.isprintable():
        raise UsageProblem(f"--url {shown!r}: blanks and control characters are not allowed")
    if port == 0:
        raise UsageProblem(f"--url {shown!r}: port 0 is not a port to connect to")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise UsageProblem("--url takes the server's base URL only (no user, query or fragment)")
    return url.rstrip("/")


def _server_table(data: dict[str, Any], path: Path) -> ServerSettings:
    """The ``[server]`` table of a config file (what ``pgfailover serve`` reads)."""
    return schema.from_mapping(ServerSettings, data.get("server", {}), source=f"{path} [server]")


def cluster_options(func: F) -> F:
    """``--config``, ``--dsn``, ``--url``, ``--token``; passes ``cluster``."""
    return _cluster_options(func, optional=False)


def optional_cluster_options(func: F) -> F:
    """As :func:`cluster_options`, but none given is no error (``cluster.nodes`` is None)."""
    return _cluster_options(func, optional=True)


def _cluster_options(func: F, *, optional: bool) -> F:

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
            cluster = _load(config_path, dsn, url, token, optional)
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
    """Ask ``pgfailover serve``; (status, JSON body).

    Exit 3 (as in local mode) when the server is unreachable or says the
    request itself was wrong: an unknown node, a bad or missing token,
    admin endpoints disabled, a malformed request. Other answers (a guard's
    409, a failed promotion's 502, 503) are the caller's to report.
    """
    code, reply = _http(cluster, method, path, body, timeout)
    if not isinstance(reply, dict):
        raise UsageProblem(
            f"{cluster.url} did not answer like pgfailover serve (HTTP {code}, not a JSON object)"
        )
    if code in _USAGE_STATUSES:
        raise UsageProblem(f"{cluster.url}: HTTP {code}: {reply.get('error')}")
    return code, reply


_USAGE_STATUSES = frozenset({400, 401, 403, 404, 405, 411, 413, 431})


def _http(
    cluster: Cluster, method: str, path: str, body: dict[str, Any] | None, timeout: float
) -> tuple[int, Any]:
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
