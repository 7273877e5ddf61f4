"""SQLAlchemy integration: an engine per node, and a Session that routes each statement.

::

    from pgfailover.contrib.sqlalchemy import FailoverEngines

    engines = FailoverEngines("pgfailover.toml")          # or a DSN, Nodes, a manager
    Session = engines.sessionmaker()
    with Session() as session, session.begin():
        session.add(Order(...))                           # flush -> the primary
    with Session() as session:
        session.scalars(select(Order)).all()              # -> a fitting standby

:class:`FailoverSession` sends to the current primary every ORM flush,
every Core ``insert``/``update``/``delete``, ``SELECT ... FOR UPDATE``, raw
``text()`` (it cannot tell), and everything after the session has written;
plain reads go to a fitting standby (or the primary), following the
read-your-writes unit of :mod:`pgfailover.contrib.causality` when one is
active (a Flask or Django request). Each call asks the manager, so a new
session after a failover lands on the new primary; ``pool_pre_ping``
replaces connections to a node that went away. A read that fails with a
connection error (a standby restarting, a node gone) before the session
wrote or holds unflushed changes is run once more, on another node: the
node is reported to the manager as suspect (it probes now and routes
around it), the session's transaction is rolled back (it wrote nothing)
and the retry is counted as ``retry``. A connection that cannot be made
at all sent nothing: any statement, a write included, is then routed
again (a write waits for the new primary). Every statement an engine
runs is counted in the manager's ``pgfailover_queries_total`` (node, route,
outcome), so the dashboard's traffic panels show ORM traffic too.

With Flask-SQLAlchemy::

    db = SQLAlchemy(session_options={"class_": FailoverSession, "engines": engines})
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol, TypeVar

import psycopg
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import Select
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import TextClause

from pgfailover import forking
from pgfailover.contrib.causality import Source, causes, manager_from, read_node, write_node
from pgfailover.execution import is_connection_error
from pgfailover.manager import FailoverManager
from pgfailover.manager_base import ManagerBase

__all__ = [
    "NODE_KEY",
    "FailoverEngines",
    "FailoverSession",
    "RoutedEngines",
    "always",
    "count_statements",
    "recorded_node",
]

T = TypeVar("T")


class RoutedEngines(Protocol):
    """What :class:`FailoverSession` routes over: :class:`FailoverEngines`, or the asyncio
    :class:`~pgfailover.contrib.sqlalchemy_async.AsyncFailoverEngines` (their sync
    engines)."""

    engines: dict[str, Engine]

    @property
    def manager(self) -> ManagerBase[Any, Any]:
        """The manager that knows the cluster."""

    def writer(self) -> Engine:
        """The write engine."""

    def read_node(self) -> str:
        """The node a read goes to now."""


class FailoverEngines:
    """A SQLAlchemy ``Engine`` per node for reads, one for writes, and the manager.

    ``engine_options`` go to every ``create_engine`` (pool sizes...).

    The write engine (:attr:`primary`) connects to whichever node is primary
    when it makes a connection, and never hands out a pooled connection to
    a node that is no longer the primary: its checkout checks the node
    against the manager (raising SQLAlchemy's ``DisconnectionError``, which
    replaces the connection), and ``pool_pre_ping`` replaces a dead one. A
    connection that cannot be made sent nothing, so its node is suspected
    (the manager probes it now) and the connection is made to the next
    primary, waiting up to ``failover_wait_timeout`` during a failover: a
    write that starts just after a primary crash, in a process that has not
    yet heard of it, goes to the new primary instead of failing.

    Locks: none; ``_local`` is per thread (the node a connection being made
    goes to, read by the ``connect`` event in the same thread).
    """

    def __init__(
        self,
        source: Source,
        *,
        name: str = "default",
        settings: dict[str, Any] | None = None,
        engine_options: dict[str, Any] | None = None,
    ) -> None:
        # A manager given is shared (a Flask app's): opened if need be, never closed here.
        self._owns_manager = not isinstance(source, FailoverManager)
        self.manager: FailoverManager = manager_from(source, name=name, settings=settings)
        self.manager.open()
        self._dsns = {node.name: node.dsn for node in self.manager.nodes}
        self._local = threading.local()
        options = {"pool_pre_ping": True, **(engine_options or {})}
        self.engines: dict[str, Engine] = {
            node: create_engine(
                "postgresql+psycopg://", creator=partial(psycopg.connect, dsn), **options
            )
            for node, dsn in self._dsns.items()
        }
        for node_name, engine in self.engines.items():
            count_statements(self.manager, always(node_name), engine)
        self.primary: Engine = create_engine(
            "postgresql+psycopg://", creator=self._connect_to_primary, **options
        )
        event.listen(self.primary, "connect", self._record_node)
        event.listen(self.primary, "checkout", self._still_primary)
        count_statements(self.manager, recorded_node, self.primary)
        forking.watch(self)

    def _after_fork(self, parent: int) -> None:
        """In a forked child (gunicorn ``--preload``): new engine pools, SQLAlchemy's own
        advice (``dispose(close=False)``); the parent's pooled connections are never used,
        closed or collected here (:mod:`pgfailover.forking`). The manager renews itself."""
        for engine in [*self.engines.values(), self.primary]:
            forking.bury(engine.pool)
            engine.dispose(close=False)
        forking.watch(self)  # and again in a grandchild

    def _connect_to_primary(self) -> psycopg.Connection[Any]:
        """The write engine's ``creator``: a connection to whichever node is primary now."""
        mgr = self.manager
        deadline = time.monotonic() + mgr.config.failover_wait_timeout
        attempts = len(self._dsns) + 1  # a refusal per node, then the error stands
        while True:
            node = mgr.wait_for_primary(deadline)
            attempts -= 1
            try:
                conn = psycopg.connect(self._dsns[node])
            except psycopg.OperationalError as exc:
                if not is_connection_error(exc) or not attempts:
                    raise
                mgr.suspect(node, f"cannot connect: {exc}")
                continue
            self._local.node = node
            return conn

    def _record_node(self, dbapi_connection: Any, record: Any) -> None:
        record.info[NODE_KEY] = getattr(self._local, "node", None)

    def _still_primary(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        mgr = self.manager
        primary = mgr.wait_for_primary(time.monotonic() + mgr.config.failover_wait_timeout)
        if record.info.get(NODE_KEY) != primary:
            raise DisconnectionError(f"{record.info.get(NODE_KEY)} is no longer the primary")

    def writer(self) -> Engine:
        """The write engine (its connections go to the primary; waits during a failover)."""
        write_node(self.manager)  # this unit wrote: its reads stay on the primary
        return self.primary

    def reader(self) -> Engine:
        """A fitting standby's engine, or the primary's."""
        return self.engines[self.read_node()]

    def read_node(self) -> str:
        """The node a read goes to now (see :func:`pgfailover.contrib.causality.read_node`)."""
        return read_node(self.manager)

    def sessionmaker(self, **kwargs: Any) -> sessionmaker[FailoverSession]:
        """A ``sessionmaker`` of :class:`FailoverSession` bound to these engines."""
        return sessionmaker(class_=FailoverSession, engines=self, **kwargs)

    def close(self) -> None:
        """Dispose of every engine, and close the manager if these engines made it."""
        forking.unwatch(self)
        for engine in [*self.engines.values(), self.primary]:
            engine.dispose()
        if self._owns_manager:
            self.manager.close()


NODE_KEY = "pgfailover_node"  # key of a write-engine connection's node in its record's info


def always(node: str) -> Callable[[Any], str | None]:
    return lambda _connection: node


def recorded_node(connection: Any) -> str | None:
    """The node of a write-engine ``Connection`` (``None``: it was never made)."""
    if connection is None:
        return None
    node: str | None = connection.info.get(NODE_KEY)
    return node


def count_statements(
    mgr: ManagerBase[Any, Any], node_of: Callable[[Any], str | None], engine: Engine
) -> None:
    """Count every statement ``engine`` runs in ``pgfailover_queries_total``.

    ``node_of(connection)`` names the node of a SQLAlchemy ``Connection``
    (``None`` when a connection could not be made).
    The route is what the statement was to its node: ``write`` on the
    primary unless it is a plain read (then ``read_primary``), ``read`` on
    a standby; the outcome ``ok`` or ``error``, as for ``mgr.query()``.
    """

    def route(node: str, context: Any) -> str:
        if node != mgr.snapshot.primary:
            return "read"
        statement = getattr(getattr(context, "compiled", None), "statement", None)
        plain_read = isinstance(statement, Select) and statement._for_update_arg is None
        return "read_primary" if plain_read else "write"

    @event.listens_for(engine, "after_cursor_execute", named=True)
    def counted(**kw: Any) -> None:
        node = node_of(kw["conn"])
        if node is not None:
            mgr.counters.query(node, route(node, kw["context"]), "ok")

    @event.listens_for(engine, "handle_error")
    def failed(exception_context: Any) -> None:
        node = node_of(exception_context.connection)
        if node is None:
            return
        context = exception_context.execution_context
        mgr.counters.query(node, route(node, context) if context is not None else "write", "error")


class FailoverSession(Session):
    """A ``Session`` whose ``get_bind`` routes writes to the primary, reads to a standby."""

    def __init__(
        self, *args: Any, engines: RoutedEngines | None = None, db: Any = None, **kwargs: Any
    ) -> None:
        # ``db``: what Flask-SQLAlchemy passes to its session class; not needed here.
        # Without ``engines``, the Flask app's PgFailover gives them (its manager).
        super().__init__(*args, **kwargs)
        self._engines = engines
        self.wrote = False
        self._read_from: str | None = None  # the node of the last read get_bind routed

    @property
    def failover_engines(self) -> RoutedEngines:
        """The engines this session routes over (the Flask app's when none were given)."""
        if self._engines is None:
            from flask import current_app

            extension = current_app.extensions.get("pgfailover")
            if extension is None:
                raise RuntimeError(
                    "FailoverSession without engines= needs a Flask app with PgFailover"
                )
            engines: FailoverEngines = extension.engines()
            self._engines = engines
            return engines
        return self._engines

    def get_bind(
        self,
        mapper: Any = None,
        clause: Any = None,
        bind: Any = None,
        **kwargs: Any,
    ) -> Engine:
        """The engine for one statement: see the module docstring."""
        writes = (
            self.wrote
            or self._flushing
            or isinstance(clause, UpdateBase | TextClause)
            or (isinstance(clause, Select) and clause._for_update_arg is not None)
        )
        engines = self.failover_engines
        if writes:
            self.wrote = True
            self._read_from = None
            return engines.writer()
        self._read_from = engines.read_node()
        return engines.engines[self._read_from]

    def _connection_for_bind(self, engine: Any, execution_options: Any = None, **kw: Any) -> Any:
        """Where the session connects (SQLAlchemy's hook): around a node that cannot be reached.

        A connection that could not be made sent nothing, so its node is
        suspected (the manager probes it now and routes around it) and the
        statement's route is chosen again: a write waits for the new
        primary, a read goes to another node. This keeps a request that
        starts just after a primary crash, in a process that has not yet
        heard of it, from failing.
        """
        engines = self.failover_engines
        for _ in range(len(engines.engines)):
            try:
                return super()._connection_for_bind(engine, execution_options, **kw)
            except DBAPIError as exc:
                node = next((n for n, e in engines.engines.items() if e is engine), None)
                if node is None or not any(is_connection_error(e) for e in causes(exc)):
                    raise
                engines.manager.suspect(node, f"cannot connect: {exc.orig}")
                if self._read_from == node:
                    engines.manager.counters.query(node, "read", "retry")
                    self._read_from = engines.read_node()
                    engine = engines.engines[self._read_from]
                else:
                    engine = engines.writer()
        return super()._connection_for_bind(engine, execution_options, **kw)

    def close(self) -> None:
        """``Session.close``: a connection lost since the last statement has nothing to roll back.

        Its node went away (a standby restarting ends its sessions) after
        the work was done; SQLAlchemy has invalidated it, so closing again
        finishes the rest instead of failing the request at its teardown.
        """
        try:
            super().close()
        except DBAPIError as exc:
            if not any(is_connection_error(e) for e in causes(exc)):
                raise
            super().close()

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        """``Session.execute``, with a read that lost its node run once more elsewhere."""
        return self._read_retried(super().execute, args, kwargs)

    def scalar(self, *args: Any, **kwargs: Any) -> Any:
        """``Session.scalar``, retried like :meth:`execute`."""
        return self._read_retried(super().scalar, args, kwargs)

    def scalars(self, *args: Any, **kwargs: Any) -> Any:
        """``Session.scalars``, retried like :meth:`execute`."""
        return self._read_retried(super().scalars, args, kwargs)

    def _read_retried(
        self, run: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        self._read_from = None
        try:
            return run(*args, **kwargs)
        except DBAPIError as exc:
            node = self._read_from
            if (
                node is None  # a write, or the error came before routing
                or self.wrote
                or self.new
                or self.dirty
                or self.deleted
                or not any(is_connection_error(e) for e in causes(exc))
            ):
                raise
            mgr = self.failover_engines.manager
            mgr.suspect(node, f"{type(exc).__name__} in a SQLAlchemy session: {exc.orig}")
            mgr.counters.query(node, "read", "retry")
            self.rollback()  # wrote nothing; the lost connection's transaction is gone
            return run(*args, **kwargs)
