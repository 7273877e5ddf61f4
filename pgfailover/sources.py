"""Where nodes and settings come from: DSNs, a TOML file, the environment.

Sources, in the order the CLI applies them: a TOML file (:func:`load_toml`),
a DSN (:func:`nodes_from_dsn`), the environment (:func:`load_env`). Each
returns validated :class:`~pgfailover.config.Node` and
:class:`~pgfailover.config.FailoverConfig` values or raises
:class:`~pgfailover.errors.ConfigurationError` with one line naming the
problem (DSNs masked).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pgfailover import schema
from pgfailover.config import FailoverConfig, Node
from pgfailover.dsn import mask_dsn, parse_dsn, split_multihost
from pgfailover.errors import ConfigurationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "FromSources",
    "load_env",
    "load_toml",
    "nodes_from_dsn",
    "nodes_from_primary",
    "parse_toml",
    "read_toml",
    "resolve_nodes",
]


def resolve_nodes(
    primary: str | None, standbys: Sequence[str], nodes: Sequence[Node] | None
) -> list[Node]:
    """The manager's nodes from its constructor's arguments, checked."""
    if nodes is not None and (primary is not None or standbys):
        raise ConfigurationError("give either nodes= or primary=/standbys=, not both")
    if nodes is None:
        if primary is None:
            raise ConfigurationError("no nodes: give primary= (and standbys=) or nodes=")
        nodes = nodes_from_primary(primary, standbys)
    found = list(nodes)
    if not found:
        raise ConfigurationError("nodes must not be empty")
    names = [n.name for n in found]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigurationError(f"duplicate node name(s): {', '.join(duplicates)}")
    return found


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


_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

# PGFAILOVER_ variables that are not settings (the lab's, the server's, the tests').
_OTHER_VARIABLES = frozenset(
    {
        "PGFAILOVER_DSN",
        "PGFAILOVER_ADMIN_TOKEN",
        "PGFAILOVER_PG_BINDIR",
        "PGFAILOVER_LAB_USER",
        "PGFAILOVER_LAB_DIR",
        "PGFAILOVER_LAB",
        "PGFAILOVER_LAB_IMAGE",
        "PGFAILOVER_BASE_IMAGE",
        "PGFAILOVER_REQUIRE_TOOLS",
    }
)


def _coerce(name: str, raw: str, source: str) -> Any:
    """Turn an environment string into the type of config field ``name``."""
    if name == "read_weights":
        return _weights(raw, source)
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


def _weights(raw: str, source: str) -> dict[str, float] | None:
    """``node1=3,node2=1`` (the environment's form of ``read_weights``)."""
    weights: dict[str, float] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError(item)
            weights[name.strip()] = float(value)
        except ValueError:
            raise ConfigurationError(
                f"{source}: cannot read {item.strip()[:60]!r} as node=weight "
                "(for example node1=3,node2=1)"
            ) from None
    return weights or None


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
        if not key.startswith("PGFAILOVER_") or key in _OTHER_VARIABLES:
            continue
        name = key[len("PGFAILOVER_") :].lower()
        if name in names:
            settings[name] = _coerce(name, raw, key)
            continue
        close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.85)
        if close:  # a typo of a setting, not another program's variable
            raise ConfigurationError(
                f"{key} is not a setting (did you mean PGFAILOVER_{close[0].upper()}?)"
            )
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
        if ssl in ("1", "true", "yes", "on"):
            params["sslmode"] = "require"
        elif ssl in _SSLMODES:
            params["sslmode"] = ssl
        elif ssl not in ("", "0", "false", "no", "off"):
            raise ConfigurationError(
                f"DB_SSL must be true or false or a libpq sslmode "
                f"({', '.join(_SSLMODES)}), got {env['DB_SSL']!r}"
            )
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
    schema.refuse_unknown(data, allowed, f"config file {path}")
    config = FailoverConfig.from_mapping(data.get("failover", {}), source=f"{path} [failover]")
    sources = [k for k in ("dsn", "primary", "nodes") if k in data]
    if len(sources) != 1:
        raise ConfigurationError(
            f"config file {path}: give exactly one of dsn, primary (+ standbys) or [[nodes]]"
        )
    for key in ("dsn", "primary"):
        if key in data and not isinstance(data[key], str):
            raise ConfigurationError(f"config file {path}: {key} must be a string (a DSN)")
    if "standbys" in data and "primary" not in data:
        raise ConfigurationError(f"config file {path}: standbys needs primary")
    if "dsn" in data:
        return nodes_from_dsn(data["dsn"]), config
    if "primary" in data:
        standbys = data.get("standbys", [])
        if not isinstance(standbys, list) or not all(isinstance(d, str) for d in standbys):
            raise ConfigurationError(
                f"config file {path}: standbys must be a list of DSNs (strings)"
            )
        return nodes_from_primary(data["primary"], standbys), config
    entries = data["nodes"]
    if not isinstance(entries, list) or not entries:
        raise ConfigurationError(f"config file {path}: nodes must be [[nodes]] tables")
    nodes = [
        schema.from_mapping(Node, entry, source=f"config file {path}: nodes[{index}]")
        for index, entry in enumerate(entries)
    ]
    return nodes, config


M = TypeVar("M", bound="FromSources")


class FromSources:
    """The manager's constructors from a DSN, a TOML file or the environment.

    A mixin: the class using it takes ``nodes=`` and ``config=`` keywords
    (``FailoverManager``), so every way in ends in one constructor.
    """

    def __init__(self, *, nodes: Sequence[Node], config: FailoverConfig | None, **kw: Any) -> None:
        raise NotImplementedError  # pragma: no cover - the class using the mixin defines it

    @classmethod
    def from_dsn(
        cls: type[M], dsn: str, *, config: FailoverConfig | None = None, **kwargs: Any
    ) -> M:
        """One node per host of a libpq multi-host URL or key/value DSN."""
        return cls(nodes=nodes_from_dsn(dsn), config=config, **kwargs)

    @classmethod
    def from_config(cls: type[M], path: str | Path, **kwargs: Any) -> M:
        """Nodes and settings from a TOML file (see :func:`load_toml`)."""
        nodes, config = load_toml(path)
        return cls(nodes=nodes, config=config, **kwargs)

    @classmethod
    def from_env(cls: type[M], **kwargs: Any) -> M:
        """Nodes and settings from ``PGFAILOVER_*`` / ``DB_*`` environment variables."""
        nodes, config = load_env()
        if nodes is None:
            raise ConfigurationError("no nodes in the environment: set PGFAILOVER_DSN or DB_HOST")
        return cls(nodes=nodes, config=config, **kwargs)
