"""SQLAlchemy asyncio: an AsyncEngine per node, and AsyncSessions routed like FailoverSession.

::

    from pgfailover.contrib.sqlalchemy_async import AsyncFailoverEngines

    async with AsyncFailoverManager.from_config("pgfailover.toml") as mgr:
        engines = AsyncFailoverEngines(mgr)
        Session = engines.sessionmaker()                   # async_sessionmaker
        async with Session() as session, session.begin():
            session.add(Order(...))                        # flush -> the primary
        async with Session() as session:
            (await session.scalars(select(Order))).all()   # -> a fitting standby
        await engines.dispose()

The routing is :class:`~pgfailover.contrib.sqlalchemy.FailoverSession`'s, the
same code: SQLAlchemy's ``AsyncSession`` runs a sync session inside the event
loop (its ``sync_session_class``), and that session is a ``FailoverSession``
over the sync face of these async engines. Where the sync integration
waits (for the primary during a failover, for a fitting node), this one
awaits the manager's coroutines from inside that session, with SQLAlchemy's
own bridge (``sqlalchemy.util.await_only``): the loop is never blocked. The
write engine connects to whichever node is primary (``async_creator``), and
never hands out a pooled connection to a node that is no longer the
primary; ``pool_pre_ping`` replaces dead ones; statements are counted in
``pgfailover_queries_total`` as for the sync engines.
"""

from __future__ import annotations

import time
import weakref
from functools import partial
from typing import Any

import psycopg
from sqlalchemy import Engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.util import await_only

from pgfailover.aio.manager import AsyncFailoverManager
from pgfailover.contrib.causality import current
from pgfailover.contrib.sqlalchemy import (
    NODE_KEY,
    FailoverSession,
    always,
    count_statements,
    recorded_node,
)
from pgfailover.dispatch import is_connection_error

__all__ = ["AsyncFailoverEngines"]


class AsyncFailoverEngines:
    """An ``AsyncEngine`` per node for reads, one for writes, over an open
    :class:`~pgfailover.AsyncFailoverManager` (shared: never closed here).

    ``engine_options`` go to every ``create_async_engine`` (pool sizes...).
    :attr:`engines` and :meth:`writer` give their sync faces, which is what
    ``FailoverSession`` routes over.

    Thread safety: use it from the manager's event loop.
    """

    def __init__(
        self, manager: AsyncFailoverManager, *, engine_options: dict[str, Any] | None = None
    ) -> None:
        self._manager = manager
        self._dsns = {node.name: node.dsn for node in manager.nodes}
        # The node of each connection the write engine made (read by its connect event).
        self._made: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        options = {"pool_pre_ping": True, **(engine_options or {})}
        self.async_engines: dict[str, AsyncEngine] = {
            node: create_async_engine(
                "postgresql+psycopg://",
                async_creator=partial(psycopg.AsyncConnection.connect, dsn),
                **options,
            )
            for node, dsn in self._dsns.items()
        }
        self.engines: dict[str, Engine] = {
            node: engine.sync_engine for node, engine in self.async_engines.items()
        }
        for node, engine in self.engines.items():
            count_statements(manager, always(node), engine)
        self.async_primary = create_async_engine(
            "postgresql+psycopg://", async_creator=self._connect_to_primary, **options
        )
        self.primary: Engine = self.async_primary.sync_engine
        event.listen(self.primary, "connect", self._record_node)
        event.listen(self.primary, "checkout", self._still_primary)
        count_statements(manager, recorded_node, self.primary)

    @property
    def manager(self) -> AsyncFailoverManager:
        """The manager routing these engines."""
        return self._manager

    def _deadline(self) -> float:
        return time.monotonic() + self._manager.config.failover_wait_timeout

    async def _connect_to_primary(self) -> psycopg.AsyncConnection[Any]:
        """The write engine's creator: a connection to whichever node is primary now; a
        node that cannot be reached is suspected and the next primary is waited for."""
        mgr = self._manager
        deadline = self._deadline()
        attempts = len(self._dsns) + 1  # a refusal per node, then the error stands
        while True:
            node = await mgr.wait_for_primary(deadline)
            attempts -= 1
            try:
                conn = await psycopg.AsyncConnection.connect(self._dsns[node])
            except psycopg.OperationalError as exc:
                if not is_connection_error(exc) or not attempts:
                    raise
                mgr.suspect(node, f"cannot connect: {exc}")
                continue
            self._made[conn] = node
            return conn

    def _record_node(self, dbapi_connection: Any, record: Any) -> None:
        record.info[NODE_KEY] = self._made.get(dbapi_connection.driver_connection)

    def _still_primary(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        primary = await_only(self._manager.wait_for_primary(self._deadline()))
        if record.info.get(NODE_KEY) != primary:
            raise DisconnectionError(f"{record.info.get(NODE_KEY)} is no longer the primary")

    def writer(self) -> Engine:
        """The write engine's sync face (from inside an ``AsyncSession``); marks the unit
        of work as written, so that its reads stay on the primary."""
        state = current()
        if state is not None:
            state.wrote = True
        return self.primary

    def read_node(self) -> str:
        """The node a read goes to now (from inside an ``AsyncSession``): the primary
        after a write in this unit of work, else a fitting standby."""
        state = current()
        mgr = self._manager
        if state is not None and state.wrote:
            node: str = await_only(mgr.wait_for_primary(self._deadline()))
        else:
            node = await_only(mgr.read_target(state.min_lsn if state is not None else None))
        if state is not None:
            state.used.add(node)
        return node

    def sessionmaker(self, **kwargs: Any) -> async_sessionmaker[AsyncSession]:
        """An ``async_sessionmaker`` whose sessions route with ``FailoverSession``."""
        return async_sessionmaker(sync_session_class=FailoverSession, engines=self, **kwargs)

    async def dispose(self) -> None:
        """Dispose of every engine (the manager stays open: it is the caller's)."""
        for engine in [*self.async_engines.values(), self.async_primary]:
            await engine.dispose()
