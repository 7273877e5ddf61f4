"""Running statements for the asyncio manager: waiting without blocking the loop.

Every decision (where a statement goes, what an error means, the circuit
breakers, the counters) is :class:`~pgfailover.dispatch.Dispatcher`'s, the
same as the sync executor's; this module adds the awaiting: statements on
psycopg's ``AsyncConnection``, and waiting for a primary on futures that the
view's change listener resolves from the monitor thread
(``call_soon_threadsafe``), never on a lock.

Cancellation (a client gone, a timeout) propagates as ``CancelledError``
and is never taken for a node failure. The connection always goes back to
its pool (psycopg cancels a statement still running on the server first);
a write cancelled during COMMIT may or may not have committed: it is
counted as ``unknown`` and logged, never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any, Literal

import psycopg
from psycopg import pq
from psycopg_pool import PoolTimeout

from pgfailover.aio.pools import AsyncConnection, AsyncNodePools
from pgfailover.dispatch import MAX_ATTEMPTS, Dispatcher
from pgfailover.errors import ManagerClosed, NoPrimaryAvailable, NoStandbyAvailable

__all__ = ["AsyncExecutor", "AsyncSession"]

logger = logging.getLogger(__name__)

Params = Sequence[Any] | dict[str, Any] | None
Row = tuple[Any, ...]

_INTRANS = pq.TransactionStatus.INTRANS
_IDLE = pq.TransactionStatus.IDLE


class AsyncExecutor(Dispatcher[AsyncNodePools]):
    """Routes and runs statements as coroutines (constructor: :class:`Dispatcher`).

    :meth:`bind` ties it to the event loop the manager was opened on; from
    then on every coroutine runs there.

    Thread safety: the coroutines run on the bound loop; the view's
    listener (:meth:`_changed_threadsafe`) may be called from any thread.
    """

    _loop: asyncio.AbstractEventLoop | None = None
    _waiters: set[asyncio.Future[None]]

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wake waiting tasks on ``loop`` whenever the view changes."""
        self._loop = loop
        self._waiters = set()
        self.view.listen(self._changed_threadsafe)

    def unbind(self) -> None:
        """Stop listening to the view (the manager closed)."""
        self.view.unlisten(self._changed_threadsafe)

    def _changed_threadsafe(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(self._changed)

    def _changed(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _wait_for_change(self, waiter: asyncio.Future[None], timeout: float) -> None:
        """Until the view changes (``waiter`` resolved) or ``timeout`` passes."""
        try:
            await asyncio.wait((waiter,), timeout=max(0.0, timeout))
        finally:
            self._waiters.discard(waiter)

    def _new_waiter(self) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        return waiter

    async def wait_for_primary(self, deadline: float) -> str:
        """The primary's name, waiting until ``deadline`` (monotonic) for one.

        Raises:
            ManagerClosed, SplitBrainError, NoPrimaryAvailable, ReadOnlyMode.
        """
        target = self.ready_primary()
        if target is not None:
            return target
        self._wake()
        while True:
            waiter = self._new_waiter()  # before looking: no change slips between
            try:
                target, remaining = self.view.primary_now(deadline)
            except BaseException:
                self._waiters.discard(waiter)
                raise
            if target is not None:
                self._waiters.discard(waiter)
                return target
            await self._wait_for_change(waiter, min(remaining, self._poll))
            await self._probe_if_idle()

    async def _probe_if_idle(self) -> None:
        """When no monitor thread runs: a probe round, on a worker thread (it may take
        ``health_check_timeout`` on a hung node). Otherwise nothing: the monitor probes."""
        if not self._monitoring():
            await asyncio.to_thread(self._idle_probe)

    async def read_target(self, min_lsn: int | None = None) -> str:
        """The node a read should go to now; waits for a primary when none can serve."""
        order = self.read_order(min_lsn)
        if order:
            return order[0]
        return await self.wait_for_primary(time.monotonic() + self._wait_timeout)

    async def _checkout(
        self, node: str, deadline: float, token: int, readonly: bool
    ) -> AsyncConnection | None:
        """A connection from ``node``'s pool, or ``None`` (node suspected) before ``deadline``.

        A read's breaker trial (``token``) is released if the task is
        cancelled (or the manager closes) while it waits.
        """
        timeout = max(0.05, min(self._pool_timeout, deadline - time.monotonic()))
        try:
            return await self._pools.checkout(node, timeout)
        except PoolTimeout:
            if self.view.closed:
                self.breakers.release(node, token)
                raise ManagerClosed(f"manager {self.view.name} is closed") from None
            self.no_connection(node, token, timeout, readonly)
            return None
        except BaseException:
            self.breakers.release(node, token)
            raise

    async def _wait_for_readers(self, deadline: float) -> bool:
        """No node can serve a read: probe and wait a little; False once past ``deadline``."""
        if time.monotonic() >= deadline:
            return False
        self._wake()
        await self._wait_for_change(
            self._new_waiter(), min(0.1, max(0.0, deadline - time.monotonic()))
        )
        return True

    # -- statements -----------------------------------------------------------

    async def run_write(self, sql: Any, params: Params) -> list[Row]:
        """Run a write on the primary (see :mod:`pgfailover.dispatch` for retries)."""
        deadline = time.monotonic() + self._wait_timeout
        last: BaseException | None = None
        for _ in range(MAX_ATTEMPTS):
            node = self.ready_primary()  # the happy path: no coroutine to wait in
            if node is None:
                node = await self.wait_for_primary(deadline)
            conn = await self._checkout(node, deadline, 0, False)
            if conn is None:
                self._counters.query(node, "write", "retry")
                continue
            phase: Literal["statement", "commit"] = "statement"
            try:
                cur = await conn.execute(sql, params)
                rows = await cur.fetchall() if cur.description else []
                phase = "commit"
                await conn.commit()
            except psycopg.Error as exc:
                try:  # decided and counted before any await a cancellation could cut
                    retry = self.write_failed(node, exc, phase)
                finally:
                    await self._pools.checkin(node, conn)
                if not retry:
                    raise
                last = exc
                continue
            except BaseException:
                if phase == "commit":
                    self._cancelled_commit(node)
                await self._pools.checkin(node, conn)
                raise
            await self._pools.checkin(node, conn)
            self.write_done(node)
            return rows
        raise self.too_many(last) from last

    def _cancelled_commit(self, node: str) -> None:
        self._counters.query(node, "write", "unknown")
        logger.warning(
            "a write on %s was cancelled during COMMIT: it may or may not have committed", node
        )

    async def run_read(self, sql: Any, params: Params, min_lsn: int | None = None) -> list[Row]:
        """Run a read on a fitting standby, else the primary, retrying elsewhere.

        ``min_lsn``: only standbys known to have replayed that far (read-your-writes).
        """
        deadline = time.monotonic() + self._wait_timeout
        tried: set[str] = set()
        last: BaseException | None = None
        for _ in range(MAX_ATTEMPTS):
            picked = self.pick_reader(min_lsn, tried)
            if picked is None:
                if not await self._wait_for_readers(deadline):
                    break
                tried.clear()
                continue
            node, token, route = picked
            conn = await self._checkout(node, deadline, token, True)
            if conn is None:
                tried.add(node)
                self._counters.query(node, route, "retry")
                continue
            try:
                cur = await conn.execute(sql, params)
                rows = await cur.fetchall() if cur.description else []
                await conn.commit()
            except BaseException as exc:
                retry = self.read_failed(node, token, route, exc)  # before any await
                await self._pools.checkin(node, conn)
                if not retry:
                    raise
                tried.add(node)
                last = exc
                continue
            await self._pools.checkin(node, conn)
            self.read_done(node, token, route)
            return rows
        raise self.no_reader(last) from last

    def client(self, readonly: bool) -> AsyncSession:
        """A pooled connection for a block of work (``get_client``)."""
        return AsyncSession(self, readonly)

    async def acquire(self, readonly: bool) -> tuple[str, AsyncConnection, int]:
        """A node, a connection from its pool and the breaker trial it is (0: none),
        waiting up to ``failover_wait_timeout``."""
        deadline = time.monotonic() + self._wait_timeout
        token = 0
        while True:
            if readonly:
                order = self.read_order()
                if not order:
                    if not await self._wait_for_readers(deadline):
                        raise NoStandbyAvailable(
                            f"no node can serve reads (cluster {self.view.name})"
                        )
                    continue
                node, token = self.admitted(order)
            else:
                node = await self.wait_for_primary(deadline)
            conn = await self._checkout(node, deadline, token, readonly)
            if conn is not None:
                return node, conn, token
            if time.monotonic() >= deadline:
                raise NoPrimaryAvailable(f"no connection to {node} within the failover wait")

    async def release(
        self,
        node: str,
        conn: AsyncConnection,
        readonly: bool,
        exc: BaseException | None,
        token: int = 0,
    ) -> None:
        """End an :class:`AsyncSession`: commit (or roll back after ``exc``), count, give
        it back. ``token``: the breaker trial the session was (:meth:`acquire`)."""
        route = "read" if readonly else "write"
        outcome: BaseException | None = None
        committing = False
        try:
            if exc is not None:
                outcome = exc
                await self._fail(node, conn, route, exc)
                return
            try:
                if conn.pgconn.transaction_status == _INTRANS:
                    committing = True
                    try:
                        await conn.commit()
                    except psycopg.Error as failed:
                        self.commit_failed(node, failed)
                        raise
            except BaseException as failed:
                outcome = failed
                if committing and not readonly and isinstance(failed, asyncio.CancelledError):
                    self._cancelled_commit(node)  # psycopg let the COMMIT end on the server
                else:
                    await self._fail(node, conn, route, failed)
                raise
            self.session_done(node, readonly)
        finally:
            if readonly:  # before the await below, which a cancellation could cut
                self.report(node, token, outcome)
            await self._pools.checkin(node, conn)

    async def _fail(
        self, node: str, conn: AsyncConnection, route: str, exc: BaseException
    ) -> None:
        """The block (or its COMMIT) raised ``exc``: suspect a lost node, count, roll back."""
        self.session_failed(node, route, exc)
        if not conn.closed and conn.pgconn.transaction_status != _IDLE:
            with contextlib.suppress(psycopg.Error):  # the pool discards what it cannot reset
                await conn.rollback()


class AsyncSession:
    """``async with mgr.get_client() as conn:``: a pooled ``AsyncConnection`` for one
    block of work; committed at the end of the block, rolled back on an exception.

    It can be entered once. Leave the block (do not drop the session inside
    it): a coroutine cannot give a connection back from a finaliser.
    """

    __slots__ = ("_conn", "_executor", "_node", "_readonly", "_token", "_used")

    def __init__(self, executor: AsyncExecutor, readonly: bool) -> None:
        self._executor = executor
        self._readonly = readonly
        self._node = ""
        self._token = 0
        self._conn: AsyncConnection | None = None
        self._used = False

    async def __aenter__(self) -> psycopg.AsyncConnection[Row]:
        if self._used:
            raise RuntimeError("a get_client() session can be entered only once")
        self._used = True
        self._node, conn, self._token = await self._executor.acquire(self._readonly)
        self._conn = conn
        return conn

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if exc is None and exc_type is not None:
            exc = RuntimeError(f"the block raised {exc_type.__name__}")
        await self._executor.release(self._node, conn, self._readonly, exc, self._token)
