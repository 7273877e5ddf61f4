"""Django integration: DATABASES from one pgfailover config, a router, a middleware.

settings.py::

    from pgfailover.contrib.django import databases

    PGFAILOVER = {"source": "pgfailover.toml"}          # or a DSN, or Nodes
    DATABASES = databases(PGFAILOVER["source"], options={"pool": True})
    DATABASE_ROUTERS = ["pgfailover.contrib.django.FailoverRouter"]
    MIDDLEWARE = ["pgfailover.contrib.django.FailoverMiddleware", ...]
    INSTALLED_APPS = [..., "pgfailover.contrib.django"]  # the pgfailover_status command

``DATABASES`` gets one alias per node (named as the node) for the router,
and ``default``: every host in one libpq multi-host entry with
``target_session_attrs=read-write``, so ``migrate``, the shell and anything
unrouted reach the primary too. The router sends writes to the alias of
the node that is primary now and reads to a fitting standby's alias; the
middleware gives each request read-your-writes (see
:mod:`pgfailover.contrib.causality`), optionally carried to the next request
in a cookie, and closes this thread's connections to the cluster after a
failover so that none is reused broken. ``request.pgfailover.writable``
and the ``context_processor`` (``pgfailover_writable`` in templates) say
when the cluster is read-only (no primary and none coming: writes raise
``ReadOnlyMode`` at once), for a banner instead of an error page.

``PGFAILOVER`` keys: ``source`` (required), ``name``, ``settings`` (a dict
of FailoverConfig overrides), ``cookie`` (bool, default True),
``cookie_max_age`` (seconds, default 60).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from psycopg.conninfo import conninfo_to_dict

from pgfailover.config import FailoverConfig
from pgfailover.contrib.causality import (
    COOKIE_NAME,
    Source,
    causes,
    current,
    load_source,
    manager_from,
    parse_token,
    read_node,
    read_your_writes,
    report_error,
    set_token_cookie,
    write_node,
)
from pgfailover.errors import ConfigurationError
from pgfailover.execution import is_connection_error
from pgfailover.manager import FailoverManager

__all__ = [
    "FailoverMiddleware",
    "FailoverRouter",
    "RequestInfo",
    "context_processor",
    "count_statement",
    "databases",
    "get_manager",
    "install_counting",
    "reset_manager",
]

_FIELDS = {
    "dbname": "NAME",
    "user": "USER",
    "password": "PASSWORD",
    "host": "HOST",
    "port": "PORT",
}


def _entry(dsn: str, options: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    params = conninfo_to_dict(dsn)
    entry: dict[str, Any] = {"ENGINE": "django.db.backends.postgresql", **extra}
    for key, field in _FIELDS.items():
        value = params.pop(key, None)
        entry[field] = "" if value is None else str(value)
    entry["OPTIONS"] = {**{k: str(v) for k, v in params.items()}, **options}
    return entry


def _pool_options(given: Any, config: FailoverConfig) -> dict[str, Any]:
    """Django's ``pool`` option made to survive failovers.

    ``timeout``: a request waits for a connection at most a little longer
    than it takes to open one (psycopg_pool's default is 30 s, which a
    request routed to a node that just died would spend in full), and never
    longer than ``failover_wait_timeout``. The check of a pooled connection
    as it is handed out (one broken by a failover or a node restart is
    replaced, not used) is Django's own with ``CONN_HEALTH_CHECKS``, on by
    default here.
    """
    pool = {} if given is True else dict(given)
    wait = max(2.0, 2 * config.connect_timeout)
    if config.failover_wait_timeout > 0:
        wait = min(wait, config.failover_wait_timeout)
    pool.setdefault("timeout", wait)
    return pool


def databases(
    source: Source, *, options: dict[str, Any] | None = None, **extra: Any
) -> dict[str, dict[str, Any]]:
    """``DATABASES`` for every node of ``source``, plus a multi-host ``default``.

    ``options`` go into every entry's ``OPTIONS`` (e.g. ``{"pool": True}`` for
    Django's psycopg pool, which gets a connection check on checkout and a
    short wait, see :func:`_pool_options`); other keyword arguments
    (``CONN_MAX_AGE``...) into every entry. ``CONN_HEALTH_CHECKS`` is on
    unless given: a persistent connection broken by a failover is replaced
    at the start of the next request instead of failing it. The node aliases mirror
    ``default`` in tests, so Django's test runner builds one test database.
    """
    if isinstance(source, FailoverManager):
        nodes, config = list(source.nodes), source.config
    else:
        nodes, config = load_source(source)
    opts = dict(options or {})
    if opts.get("pool"):
        opts["pool"] = _pool_options(opts["pool"], config)
    extra = {"CONN_HEALTH_CHECKS": True, **extra}
    entries = {n.name: _entry(n.dsn, opts, extra) for n in nodes}
    first = next(iter(entries.values()))
    hosts = [e["HOST"] for e in entries.values()]
    ports = [e["PORT"] or "5432" for e in entries.values()]
    default = {
        **first,
        "HOST": ",".join(hosts),
        "PORT": ",".join(ports),
        "OPTIONS": {**first["OPTIONS"], "target_session_attrs": "read-write"},
    }
    for entry in entries.values():
        entry["TEST"] = {"MIRROR": "default"}
    if "default" in entries:
        raise ConfigurationError("a node may not be named 'default': Django reserves that alias")
    return {"default": default, **entries}


_lock = threading.Lock()
_manager: FailoverManager | None = None  # written under _lock; read without it (one reference)
_generation = 0  # failovers seen; guarded by _lock


def _settings() -> dict[str, Any]:
    from django.conf import settings

    value = getattr(settings, "PGFAILOVER", None)
    if not isinstance(value, dict) or "source" not in value:
        raise ConfigurationError("settings.PGFAILOVER must be a dict with a 'source' key")
    return value


def get_manager() -> FailoverManager:
    """The process's manager, built from ``settings.PGFAILOVER`` and opened on first use."""
    global _manager  # noqa: PLW0603 - one manager per process, like Django's connections
    mgr = _manager  # the hot path (every routed and counted statement): no lock
    if mgr is not None and not mgr.closed:
        return mgr
    with _lock:
        if _manager is None or _manager.closed:
            conf = _settings()
            mgr = manager_from(
                conf["source"], name=conf.get("name", "default"), settings=conf.get("settings")
            )
            mgr.on_failover(_count_failover)
            _manager = mgr.open()
        return _manager


