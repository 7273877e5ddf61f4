"""Running statements for the asyncio manager: waiting without blocking the loop.

Every decision (where a statement goes, what an error means, the circuit
breakers, the counters) is :class:`~pgfailover.dispatch.Dispatcher`'s, the
same as the sync executor's; this module adds the awaiting: statements on
psycopg's ``AsyncConnection``, and waiting for a primary on futures that the
view's change listener resolves from the monitor thread
(``call_soon_threadsafe``), never on a lock. Its steps mirror the sync
executor's line for line (the tables of ``tests/unit/test_executor.py`` run
on both).

Cancellation (a client gone, a timeout) propagates as ``CancelledError``
and is never taken for a node failure. The connection always goes back to
its pool (psycopg cancels a statement still running on the server first);
a write cancelled during COMMIT may or may not have committed: it is
counted as ``unknown`` and logged, never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any, Literal

import psycopg
from psycopg import pq

from pgfailover.aio.pools import AsyncConnection, AsyncNodePools
from pgfailover.dispatch import CHECKOUT_SLICE, MAX_ATTEMPTS, Dispatcher, returns_rows
from pgfailover.errors import NoPrimaryAvailable, NoStandbyAvailable
from pgfailover.statements import read_async, settle_async

__all__ = ["AsyncExecutor", "AsyncSession"]

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
        # No wake here: what made the write wait asked for a round already (a new
        # suspicion), or the monitor probes fast (no primary in the snapshot).
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
        """A connection from ``node``'s pool, or ``None`` (node suspected) before
        ``deadline``; a read's breaker trial (``token``) is released if the wait ends
        otherwise (the manager closed, a cancellation)."""
        timeout = self.checkout_timeout(deadline)
        until = time.monotonic() + timeout
        wait = min(timeout, CHECKOUT_SLICE)
        while True:
            try:
                return await self._pools.checkout(node, wait)
            except BaseException as exc:  # noqa: BLE001 - slice_ended raises it again unless a timeout
                more = self.slice_ended(
                    node, exc, token=token, readonly=readonly, timeout=timeout, until=until
                )
                if more is None:
                    return None
                wait = more

    async def _wait_for_readers(self, deadline: float) -> bool:
        """No node can serve a read: wait a little for a change; False once past
        ``deadline`` (no wake, as in the sync executor; with no monitor thread, a
        round runs on a worker thread)."""
        if time.monotonic() >= deadline:
            return False
        await self._wait_for_change(
            self._new_waiter(), min(0.1, max(0.0, deadline - time.monotonic()))
        )
        await self._probe_if_idle()
        return True

    # -- statements -----------------------------------------------------------
    # The same steps as the sync executor's, each decided by the Dispatcher;
    # bookkeeping always precedes the await that gives the connection back,
    # which a cancellation may interrupt (the connection still goes back:
    # AsyncNodePools.checkin finishes in a task of its own).

    async def run_write(self, sql: Any, params: Params) -> list[Row]:
        """Run a write on the primary (see :mod:`pgfailover.dispatch` for retries)."""
        deadline = time.monotonic() + self._wait_timeout
        last: BaseException | None = None
        for _ in range(MAX_ATTEMPTS):
            node = self.ready_primary() or await self.wait_for_primary(deadline)
            conn = await self._checkout(node, deadline, 0, False)
            if conn is None:
                self._counters.query(node, "write", "retry")
                continue
            phase: Literal["statement", "commit"] = "statement"
            try:
                try:
                    cur = await conn.execute(sql, params)
                    rows = await cur.fetchall() if returns_rows(cur) else []
                    phase = "commit"
                    await conn.commit()
                except psycopg.Error:
                    # Rolled back here, not by the pool with a warning. Not when
                    # cancelled: the pool takes it back in a task of its own then.
                    await settle_async(conn)
                    raise
            except psycopg.Error as exc:
                try:
                    retry = self.write_failed(node, exc, phase)
                finally:
                    await self._pools.checkin(node, conn)
                if not retry:
                    raise
                last = exc
                continue
            except BaseException as exc:
                try:
                    if phase == "commit":
                        self.interrupted_commit(node, exc)  # psycopg let the COMMIT end
                finally:
                    await self._pools.checkin(node, conn)
                raise
            try:
                self.write_done(node)
            finally:
                await self._pools.checkin(node, conn)
            return rows
        raise self.too_many(last) from last

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
                rows = await read_async(conn, sql, params)
            except BaseException as exc:
                try:
                    retry = self.read_failed(node, token, route, exc)
                finally:
                    await self._pools.checkin(node, conn)
                if not retry:
                    raise
                tried.add(node)
                last = exc
                continue
            try:
                self.read_done(node, token, route)
            finally:
                await self._pools.checkin(node, conn)
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
                node = self.ready_primary() or await self.wait_for_primary(deadline)
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
                if committing and not readonly and not isinstance(failed, psycopg.Error):
                    self.interrupted_commit(node, failed)  # psycopg let the COMMIT end
                else:
                    await self._fail(node, conn, route, failed)
                raise
            self.session_done(node, readonly)
        finally:
            try:
                if readonly:  # before the await below, which a cancellation could cut
                    self.report(node, token, outcome)
            finally:
                await self._pools.checkin(node, conn)

    async def _fail(
        self, node: str, conn: AsyncConnection, route: str, exc: BaseException
    ) -> None:
        """The block (or its COMMIT) raised ``exc``: suspect a lost node, count, roll back.

        A cancellation is counted nowhere, as in :meth:`run_write` and
        :meth:`run_read`: it says nothing of the node or the statement.
        """
        if isinstance(exc, Exception):
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
