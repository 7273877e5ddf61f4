"""Connection strings: parsing multi-host DSNs and masking passwords.

libpq accepts a URL (``postgresql://u@h1:5432,h2:5432/app``) or a key/value
string (``host=h1,h2 port=5432 dbname=app``) naming several hosts. pgfailover
splits such a string into one DSN per node. Every DSN shown to a person (log,
status, metric, exception) goes through :func:`mask_dsn` first.
"""

from __future__ import annotations

import re

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgfailover.errors import ConfigurationError

__all__ = ["mask_dsn", "node_address", "split_multihost"]

_SECRET_KEYS = ("password", "sslpassword")
_URL_PASSWORD = re.compile(r"(postgres(?:ql)?://[^:/@]*:)([^@]*)(@)")
_KV_PASSWORD = re.compile(r"((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def mask_dsn(dsn: str) -> str:
    """The DSN with every password replaced by ``***``.

    Works on strings libpq cannot parse too, so a malformed DSN can be
    quoted in an error message without leaking what it holds.
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return _KV_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***\3", dsn))
    for key in _SECRET_KEYS:
        if key in params:
            params[key] = "***"
    return make_conninfo("", **params)


def parse_dsn(dsn: str, *, field: str = "dsn") -> dict[str, str]:
    """libpq's parse of ``dsn`` as a dict, or a ConfigurationError naming ``field``."""
    try:
        return {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    except psycopg.ProgrammingError as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "cannot parse"
        raise ConfigurationError(f"{field}: invalid DSN {mask_dsn(dsn)!r}: {detail}") from None


def split_multihost(dsn: str, *, field: str = "dsn") -> list[str]:
    """One DSN per host of a libpq multi-host DSN, in the order given.

    ``port`` may list one port per host or a single port for all of them,
    as in libpq. ``target_session_attrs`` and ``load_balance_hosts`` are
    dropped: pgfailover decides the role of each node itself.

    Raises:
        ConfigurationError: the DSN does not parse, names no host, or the
            port list does not match the host list.
    """
    params = parse_dsn(dsn, field=field)
    hosts = params.pop("host", "").split(",") if params.get("host") else []
    hostaddrs = params.pop("hostaddr", "").split(",") if params.get("hostaddr") else []
    ports = params.pop("port", "").split(",") if params.get("port") else []
    params.pop("target_session_attrs", None)
    params.pop("load_balance_hosts", None)
    count = max(len(hosts), len(hostaddrs))
    if count == 0:
        raise ConfigurationError(f"{field}: DSN {mask_dsn(dsn)!r} names no host")
    if hosts and hostaddrs and len(hosts) != len(hostaddrs):
        raise ConfigurationError(
            f"{field}: {len(hosts)} hosts but {len(hostaddrs)} hostaddrs in {mask_dsn(dsn)!r}"
        )
    if len(ports) not in (0, 1, count):
        raise ConfigurationError(
            f"{field}: {count} hosts but {len(ports)} ports in {mask_dsn(dsn)!r} "
            "(give one port for all hosts, or one per host)"
        )
    for port in ports:
        if port.strip() and (not port.strip().isdigit() or not 0 < int(port) < 65536):
            raise ConfigurationError(
                f"{field}: port {port!r} in {mask_dsn(dsn)!r} is not a port number "
                "(1-65535, or empty for 5432)"
            )
    result = []
    for index in range(count):
        node = dict(params)
        if hosts:
            node["host"] = hosts[index]
        if hostaddrs:
            node["hostaddr"] = hostaddrs[index]
        if ports:
            node["port"] = ports[0] if len(ports) == 1 else ports[index]
        result.append(make_conninfo("", **node))
    return result


def node_address(dsn: str) -> str:
    """``host:port`` of a single-host DSN, for naming nodes and messages."""
    params = parse_dsn(dsn)
    host = params.get("host") or params.get("hostaddr") or "localhost"
    return f"{host}:{params.get('port') or '5432'}"
