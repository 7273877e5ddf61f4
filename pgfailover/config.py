"""Configuration: the nodes and the failover settings (schema and validation).

:class:`FailoverConfig` and :class:`Node` are frozen and validated when they
are built, so a mistake fails at start-up with a message naming the field
and the value, never later in the middle of a failover. DSNs in messages are
masked. Reading them from a TOML file, a DSN or the environment is
:mod:`pgfailover.sources`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

from pgfailover.dsn import mask_dsn, parse_dsn
from pgfailover.errors import ConfigurationError

__all__ = [
    "FailoverConfig",
    "Node",
    "Promotion",
    "ReadStrategyName",
]

Promotion = Literal["external", "auto", "manual"]
ReadStrategyName = Literal["round_robin", "least_lag", "priority", "random"]

MIB: Final = 1024 * 1024
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:/-]{1,100}$")


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
    ``noloadbalance`` (never serves reads). The DSN may hold a password;
    ``repr`` masks it.
    """

    name: str
    dsn: str = field(repr=False)
    priority: int = 100
    pool_min_size: int | None = None
    pool_max_size: int | None = None
    nofailover: bool = False
    noloadbalance: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ConfigurationError(
                f"node name {self.name!r}: use 1-100 letters, digits, '_', '.', ':', '/' or '-'"
            )
        if not isinstance(self.dsn, str) or not self.dsn.strip():
            raise ConfigurationError(f"node {self.name}: dsn must be a non-empty string")
        params = parse_dsn(self.dsn, field=f"node {self.name}: dsn")
        if "," in params.get("host", "") or "," in params.get("hostaddr", ""):
            raise ConfigurationError(
                f"node {self.name}: dsn {mask_dsn(self.dsn)!r} names several hosts; "
                "give one node per host (FailoverManager.from_dsn splits a multi-host DSN)"
            )
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise ConfigurationError(
                f"node {self.name}: priority must be an int, got {self.priority!r}"
            )
        for tag in ("nofailover", "noloadbalance"):
            if not isinstance(getattr(self, tag), bool):
                raise ConfigurationError(
                    f"node {self.name}: {tag} must be true or false, got {getattr(self, tag)!r}"
                )
        for attr in ("pool_min_size", "pool_max_size"):
            value = getattr(self, attr)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ConfigurationError(
                    f"node {self.name}: {attr} must be an int >= 0, got {value!r}"
                )

    @property
    def safe_dsn(self) -> str:
        """The DSN with its password masked, for display."""
        return mask_dsn(self.dsn)

    @property
    def tags(self) -> tuple[str, ...]:
        """The tags set on this node (``nofailover``, ``noloadbalance``)."""
        return tuple(t for t in ("nofailover", "noloadbalance") if getattr(self, t))

    def __repr__(self) -> str:
        tags = f", tags={list(self.tags)}" if self.tags else ""
        return f"Node(name={self.name!r}, dsn={self.safe_dsn!r}, priority={self.priority}{tags})"


def _positive(name: str, value: object, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):  # type: ignore[operator]
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(f"{name} must be a number {bound}, got {value!r}")


def _int_at_least(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigurationError(f"{name} must be an int >= {low}, got {value!r}")


@dataclass(frozen=True)
class FailoverConfig:
    """How the manager probes, decides and routes. Every field has a default.

    Timing (seconds): ``health_check_interval`` between probe rounds while
    the primary is fine; ``fast_interval`` while it is in doubt (failing,
    gone, or a query just failed); ``health_check_timeout`` bounds one probe
    round (connect and query) whatever the number of nodes.

    Thresholds: a node is unhealthy after ``unhealthy_threshold`` failed
    probes in a row and healthy again after ``healthy_threshold`` good ones.

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
    ``read_strategy``. ``fence_stale_primary`` soft-fences an old primary that
    comes back (``default_transaction_read_only = on``).

    Pools: one psycopg_pool ``ConnectionPool`` per node, ``pool_min_size`` to
    ``pool_max_size`` connections, ``pool_timeout`` to get one,
    ``connect_timeout`` to open one.
    """

    promotion: Promotion = "external"
    health_check_interval: float = 1.0
    health_check_timeout: float = 1.0
    fast_interval: float = 0.05
    unhealthy_threshold: int = 3
    healthy_threshold: int = 2
    max_promotion_lag_bytes: int = 16 * MIB
    max_read_lag_bytes: int = 16 * MIB
    max_read_lag_seconds: float = 10.0
    failover_cooldown: float = 60.0
    wal_receiver_timeout: float = 4.0
    failover_wait_timeout: float = 15.0
    sync_standby_attach_timeout: float = 5.0
    read_strategy: ReadStrategyName = "round_robin"
    fence_stale_primary: bool = False
    repoint_standbys: bool = True
    pool_min_size: int = 1
    pool_max_size: int = 10
    pool_timeout: float = 5.0
    connect_timeout: float = 2.0
    history_size: int = 100
    history_file: str | None = None

    def __post_init__(self) -> None:
        if self.promotion not in get_args(Promotion):
            raise ConfigurationError(
                f"promotion must be one of {', '.join(get_args(Promotion))}, "
                f"got {self.promotion!r}"
            )
        if self.read_strategy not in get_args(ReadStrategyName):
            raise ConfigurationError(
                f"read_strategy must be one of {', '.join(get_args(ReadStrategyName))}, "
                f"got {self.read_strategy!r}"
            )
        for name in (
            "health_check_interval",
            "health_check_timeout",
            "fast_interval",
            "pool_timeout",
            "connect_timeout",
        ):
            _positive(name, getattr(self, name))
        for name in (
            "failover_cooldown",
            "failover_wait_timeout",
            "sync_standby_attach_timeout",
            "wal_receiver_timeout",
        ):
            _positive(name, getattr(self, name), allow_zero=True)
        _positive("max_read_lag_seconds", self.max_read_lag_seconds)
        if 0 < self.wal_receiver_timeout < 1.0:
            raise ConfigurationError(
                f"wal_receiver_timeout must be 0 (leave the servers alone) or >= 1 second, "
                f"got {self.wal_receiver_timeout!r}"
            )
        _int_at_least("unhealthy_threshold", self.unhealthy_threshold, 1)
        _int_at_least("healthy_threshold", self.healthy_threshold, 1)
        _int_at_least("max_promotion_lag_bytes", self.max_promotion_lag_bytes, 0)
        _int_at_least("max_read_lag_bytes", self.max_read_lag_bytes, 0)
        _int_at_least("pool_min_size", self.pool_min_size, 0)
        _int_at_least("pool_max_size", self.pool_max_size, 1)
        _int_at_least("history_size", self.history_size, 1)
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
        for name in ("fence_stale_primary", "repoint_standbys"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigurationError(
                    f"{name} must be true or false, got {getattr(self, name)!r}"
                )

    def replace(self, **changes: Any) -> FailoverConfig:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "config") -> FailoverConfig:
        """Build from a dict (a TOML table, env values), rejecting unknown keys."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigurationError(
                f"{source}: unknown setting(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        return cls(**dict(data))
