"""Configuration: nodes, failover settings, and loading them from files or env.

:class:`FailoverConfig` and :class:`Node` are frozen and validated when they
are built, so a mistake fails at start-up with a message naming the field
and the value, never later in the middle of a failover. DSNs in messages are
masked. Sources, in the order the CLI applies them: a TOML file
(:func:`load_toml`), a DSN (:func:`nodes_from_dsn`), the environment
(:func:`load_env`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, get_args

from pgfailover.dsn import mask_dsn, parse_dsn, split_multihost
from pgfailover.errors import ConfigurationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "FailoverConfig",
    "Node",
    "Promotion",
    "ReadStrategyName",
    "load_env",
    "load_toml",
    "nodes_from_dsn",
    "nodes_from_primary",
    "parse_toml",
    "read_toml",
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
    for this node. The DSN may hold a password; ``repr`` masks it.
    """

    name: str
    dsn: str = field(repr=False)
    priority: int = 100
    pool_min_size: int | None = None
    pool_max_size: int | None = None

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

    def __repr__(self) -> str:
        return f"Node(name={self.name!r}, dsn={self.safe_dsn!r}, priority={self.priority})"


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


def nodes_from_primary(primary: str, standbys: Sequence[str] = ()) -> list[Node]:
    """Nodes named ``primary``, ``standby0``, ``standby1``... from DSNs.

    The roles are only hints: the manager asks each server what it is.
    """
    if isinstance(standbys, str):
        raise ConfigurationError("standbys must be a list of DSNs, not a single string")
    nodes = [Node("primary", primary, priority=0)]
    nodes += [Node(f"standby{i}", dsn, priority=i + 1) for i, dsn in enumerate(standbys)]
    return nodes


def nodes_from_dsn(dsn: str) -> list[Node]:
    """One node per host of a libpq multi-host URL or key/value DSN.

    Nodes are named ``host:port`` and prioritised in the order given.
    """
    nodes: list[Node] = []
    for index, single in enumerate(split_multihost(dsn)):
        params = parse_dsn(single)
        host = params.get("host") or params.get("hostaddr") or "localhost"
        name = f"{host}:{params.get('port') or '5432'}"
        if any(n.name == name for n in nodes):
            raise ConfigurationError(f"dsn: host {name} appears twice in {mask_dsn(dsn)!r}")
        nodes.append(Node(name, single, priority=index))
    return nodes


def _coerce(name: str, raw: str, source: str) -> Any:
    """Turn an environment string into the type of config field ``name``."""
    default = getattr(FailoverConfig(), name)
    try:
        if isinstance(default, bool):
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise ConfigurationError(
            f"{source}: cannot read {raw!r} as {type(default).__name__}"
        ) from None
    if default is None:
        return raw or None
    return raw


def load_env(
    environ: Mapping[str, str] | None = None,
) -> tuple[list[Node] | None, FailoverConfig]:
    """Nodes and settings from the environment.

    ``PGFAILOVER_DSN`` (a multi-host DSN) or the original ``DB_HOST``
    (comma-separated hosts allowed), ``DB_PORT``, ``DB_NAME``, ``DB_USER``,
    ``DB_PASSWORD``, ``DB_SSL`` give the nodes; ``PGFAILOVER_<SETTING>``
    (for example ``PGFAILOVER_PROMOTION=auto``) any setting, and
    ``FAILOVER_HEALTH_CHECK_INTERVAL`` the interval in milliseconds, as the
    original notes had it. Returns ``None`` nodes when none are configured.
    """
    env = os.environ if environ is None else environ
    settings: dict[str, Any] = {}
    legacy = env.get("FAILOVER_HEALTH_CHECK_INTERVAL")
    if legacy:
        try:
            settings["health_check_interval"] = float(legacy) / 1000.0
        except ValueError:
            raise ConfigurationError(
                f"FAILOVER_HEALTH_CHECK_INTERVAL: cannot read {legacy!r} as milliseconds"
            ) from None
    names = {f.name for f in dataclasses.fields(FailoverConfig)}
    for key, raw in env.items():
        if not key.startswith("PGFAILOVER_") or key in ("PGFAILOVER_DSN",):
            continue
        name = key[len("PGFAILOVER_") :].lower()
        if name in names:
            settings[name] = _coerce(name, raw, key)
    config = FailoverConfig.from_mapping(settings, source="environment")
    if env.get("PGFAILOVER_DSN"):
        return nodes_from_dsn(env["PGFAILOVER_DSN"]), config
    if env.get("DB_HOST"):
        params = {
            "host": env["DB_HOST"],
            "port": env.get("DB_PORT"),
            "dbname": env.get("DB_NAME"),
            "user": env.get("DB_USER"),
            "password": env.get("DB_PASSWORD"),
        }
        ssl = env.get("DB_SSL", "").strip().lower()
        if ssl in ("1", "true", "yes", "on", "require"):
            params["sslmode"] = "require"
        from psycopg.conninfo import make_conninfo

        dsn = make_conninfo("", **{k: v for k, v in params.items() if v})
        return nodes_from_dsn(dsn), config
    return None, config


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file's tables, with errors that name the file."""
    path = Path(path)
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigurationError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"config file {path}: {exc}") from None
    return data


def load_toml(path: str | Path) -> tuple[list[Node], FailoverConfig]:
    """Nodes and settings from a TOML file.

    Nodes come from ``dsn`` (multi-host), from ``primary`` and ``standbys``,
    or from ``[[nodes]]`` tables (``name``, ``dsn``, ``priority``...);
    settings from a ``[failover]`` table::

        dsn = "postgresql://app@db1:5432,db2:5432,db3:5432/app"

        [failover]
        promotion = "auto"
        health_check_interval = 1.0
    """
    return parse_toml(read_toml(path), path)


def parse_toml(data: Mapping[str, Any], path: str | Path) -> tuple[list[Node], FailoverConfig]:
    """Nodes and settings from a TOML file already read (``path`` names it in errors)."""
    allowed = {"dsn", "primary", "standbys", "nodes", "failover", "server"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigurationError(
            f"config file {path}: unknown key(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(allowed))})"
        )
    config = FailoverConfig.from_mapping(data.get("failover", {}), source=f"{path} [failover]")
    sources = [k for k in ("dsn", "primary", "nodes") if k in data]
    if len(sources) != 1:
        raise ConfigurationError(
            f"config file {path}: give exactly one of dsn, primary (+ standbys) or [[nodes]]"
        )
    if "dsn" in data:
        return nodes_from_dsn(str(data["dsn"])), config
    if "primary" in data:
        return nodes_from_primary(str(data["primary"]), list(data.get("standbys", []))), config
    nodes = []
    for index, entry in enumerate(data["nodes"]):
        if not isinstance(entry, dict):
            raise ConfigurationError(f"config file {path}: nodes[{index}] must be a table")
        known = [f.name for f in dataclasses.fields(Node)]
        unknown = sorted(set(entry) - set(known))
        missing = [k for k in ("name", "dsn") if k not in entry]
        if unknown or missing:
            what = (
                f"unknown key(s) {', '.join(unknown)}"
                if unknown
                else f"missing {', '.join(missing)}"
            )
            raise ConfigurationError(
                f"config file {path}: nodes[{index}]: {what} (known: {', '.join(known)})"
            )
        nodes.append(Node(**entry))
    return nodes, config