def reset_manager() -> None:
    """Close the process's manager (the next use builds a new one)."""
    global _manager
    with _lock:
        mgr, _manager = _manager, None
    if mgr is not None:
        mgr.close()


def _count_failover(event: Any) -> None:
    global _generation  # noqa: PLW0603 - see get_manager
    if getattr(event, "outcome", None) == "completed":
        with _lock:
            _generation += 1


def _under_test() -> bool:
    """Django's test environment is set up (``manage.py test``, pytest-django).

    ``setup_test_environment()`` gives ``django.core.mail`` its ``outbox``.
    """
    from django.core import mail

    return getattr(mail, "outbox", None) is not None


class FailoverRouter:
    """A ``DATABASE_ROUTERS`` entry: writes to the primary's alias, reads to a standby's.

    Under Django's test runner everything goes to ``default``: the test
    database is built there only, a ``TestCase`` wraps each test in one
    transaction on one connection (a read on another alias would not see
    the test's writes), and no other alias keeps a session open on the
    test database when it is dropped.
    """

    def db_for_write(self, model: type[Any], **hints: Any) -> str:
        """The alias of the node that is primary now (waits during a failover)."""
        if _under_test():
            return "default"
        return _connected(get_manager(), write_node)

    def db_for_read(self, model: type[Any], **hints: Any) -> str:
        """A fitting standby's alias, or the primary's (after a write in this request)."""
        if _under_test():
            return "default"
        return _connected(get_manager(), read_node)

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        """Objects on any node of the cluster may relate: it is one database."""
        names = {"default", *(n.name for n in get_manager().nodes)}
        if obj1._state.db in names and obj2._state.db in names:
            return True
        return None

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        """Only on ``default`` (the primary through libpq) or the current primary's alias."""
        if _under_test():
            return db == "default"
        return db in ("default", get_manager().snapshot.primary)


def _connected(mgr: FailoverManager, pick: Callable[[FailoverManager], str]) -> str:
    """The alias ``pick`` chooses, with its connection made now, while another may be chosen.

    Django connects when the first statement needs it, after routing: a
    node that died since the manager last heard from it would fail that
    statement. Here the connection is checked and made first (Django's own
    health check and ``ensure_connection``, so nothing is done twice); one
    that cannot be made sent nothing, so its node is suspected (the manager
    probes it now and routes around it) and ``pick`` chooses again: a write
    waits for the new primary, a read goes to another node. This is what
    keeps a request that starts just after a primary crash, in a process
    that has not yet heard of it, from failing.
    """
    from django.db import connections
    from django.db.utils import OperationalError

    for _ in range(len(mgr.nodes)):
        alias = pick(mgr)
        conn = connections[alias]
        if conn.in_atomic_block:
            return alias
        try:
            conn.close_if_health_check_failed()
            conn.ensure_connection()
        except OperationalError as exc:
            if not any(is_connection_error(e) for e in causes(exc)):
                raise
            conn.close()
            mgr.suspect(alias, f"cannot connect: {exc}")
            continue
        return alias
    return pick(mgr)  # every node refused: the statement fails with its own error


