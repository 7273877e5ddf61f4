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
replaces connections to a node that went away. Every statement an engine
runs is counted in the manager's ``pgfailover_queries_total`` (node, route,
outcome), so the dashboard's traffic panels show ORM traffic too.

With Flask-SQLAlchemy::

    db = SQLAlchemy(session_options={"class_": FailoverSession, "engines": engines})
"""

from __future__ import annotations

from functools import partial
from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import Select
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import TextClause

from pgfailover.contrib.causality import Source, manager_from, read_node, write_node
from pgfailover.manager import FailoverManager

__all__ = ["FailoverEngines", "FailoverSession"]


class FailoverEngines:
    """One SQLAlchemy ``Engine`` per node, and the manager that picks one.

    ``engine_options`` go to every ``create_engine`` (pool sizes...).
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
        options = {"pool_pre_ping": True, **(engine_options or {})}
        self.engines: dict[str, Engine] = {
            node.name: create_engine(
                "postgresql+psycopg://", creator=partial(psycopg.connect, node.dsn), **options
            )
            for node in self.manager.nodes
        }
        for node_name, engine in self.engines.items():
            _count_statements(self.manager, node_name, engine)

    def writer(self) -> Engine:
        """The current primary's engine (waits during a failover)."""
        return self.engines[write_node(self.manager)]

    def reader(self) -> Engine:
        """A fitting standby's engine, or the primary's."""
        return self.engines[read_node(self.manager)]

    def sessionmaker(self, **kwargs: Any) -> sessionmaker[FailoverSession]:
        """A ``sessionmaker`` of :class:`FailoverSession` bound to these engines."""
        return sessionmaker(class_=FailoverSession, engines=self, **kwargs)

    def close(self) -> None:
        """Dispose of every engine, and close the manager if these engines made it."""
        for engine in self.engines.values():
            engine.dispose()
        if self._owns_manager:
            self.manager.close()


def _count_statements(mgr: FailoverManager, node: str, engine: Engine) -> None:
    """Count every statement ``engine`` runs in ``pgfailover_queries_total``.

    The route is what the statement was to its node: ``write`` on the
    primary unless it is a plain read (then ``read_primary``), ``read`` on
    a standby; the outcome ``ok`` or ``error``, as for ``mgr.query()``.
    """

    def route(context: Any) -> str:
        if node != mgr.snapshot.primary:
            return "read"
        statement = getattr(getattr(context, "compiled", None), "statement", None)
        plain_read = isinstance(statement, Select) and statement._for_update_arg is None
        return "read_primary" if plain_read else "write"

    @event.listens_for(engine, "after_cursor_execute", named=True)
    def counted(**kw: Any) -> None:
        mgr.counters.query(node, route(kw["context"]), "ok")

    @event.listens_for(engine, "handle_error")
    def failed(exception_context: Any) -> None:
        context = exception_context.execution_context
        mgr.counters.query(node, route(context) if context is not None else "write", "error")


class FailoverSession(Session):
    """A ``Session`` whose ``get_bind`` routes writes to the primary, reads to a standby."""

    def __init__(
        self, *args: Any, engines: FailoverEngines | None = None, db: Any = None, **kwargs: Any
    ) -> None:
        # ``db``: what Flask-SQLAlchemy passes to its session class; not needed here.
        # Without ``engines``, the Flask app's PgFailover gives them (its manager).
        super().__init__(*args, **kwargs)
        self._engines = engines
        self.wrote = False

    @property
    def failover_engines(self) -> FailoverEngines:
        """The engines this session routes over (the Flask app's when none were given)."""
        if self._engines is None:
            from flask import current_app

            extension = current_app.extensions.get("pgfailover")
            if extension is None:
                raise RuntimeError(
                    "FailoverSession without engines= needs a Flask app with PgFailover"
                )
            self._engines = extension.engines()
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
        if writes:
            self.wrote = True
            return self.failover_engines.writer()
        return self.failover_engines.reader()
