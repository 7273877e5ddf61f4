"""The whole cluster as one SQLAlchemy URL, for tools that want a URL.

Flask-SQLAlchemy needs ``SQLALCHEMY_DATABASE_URI``, Alembic an ``sqlalchemy.url``.
SQLAlchemy cannot parse libpq's multi-host URL (``postgresql://h1:5432,h2:5432/db``),
but its psycopg dialect takes the hosts as repeated ``host`` query parameters::

    postgresql+psycopg://app:***@/app?host=h1:5432&host=h2:5432&target_session_attrs=read-write

``target_session_attrs=read-write`` makes libpq pick the primary, so the
engine built from it (``db.engine``, ``db.create_all()``, migrations)
always reaches the primary. Routing of the ORM's statements is
:class:`~pgfailover.contrib.sqlalchemy.FailoverSession`'s, not this URL's.
No SQLAlchemy import: Flask apps without it can still be configured.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote, urlencode

from pgfailover.config import Node
from pgfailover.dsn import parse_dsn

__all__ = ["sqlalchemy_url"]


def sqlalchemy_url(nodes: Sequence[Node]) -> str:
    """A ``postgresql+psycopg://`` URL naming every node, the primary chosen by libpq.

    User, password, database and other parameters come from the first node.
    """
    if not nodes:
        raise ValueError("no nodes")
    first = parse_dsn(nodes[0].dsn, field=f"node {nodes[0].name}: dsn")
    hosts = []
    for node in nodes:
        params = parse_dsn(node.dsn, field=f"node {node.name}: dsn")
        host = params.get("host") or params.get("hostaddr") or "localhost"
        hosts.append(f"{host}:{params.get('port') or '5432'}")
    user = quote(first.pop("user", ""), safe="")
    password = first.pop("password", None)
    auth = f"{user}:{quote(password, safe='')}@" if password is not None else f"{user}@"
    database = quote(first.pop("dbname", ""), safe="")
    for key in ("host", "hostaddr", "port", "target_session_attrs"):
        first.pop(key, None)
    query: list[tuple[str, str]] = [("host", h) for h in hosts]
    query += sorted(first.items())
    query.append(("target_session_attrs", "read-write"))
    return f"postgresql+psycopg://{auth if user or password else ''}/{database}?{urlencode(query)}"