_local = threading.local()


def _close_after_failover(aliases: Iterable[str]) -> None:
    """Close this thread's connections once per failover: none is reused broken."""
    from django.db import connections

    with _lock:
        generation = _generation
    if getattr(_local, "generation", 0) == generation:
        return
    for alias in aliases:
        connections[alias].close()
    _local.generation = generation


def count_statement(
    execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    """A Django ``execute_wrapper``: run the statement, count it like ``mgr.query()``.

    The node is the alias (``default`` counts as the primary it reached);
    the route ``write`` on the primary unless the statement is a plain
    ``SELECT`` (then ``read_primary``), ``read`` on a standby.
    """
    mgr = get_manager()
    alias = context["connection"].alias
    primary = mgr.snapshot.primary
    node = (primary or alias) if alias == "default" else alias
    head = sql.lstrip()[:6].upper()
    plain_read = head == "SELECT" and "FOR UPDATE" not in sql.upper()
    route = "read" if node != primary else "read_primary" if plain_read else "write"
    try:
        result = execute(sql, params, many, context)
    except Exception:
        mgr.counters.query(node, route, "error")
        raise
    mgr.counters.query(node, route, "ok")
    return result


def install_counting(sender: Any, connection: Any, **kwargs: Any) -> None:
    """``connection_created`` receiver: add :func:`count_statement` to a cluster alias once."""
    if connection.alias != "default" and connection.alias not in {
        n.name for n in get_manager().nodes
    }:
        return
    if count_statement not in connection.execute_wrappers:
        connection.execute_wrappers.append(count_statement)


@dataclass(frozen=True)
class RequestInfo:
    """``request.pgfailover``: what the cluster allows, as of the request's start."""

    writable: bool  # False in read-only mode: writes fail at once with ReadOnlyMode


def context_processor(request: Any) -> dict[str, Any]:
    """A ``TEMPLATES`` context processor: ``pgfailover_writable`` for a read-only banner."""
    info = getattr(request, "pgfailover", None)
    return {"pgfailover_writable": info.writable if info else get_manager().writable}


class FailoverMiddleware:
    """Per-request read-your-writes and connection hygiene (add it first in MIDDLEWARE)."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        conf = _settings()
        self.cookie = bool(conf.get("cookie", True))
        self.cookie_max_age = int(conf.get("cookie_max_age", 60))

    def __call__(self, request: Any) -> Any:
        """Route the request with read-your-writes; after a write, set the token cookie."""
        mgr = get_manager()
        _close_after_failover(["default", *(n.name for n in mgr.nodes)])
        request.pgfailover = RequestInfo(writable=mgr.writable)
        token = parse_token(request.COOKIES.get(COOKIE_NAME)) if self.cookie else None
        with read_your_writes(min_lsn=token) as state:
            response = self.get_response(request)
            if state.wrote and self.cookie:
                set_token_cookie(mgr, response, self.cookie_max_age)
            return response

    def process_exception(self, request: Any, exception: Exception) -> Any:
        """A connection error: suspect the nodes this request used, so the next avoid them.

        A read-only request (GET, HEAD, OPTIONS) that has written nothing is
        then run once more: its view again, routed away from the suspects,
        on fresh connections. A request that wrote, or failed twice, fails.
        """
        mgr = get_manager()
        report_error(mgr, exception)
        unit = current()
        if (
            request.method not in ("GET", "HEAD", "OPTIONS")
            or unit is None
            or unit.wrote
            or getattr(request, "_pgfailover_retried", False)
            or not any(is_connection_error(e) for e in causes(exception))
        ):
            return None
        request._pgfailover_retried = True
        from django.db import connections
        from django.urls import resolve

        for alias in unit.used:
            connections[alias].close()
        for node in unit.used:
            mgr.counters.query(node, "read", "retry")
        unit.used.clear()
        match = resolve(request.path_info)
        return match.func(request, *match.args, **match.kwargs)
