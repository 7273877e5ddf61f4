"""Running statements for the asyncio manager: waiting without blocking the loop.

Every decision (where a statement goes, what an error means, the circuit
breakers, the counters) and every retry loop is the sync executor's: the
decisions are :class:`~pgfailover.dispatch.Dispatcher`'s, the loops the
generators of :mod:`pgfailover.plans`. This module performs what a plan
yields by awaiting: statements on psycopg's ``AsyncConnection``, and
waiting for a primary on futures that the view's change listener resolves
from the monitor thread (``call_soon_threadsafe``), never on a lock.

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
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import psycopg

from pgfailover.aio.pools import AsyncConnection, AsyncNodePools
from pgfailover.dispatch import returns_rows
from pgfailover.plans import (
    CHECKIN,
    CHECKOUT,
    COMMIT,
    EXECUTE,
    PRIMARY,
    ROLLBACK,
    Plan,
    Planner,
)

__all__ = ["AsyncExecutor", "AsyncSession"]

Params = Sequence[Any] | dict[str, Any] | None
Row = tuple[Any, ...]
T = TypeVar("T")


class AsyncExecutor(Planner[AsyncNodePools]):
    """Routes and runs statements as coroutines: it performs the operations of the
    :mod:`~pgfailover.plans` by awaiting (constructor: :class:`~pgfailover.dispatch.Dispatcher`).

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

    # -- statements -----------------------------------------------------------

    # run_write, run_read, acquire and release return their plan's driving coroutine
    # rather than being coroutines themselves: one level less in the await chain,
    # which every resumption of the task goes through.

    def run_write(self, sql: Any, params: Params) -> Coroutine[Any, Any, list[Row]]:
        """Run a write on the primary (see :mod:`pgfailover.dispatch` for retries)."""
        return self._drive(self.plan_write(sql, params))

    def run_read(
        self, sql: Any, params: Params, min_lsn: int | None = None
    ) -> Coroutine[Any, Any, list[Row]]:
        """Run a read on a fitting standby, else the primary, retrying elsewhere.

        ``min_lsn``: only standbys known to have replayed that far (read-your-writes).
        """
        return self._drive(self.plan_read(sql, params, min_lsn))

    def client(self, readonly: bool) -> AsyncSession:
        """A pooled connection for a block of work (``get_client``)."""
        return AsyncSession(self, readonly)

    def acquire(self, readonly: bool) -> Coroutine[Any, Any, tuple[str, AsyncConnection, int]]:
        """A node, a connection from its pool and the breaker trial it is (0: none),
        waiting up to ``failover_wait_timeout``."""
        return self._drive(self.plan_acquire(readonly))

    def release(
        self,
        node: str,
        conn: AsyncConnection,
        readonly: bool,
        exc: BaseException | None,
        token: int = 0,
    ) -> Coroutine[Any, Any, None]:
        """End an :class:`AsyncSession`: commit (or roll back after ``exc``), count, give
        it back. ``token``: the breaker trial the session was (:meth:`acquire`)."""
        return self._drive(self.plan_release(node, conn, readonly, exc, token))

    async def _drive(self, plan: Plan[T]) -> T:
        """Run ``plan`` to its end, awaiting each operation it yields.

        A cancellation arriving in an await is thrown into the plan like
        any other exception: the plan counts what it must and gives the
        connection back (:meth:`AsyncNodePools.checkin
        <pgfailover.aio.pools.AsyncNodePools.checkin>` finishes even if
        cancelled) before the ``CancelledError`` propagates.
        """
        sent: Any = None
        error: BaseException | None = None
        pools = self._pools
        while True:
            try:
                op = plan.send(sent) if error is None else plan.throw(error)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            except BaseException:
                error = sent = None  # no cycle through this frame's traceback
                raise
            error = sent = None
            kind = op[0]
            try:
                if kind == EXECUTE:
                    cur = await op[1].execute(op[2], op[3])
                    sent = await cur.fetchall() if returns_rows(cur) else []
                elif kind == CHECKOUT:
                    sent = await pools.checkout(op[1], op[2])
                elif kind == COMMIT:
                    await op[1].commit()
                elif kind == CHECKIN:
                    await pools.checkin(op[1], op[2])
                elif kind == PRIMARY:
                    sent = await self.wait_for_primary(op[1])
                elif kind == ROLLBACK:
                    await op[1].rollback()
                else:  # WAIT
                    await self._wait_for_change(self._new_waiter(), op[1])
            except BaseException as exc:  # noqa: BLE001 - thrown into the plan, which decides
                error = exc


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
