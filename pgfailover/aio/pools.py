"""A psycopg_pool ``AsyncConnectionPool`` per node, and the connections checked out of them.

The asyncio twin of :class:`pgfailover.pools.NodePools`: the same options
per node (:func:`~pgfailover.pools.pool_options`) and the same tracking of
checked-out connections (:class:`~pgfailover.pools.TrackedPools`), so that
the monitor thread can unblock every task waiting on a lost node by
shutting its socket down, whichever thread it runs on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence, Sized
from typing import Any

import psycopg
from psycopg import pq
from psycopg_pool import AsyncConnectionPool, PoolClosed

from pgfailover.config import FailoverConfig, Node
from pgfailover.pools import TrackedPools
from pgfailover.warmup import async_warm_configure

__all__ = ["AsyncNodePools"]

logger = logging.getLogger(__name__)

AsyncConnection = psycopg.AsyncConnection[Any]
_IDLE = pq.TransactionStatus.IDLE
_WAITING = "requests_waiting"  # psycopg_pool's statistic: clients waiting for a connection


class AsyncNodePools(TrackedPools[AsyncConnectionPool[Any]]):
    """One ``AsyncConnectionPool`` per node; checked-out connections tracked until they
    come back.

    ``pool_kwargs`` (the caller's) go to every pool and are never modified.
    The pools are created closed; :meth:`open` opens them on the running
    event loop, which they are bound to from then on.

    Thread safety: :meth:`abort`, :meth:`in_use` and :meth:`saturated` may be
    called from any thread; the coroutines from the pools' event loop.
    """

    def __init__(
        self,
        nodes: Sequence[Node],
        config: FailoverConfig,
        cluster: str,
        pool_kwargs: Mapping[str, Any] | None = None,
        *,
        pool_class: Callable[..., AsyncConnectionPool[Any]] = AsyncConnectionPool,
    ) -> None:
        super().__init__(nodes, config, cluster, pool_kwargs)
        self._warm_up(config, async_warm_configure)
        self._pools = {n.name: pool_class(n.dsn, **self._options[n.name]) for n in nodes}
        # Each pool's queue of clients waiting for a connection: psycopg_pool keeps
        # one deque for its life. Its length is what get_stats() reports as
        # requests_waiting, without building two dicts on every checkin (None:
        # a psycopg_pool without it; get_stats() is asked instead).
        self._waiting: dict[str, Sized | None] = {
            name: _waiting_queue(pool) for name, pool in self._pools.items()
        }
        # Tasks giving connections back (asyncio keeps only weak references to tasks).
        self._returning: set[asyncio.Future[None]] = set()

    async def open(self) -> None:
        """Open every pool (connections are made in the background)."""
        for pool in self._pools.values():
            await pool.open(wait=False)

    def get(self, node: str) -> AsyncConnectionPool[Any]:
        """The pool of one node."""
        return self._pools[node]

    async def checkout(self, node: str, timeout: float) -> AsyncConnection:
        """A connection from ``node``'s pool, tracked until :meth:`checkin`.

        Raises:
            psycopg_pool.PoolTimeout: none came within ``timeout``.
            ManagerClosed: the pools are closed.
        """
        if self._closed:
            raise self._refuse()
        try:
            conn: AsyncConnection = await self._pools[node].getconn(timeout=timeout)
        except PoolClosed:
            raise self._refuse() from None
        if self._track(node, conn):
            return conn
        await self.checkin(node, conn)
        raise self._refuse()

    async def checkin(self, node: str, conn: AsyncConnection) -> None:
        """Give a connection from :meth:`checkout` back to its pool, even if the task that
        gives it back is cancelled meanwhile.

        Whenever psycopg_pool may await while taking it back (a rollback, a
        client waiting to be handed it, its lock), it does so in a task of its
        own, which a cancellation of this one does not interrupt: a
        connection dropped there would be a slot the pool never gets back.
        """
        self._untrack(node, conn)
        pool = self._pools[node]
        waiting = self._waiting[node]
        if conn.pgconn.transaction_status == _IDLE and not (
            len(waiting) if waiting is not None else pool.get_stats().get(_WAITING, 1)
        ):
            # Nothing to roll back and no client to hand it to: psycopg_pool puts it
            # back without suspending, so no cancellation can fall in between (and a
            # task of its own would cost the happy path a loop iteration).
            try:
                await pool.putconn(conn)
            except PoolClosed:
                await conn.close()
            return
        give_back = asyncio.ensure_future(self._putconn(node, conn))
        self._returning.add(give_back)
        give_back.add_done_callback(self._returned)
        await asyncio.shield(give_back)

    def _returned(self, task: asyncio.Future[None]) -> None:
        self._returning.discard(task)
        _log_failure(task)

    async def _putconn(self, node: str, conn: AsyncConnection) -> None:
        try:
            await self._pools[node].putconn(conn)
        except PoolClosed:
            await conn.close()

    async def close(self, deadline: float) -> bool:
        """Refuse new checkouts, unblock every caller, close the pools concurrently.

        Returns False when a pool was still closing at ``deadline`` (monotonic).
        """
        self._close_begin()
        for name in self._pools:
            self.abort(name)
        closers = [
            asyncio.ensure_future(pool.close(timeout=max(0.1, deadline - time.monotonic())))
            for pool in self._pools.values()
        ]
        done, pending = await asyncio.wait(closers, timeout=max(0.1, deadline - time.monotonic()))
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                logger.error("closing a pool failed: %s", task.exception())
        for task in pending:
            task.add_done_callback(_log_failure)
        return not pending


def _waiting_queue(pool: object) -> Sized | None:
    """psycopg_pool's queue of waiting clients (``_waiting``), if this version has it."""
    waiting = getattr(pool, "_waiting", None)
    return waiting if isinstance(waiting, Sized) else None


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("giving a connection back failed: %s", task.exception())
