"""Configuration: the nodes and the failover settings (schema and validation).

:class:`FailoverConfig` and :class:`Node` are frozen and validated when they
are built, so a mistake fails at start-up with a message naming the field
and the value, never later in the middle of a failover. DSNs in messages are
masked. Reading them from a TOML file, a DSN or the environment is
:mod:`pgfailover.sources`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from msgspec import Meta
from psycopg.conninfo import make_conninfo

from pgfailover import schema
from pgfailover.dsn import mask_dsn, parse_dsn
from pgfailover.errors import ConfigurationError
from pgfailover.tls import TLSFiles
from pgfailover.topology.urls import parse_source, source_urls

__all__ = [
    "FailoverConfig",
    "Node",
    "Promotion",
    "ReadStrategyName",
    "ServerSettings",
    "check_token",
]

Promotion = Literal["external", "auto", "manual"]
ReadStrategyName = Literal[
    "round_robin", "least_lag", "priority", "random", "least_connections", "latency"
]

MIB: Final = 1024 * 1024
DAY: Final = 86400.0
NAME_PATTERN: Final = r"\A[A-Za-z0-9_.:/-]{1,100}\Z"  # \Z: no trailing newline

# The schema (see pgfailover.schema): types and bounds, checked at construction.
Seconds = Annotated[float, Meta(gt=0, le=DAY)]
SecondsOrOff = Annotated[float, Meta(ge=0, le=DAY)]
Threshold = Annotated[int, Meta(ge=1, le=1000)]
ByteCount = Annotated[int, Meta(ge=0, le=2**53)]
PoolSize = Annotated[int, Meta(ge=0, le=10_000)]
Weight = Annotated[float, Meta(ge=0, le=1_000_000)]
Name = Annotated[
    str,
    Meta(pattern=NAME_PATTERN, description="1-100 letters, digits, '_', '.', ':', '/' or '-'"),
]
Port = Annotated[int, Meta(ge=0, le=65535)]
FileName = Annotated[str, Meta(min_length=1, max_length=4096, description="a file name")]
Host = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=255,
        pattern=r"\A[^\s/]+\Z",
        description="a host name or IP address (no blanks or '/')",
    ),
]


@dataclass(frozen=True)
class Node:
    """One PostgreSQL server of the cluster.

    ``name`` appears in logs, metrics (label ``node``) and the status API;
    ``priority`` breaks ties between equally advanced promotion candidates
    and orders the ``priority`` read strategy (lower is preferred).
    ``pool_min_size`` / ``pool_max_size`` override the config's pool sizes
    for this node. Tags: ``nofailover`` (never promoted, neither
    automatically nor by a trigger or switchover without ``force``; it is
    also left out when the guards compare how much WAL candidates hold) and
    ``noloadbalance`` (never serves reads). ``replication_address``
    (``host`` or ``host:port``, ``[v6]:port``): where the other standbys
    stream from this node when the manager repoints them to it, if not at
    the DSN's host and port (a replication network, a VIP or a pooler in the
    DSNs). The DSN may hold a password; ``repr`` masks it.
    """

    name: str
    dsn: str = field(repr=False)
    priority: Annotated[int, Meta(ge=-1_000_000, le=1_000_000)] = 100
    pool_min_size: PoolSize | None = None
    pool_max_size: PoolSize | None = None
    nofailover: bool = False
    noloadbalance: bool = False
    replication_address: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not schema.matches(NAME_PATTERN, self.name):
            raise ConfigurationError(
                f"node name {mask_dsn(repr(self.name))[:60]}: use 1-100 letters, digits, "
                "'_', '.', ':', '/' or '-'"
            )
        if not isinstance(self.dsn, str) or not self.dsn.strip():
            raise ConfigurationError(f"node {self.name}: dsn must be a non-empty string")
        schema.check(self, source=f"node {self.name}", secrets=("dsn",))
        params = parse_dsn(self.dsn, field=f"node {self.name}: dsn")
        if any("," in params.get(key, "") for key in ("host", "hostaddr", "port")):
            raise ConfigurationError(
                f"node {self.name}: dsn {mask_dsn(self.dsn)!r} names several hosts; "
                "give one node per host (FailoverManager.from_dsn splits a multi-host DSN)"
            )
        if self.replication_address is not None:
            split_address(self.replication_address, f"node {self.name}: replication_address")
        if self.pool_max_size == 0:
            raise ConfigurationError(f"node {self.name}: pool_max_size must be at least 1")
        low, high = self.pool_min_size, self.pool_max_size
        if low is not None and high is not None and low > high:
            raise ConfigurationError(
                f"node {self.name}: pool_min_size ({low}) must not exceed pool_max_size ({high})"
            )

    @property
    def safe_dsn(self) -> str:
        """The DSN with its password masked, for display."""
        return mask_dsn(self.dsn)

    @property
    def replication_dsn(self) -> str:
        """The DSN whose host and port a standby repointed to this node streams from."""
        if self.replication_address is None:
            return self.dsn
        host, port = split_address(self.replication_address, "replication_address")
        params = parse_dsn(self.dsn)
        params.pop("hostaddr", None)
        params["host"] = host
        if port is not None:
            params["port"] = port
        return make_conninfo("", **params)

    @property
    def tags(self) -> tuple[str, ...]:
        """The tags set on this node (``nofailover``, ``noloadbalance``)."""
        return tuple(t for t in ("nofailover", "noloadbalance") if getattr(self, t))

    def __repr__(self) -> str:
        tags = f", tags={list(self.tags)}" if self.tags else ""
        return f"Node(name={self.name!r}, dsn={self.safe_dsn!r}, priority={self.priority}{tags})"


def split_address(text: str, field: str) -> tuple[str, str | None]:
    """``host``, ``host:port`` or ``[v6]:port`` as (host, port or None); else one line naming
    ``field``."""
    found = re.fullmatch(
        r"\[([0-9A-Fa-f:.]+)\](?::(\d{1,5}))?|([^\s:,\[\]/]+)(?::(\d{1,5}))?", text
    )
    port = found and (found.group(2) or found.group(4))
    if not found or (port is not None and not 1 <= int(port) <= 65535):
        raise ConfigurationError(f"{field}: {text!r} is not host, host:port or [v6]:port")
    return found.group(1) or found.group(3), port


@dataclass(frozen=True)
class FailoverConfig:
    """How the manager probes, decides and routes. Every field has a default.

    Timing (seconds): ``health_check_interval`` between probe rounds while
    the primary is fine; ``fast_interval`` while it is in doubt (failing,
    gone, or a query just failed); ``health_check_timeout`` bounds one probe
    round (connect and query) whatever the number of nodes.

    Thresholds: a node is unhealthy after ``unhealthy_threshold`` failed
    checks in a row (failed probes; a connection a query lost since the
    previous round counts once more with a failed probe) and healthy again
    after ``healthy_threshold`` good probes.

    Promotion (see DESIGN.md): ``"external"`` follows an orchestrator,
    ``"auto"`` promotes the most advanced standby itself with ``pg_promote``,
    ``"manual"`` only detects and reports. ``max_promotion_lag_bytes`` is
    how far behind the last seen primary a candidate may be;
    ``failover_cooldown`` how long a node that failed (went unhealthy, or
    was lost as primary) is not promoted: anti-flap never blocks promoting a
    node that stayed healthy. In ``auto`` mode the manager sets PostgreSQL's
    ``wal_receiver_timeout`` to ``wal_receiver_timeout`` seconds on nodes
    whose setting is longer (or off): a standby's WAL receiver then hears
    from a live primary at least every half of it, which is how a hung or
    black-holed primary is told from a partition in seconds (``0`` leaves
    the servers' setting alone; status shows the failover time you get).
    ``sync_standby_attach_timeout`` is how long the primary's
    ``synchronous_standby_names`` may name no streaming standby before
    ``auto`` mode lowers it (commits would wait forever otherwise).

    Routing: a write waits up to ``failover_wait_timeout`` for a primary;
    reads go to standbys on the primary's timeline whose WAL receiver
    streams, within ``max_read_lag_bytes`` and ``max_read_lag_seconds``
    (replay age while the standby is behind), chosen by
    ``read_strategy`` (see :mod:`pgfailover.strategies`) and ``read_weights``
    (``{"node1": 3}``: a node's share of reads, default 1, 0 for "only when
    no other can"). ``fence_stale_primary`` soft-fences an old primary that
    comes back (``default_transaction_read_only = on``).

    Circuit breakers (:mod:`pgfailover.breaker`): ``breaker_failures`` read
    connection failures in a row on a node whose probe passes hold it out of
    reads for ``breaker_cooldown`` seconds, doubled at each reopening up to
    ``breaker_max_cooldown``; ``breaker_successes`` trial reads in a row let
    it back. ``breaker_failures = 0`` turns breakers off.

    Pools: one psycopg_pool ``ConnectionPool`` per node, ``pool_min_size`` to
    ``pool_max_size`` connections, ``pool_timeout`` to get one,
    ``connect_timeout`` to open one. ``pool_warmup`` is SQL run on every new
    connection of every pool (standbys' too), rolled back, for
    ``connect_timeout`` at most: name the tables the application writes
    (``"SELECT 1 FROM orders WHERE id = 0"``) and the connections a promoted
    standby's first writes take have those tables' catalog entries loaded
    already (:mod:`pgfailover.warmup`).

    Following (:mod:`pgfailover.topology`): ``source``, one or more
    ``pgfailover serve`` stream URLs (``"http://arbiter:8009"``, comma
    separated), Patroni's REST APIs (``"patroni+http://db1:8008,..."``) or
    the etcd Patroni keeps its keys in
    (``"patroni+etcd://etcd1:2379,.../service/<scope>"``), makes the
    manager route on the source's view instead of probing every node; it
    probes a node only to confirm a query's failure (or, following Patroni,
    a new leader's promotion), and probes everything itself when the source
    is silent for ``health_check_interval`` (at least 0.75 s). Such a
    manager never promotes. ``source_ca_file``, ``source_cert_file`` and
    ``source_key_file`` are for a source served over TLS (``https://``,
    ``patroni+https://``, ``patroni+etcds://``): the CA that signed its
    certificate, and a client certificate for one that asks (etcd's
    ``--client-cert-auth``); see :mod:`pgfailover.tls`.
    """

    promotion: Promotion = "external"
    health_check_interval: Seconds = 1.0
    health_check_timeout: Seconds = 1.0
    fast_interval: Seconds = 0.05
    unhealthy_threshold: Threshold = 3
    healthy_threshold: Threshold = 2
    max_promotion_lag_bytes: ByteCount = 16 * MIB
    max_read_lag_bytes: ByteCount = 16 * MIB
    max_read_lag_seconds: Seconds = 10.0
    failover_cooldown: SecondsOrOff = 60.0
    wal_receiver_timeout: SecondsOrOff = 4.0
    failover_wait_timeout: SecondsOrOff = 15.0
    sync_standby_attach_timeout: SecondsOrOff = 5.0
    read_strategy: ReadStrategyName = "round_robin"
    read_weights: dict[Name, Weight] | None = None
    breaker_failures: Annotated[int, Meta(ge=0, le=1000)] = 5
    breaker_successes: Threshold = 2
    breaker_cooldown: Seconds = 5.0
    breaker_max_cooldown: Seconds = 60.0
    fence_stale_primary: bool = False
    repoint_standbys: bool = True
    pool_min_size: PoolSize = 1
    pool_max_size: Annotated[int, Meta(ge=1, le=10_000)] = 10
    pool_timeout: Seconds = 5.0
    pool_warmup: Annotated[str, Meta(min_length=1, max_length=65_536)] | None = None
    connect_timeout: Seconds = 2.0
    history_size: Annotated[int, Meta(ge=1, le=1_000_000)] = 100
    history_file: Annotated[str, Meta(min_length=1, description="a file name")] | None = None
    source: Annotated[str, Meta(min_length=1, max_length=4096)] | None = field(
        default=None, repr=False
    )
    source_ca_file: FileName | None = None
    source_cert_file: FileName | None = None
    source_key_file: FileName | None = None

    def __post_init__(self) -> None:
        schema.check(self, secrets=("source",))
        self.source_tls().check("source", wanted=self.source is not None)  # files: at start
        if self.source is not None:
            parse_source(self.source)
            if self.promotion == "auto":
                raise ConfigurationError(
                    "source: a manager that follows a source never promotes; use promotion "
                    "'external' (the arbiter promotes) or 'manual'"
                )
        if 0 < self.wal_receiver_timeout < 1.0:
            raise ConfigurationError(
                f"wal_receiver_timeout must be 0 (leave the servers alone) or >= 1 second, "
                f"got {self.wal_receiver_timeout!r}"
            )
        if self.pool_min_size > self.pool_max_size:
            raise ConfigurationError(
                f"pool_min_size ({self.pool_min_size}) must not exceed "
                f"pool_max_size ({self.pool_max_size})"
            )
        if self.fast_interval > self.health_check_interval:
            raise ConfigurationError(
                f"fast_interval ({self.fast_interval}) must not exceed "
                f"health_check_interval ({self.health_check_interval})"
            )
        if self.history_file is not None:
            _check_file("history_file", self.history_file)
        if self.pool_warmup is not None and (
            not self.pool_warmup.strip() or "\x00" in self.pool_warmup
        ):
            raise ConfigurationError(
                "pool_warmup must be SQL (a statement, or several separated by ';'), "
                "got " + ("a NUL character in it" if self.pool_warmup.strip() else "blanks")
            )
        if self.breaker_max_cooldown < self.breaker_cooldown:
            raise ConfigurationError(
                f"breaker_max_cooldown ({self.breaker_max_cooldown:g}) must not be shorter "
                f"than breaker_cooldown ({self.breaker_cooldown:g})"
            )

    def source_tls(self) -> TLSFiles:
        """The TLS files for the source (none given: the system's CAs, no client
        certificate)."""
        return TLSFiles(self.source_ca_file, self.source_cert_file, self.source_key_file)

    def check_nodes(self, names: Collection[str]) -> None:
        """Refuse settings that name a node the cluster does not have (``read_weights``)."""
        unknown = sorted(set(self.read_weights or {}) - set(names))
        if unknown:
            raise ConfigurationError(
                f"read_weights names {', '.join(unknown)}, not a node of this cluster "
                f"({', '.join(names)})"
            )

    def replace(self, **changes: Any) -> FailoverConfig:
        """A copy with ``changes`` applied (and validated; unknown names refused)."""
        schema.refuse_unknown(changes, [f.name for f in dataclasses.fields(self)], "replace()")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "config") -> FailoverConfig:
        """Build from a dict (a TOML table, env values), rejecting unknown keys."""
        return schema.from_mapping(cls, data, source=source)


def _check_file(key: str, value: str) -> None:
    """A file pgfailover writes: not a directory, in a directory that exists."""
    shown = mask_dsn(repr(value))[:80]
    if "\x00" in value:
        raise ConfigurationError(f"{key} must be a file name, got one with a NUL character")
    path = Path(value)
    try:
        if path.is_dir():
            raise ConfigurationError(f"{key} must be a file, got the directory {shown}")
        if not path.parent.is_dir():
            raise ConfigurationError(f"{key} {shown}: its directory does not exist")
    except OSError as exc:  # a name too long, a directory we may not look into
        raise ConfigurationError(f"{key} {shown}: {exc.strerror or exc}") from None


def check_token(token: str | None) -> None:
    """Refuse an admin token that cannot work, in one line (``ValueError``).

    A header carries ASCII without surrounding whitespace, so a token with
    either (a trailing newline from a file, say) could never match. The
    token itself is never in the message.
    """
    if token is None:
        return
    if not isinstance(token, str):
        raise ValueError(f"the admin token must be a string, got a {type(token).__name__}")
    if token != token.strip() or not token.isascii() or not token.isprintable():
        raise ValueError(
            "the admin token must be printable ASCII without surrounding whitespace "
            "(a token read from a file often ends with a newline)"
        )
    if len(token) < 16:
        raise ValueError("the admin token must be at least 16 characters")


@dataclass(frozen=True)
class ServerSettings:
    """``pgfailover serve``'s ``[server]`` table: where the API listens, and how.

    ``host``/``port`` serve everything (or, with ``admin_port``, everything
    but the admin endpoints, which ``admin_host:admin_port`` serves);
    ``token`` enables the admin endpoints; ``haproxy_agent_port`` (and
    ``haproxy_agent_host``, default ``host``) answers HAProxy's agent checks
    (:mod:`pgfailover.haproxy`); ``stream_port`` (and ``stream_host``,
    default ``host``) streams every snapshot to the managers that follow
    this arbiter (:mod:`pgfailover.stream`); ``etcd`` (comma-separated
    ``http(s)://host:port``) makes this one of several arbiters of the
    cluster, of which only the holder of a lease of ``etcd_ttl`` seconds on
    ``<etcd_prefix>/<name>/arbiter`` promotes (:mod:`pgfailover.lease`);
    ``promotion`` is the arbiter's mode; ``etcd_ca_file``, ``etcd_cert_file``
    and ``etcd_key_file`` are for an etcd served over TLS (``https://``):
    the CA, and a client certificate when etcd asks for one;
    ``log_format`` its stderr lines; ``name`` the metrics' cluster label.
    """

    host: Host = "127.0.0.1"
    port: Port = 8008
    admin_host: Host = "127.0.0.1"
    admin_port: Port | None = None
    token: str | None = field(default=None, repr=False)
    haproxy_agent_host: Host | None = None
    haproxy_agent_port: Port | None = None
    stream_host: Host | None = None
    stream_port: Port | None = None
    etcd: Annotated[str, Meta(min_length=1, max_length=4096)] | None = field(
        default=None, repr=False
    )
    etcd_ttl: Annotated[int, Meta(ge=2, le=300)] = 5
    etcd_prefix: Annotated[str, Meta(pattern=r"\A/[A-Za-z0-9_./-]{0,200}\Z")] = "/pgfailover"
    etcd_ca_file: FileName | None = None
    etcd_cert_file: FileName | None = None
    etcd_key_file: FileName | None = None
    promotion: Promotion = "auto"
    log_format: Literal["plain", "json"] = "plain"
    name: Name = "default"

    def __post_init__(self) -> None:
        schema.check(self, secrets=("token", "etcd"))
        try:
            check_token(self.token)
        except ValueError as exc:
            raise ConfigurationError(f"token: {exc}") from None
        if self.etcd is not None:  # a user and password in them: etcd's authentication
            source_urls(self.etcd, setting="etcd", what="etcd endpoints")
        self.etcd_tls().check("etcd", wanted=self.etcd is not None)  # files: at start

    def etcd_tls(self) -> TLSFiles:
        """The TLS files for etcd (none given: the system's CAs, no client certificate)."""
        return TLSFiles(self.etcd_ca_file, self.etcd_cert_file, self.etcd_key_file)
