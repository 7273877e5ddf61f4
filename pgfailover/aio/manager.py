"""AsyncFailoverManager: FailoverManager's API as coroutines, for asyncio applications.

The same two halves as :class:`~pgfailover.manager.FailoverManager` (see
:mod:`pgfailover.manager_base`), built from the same parts:

- watching and acting is the same :class:`~pgfailover.supervisor.Supervisor`,
  on its own monitor thread: probes on persistent connections, one deadline
  per round, the fast interval while the primary is in doubt, wake-on-error,
  and every promotion, fence and repoint. It runs off the event loop on
  purpose: a failure detector that shares the application's loop sees a
  loop stalled by the application (a CPU-bound handler, a blocking call) as
  every node timing out at once, and in ``auto`` mode that must never be
  evidence for a promotion. A hung node never blocks the loop either: no
  probe runs on it.
- serving the application is an :class:`~pgfailover.aio.execution.AsyncExecutor`
  over one ``AsyncConnectionPool`` per node: the same routing, retries and
  error verdicts as the sync executor (:class:`~pgfailover.dispatch.Dispatcher`),
  awaited. A write waiting for a new primary waits on a future the monitor
  thread resolves through ``call_soon_threadsafe``.

Blocking operations that are rare (a manual failover, a switchover, a
probe round on demand, stopping the monitor) run on a worker thread with
``asyncio.to_thread``, so the loop keeps serving meanwhile. Callbacks may
be plain functions (called on the monitor thread, as with the sync
manager) or coroutine functions (run as tasks on the manager's loop).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from psycopg_pool import AsyncConnectionPool

from pgfailover import forking
from pgfailover.aio.execution import AsyncExecutor, AsyncSession, Params, Row
from pgfailover.aio.pools import AsyncNodePools
from pgfailover.config import FailoverConfig, Node
from pgfailover.derive import standby_named
from pgfailover.events import FailoverEvent
from pgfailover.manager_base import ManagerBase
from pgfailover.model import Snapshot

__all__ = ["AsyncFailoverManager"]

logger = logging.getLogger(__name__)


class AsyncFailoverManager(ManagerBase[AsyncNodePools, AsyncExecutor]):
    """Keeps writes on the real primary and reads on healthy standbys, as coroutines.

    Built like :class:`~pgfailover.manager.FailoverManager` (``primary=`` and
    ``standbys=``, ``nodes=``, ``from_dsn``, ``from_config``, ``from_env``;
    the same :class:`~pgfailover.config.FailoverConfig`); ``pool_kwargs`` go to
    every node's ``psycopg_pool.AsyncConnectionPool``. Open it with ``await
    mgr.open()`` or ``async with``, inside the event loop that will use it:
    the pools belong to that loop.

    Thread safety: its coroutines must run on the loop it was opened on;
    the non-blocking methods (status, metrics, history, ``snapshot``,
    ``writable``) may be called from any thread.
    """

    _loop: asyncio.AbstractEventLoop | None = None
    _closing: asyncio.Future[None] | None = None

    def _make_pools(
        self, nodes: Sequence[Node], config: FailoverConfig, name: str, extra: Mapping[str, Any]
    ) -> AsyncNodePools:
        return AsyncNodePools(nodes, config, name, extra)

    def _make_executor(self, parts: dict[str, Any]) -> AsyncExecutor:
        return AsyncExecutor(**parts)

    # -- lifecycle -----------------------------------------------------

    async def open(self, *, start_health_checks: bool = True) -> AsyncFailoverManager:
        """Open the pools, probe every node once (off the loop), start the monitor."""
        if self._closed:
            raise self._refused()
        if self._opened:
            return self
        forking.watch(self)  # from here: a fork in the middle of opening is refused too
        self._opened = True
        self._loop = asyncio.get_running_loop()
        self._executor.bind(self._loop)
        try:
            await self._pools.open()
            # The first round runs on a worker thread; a cancellation of this task
            # waits for it to end, so that close() never races a round still acting.
            first = asyncio.ensure_future(asyncio.to_thread(self._sup.open))
            try:
                await asyncio.shield(first)
            except asyncio.CancelledError:
                await asyncio.wait((first,))
                raise
            if start_health_checks:
                self.start_health_checks()
        except BaseException:
            await self.close(timeout=2.0)
            raise
        self._log_open()
        return self

    def _fork_refusal(self) -> str | None:
        # Its pools belong to the parent's event loop, which did not survive the fork.
        return "an asyncio manager's pools belong to the parent's event loop"

    async def __aenter__(self) -> AsyncFailoverManager:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start_health_checks(self) -> None:
        """Start the ``pgfailover-monitor`` thread (``open`` does it by default)."""
        self._check_open()
        self._sup.start_monitor()

    async def stop_health_checks(self, timeout: float = 5.0) -> None:
        """Stop the monitor thread; routing keeps using the last snapshot."""
        await asyncio.to_thread(self._sup.stop_monitor, timeout)

    async def close(self, timeout: float = 5.0) -> None:
        """As :meth:`FailoverManager.close <pgfailover.manager.FailoverManager.close>`:
        finish a promotion in progress, unblock every task, close every pool; within
        ``timeout``, without blocking the loop.

        Closing runs to its end in a task of its own: a ``close()`` that is
        cancelled (or a second one meanwhile) waits for the same closing,
        never leaves it half done.

        Raises:
            RuntimeError: called from another event loop than the one the manager
                was opened on (its pools belong to that loop); nothing is changed.
        """
        if self._closed_why is not None:
            return  # refused in a forked child: its parts are new and were never opened
        loop = asyncio.get_running_loop()
        if self._loop is not None and loop is not self._loop:
            raise RuntimeError(
                f"manager {self.name} was opened on another event loop: close it there"
            )
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close(timeout))
        await asyncio.shield(self._closing)

    async def _close(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._closed = True
        forking.unwatch(self)
        self._view.close()  # waiting tasks wake up to ManagerClosed
        try:
            for name in self._by_name:
                self._pools.abort(name)
            await asyncio.to_thread(self._sup.close, deadline)
            if not await self._pools.close(deadline):
                logger.warning("manager %s: pools did not close within %.1fs", self.name, timeout)
        finally:
            self._executor.unbind()
        logger.info("manager %s closed", self.name)

    # -- routing support -----------------------------------------------

    async def wait_for_primary(self, deadline: float) -> str:
        """The primary's name, waiting until ``deadline`` (monotonic) for one.

        Raises:
            ManagerClosed, SplitBrainError, NoPrimaryAvailable, ReadOnlyMode (at once).
        """
        self._check_open()
        return await self._executor.wait_for_primary(deadline)

    def pool(self, node: str) -> AsyncConnectionPool[Any]:
        """The pool of one node."""
        return self._pools.get(node)

    # -- the public query API ------------------------------------------

    async def query(
        self,
        sql: Any,
        params: Params = None,
        *,
        readonly: bool = False,
        min_lsn: int | None = None,
    ) -> list[Row]:
        """Run one statement in its own transaction and return its rows: as
        :meth:`FailoverManager.query <pgfailover.manager.FailoverManager.query>`.

        A cancelled call propagates ``CancelledError``; its connection goes
        back to its pool, and a write cancelled during COMMIT may have
        committed (it is never retried).
        """
        if self._closed or not self._opened:
            self._check_open()
        if readonly:
            return await self._executor.run_read(sql, params, min_lsn)
        return await self._executor.run_write(sql, params)

    def get_client(self, readonly: bool = False) -> AsyncSession:
        """``async with mgr.get_client() as conn``: a pooled ``psycopg.AsyncConnection`` to
        the primary (or a standby if ``readonly``), committed when the block ends."""
        if self._closed or not self._opened:
            self._check_open()
        return self._executor.client(readonly)

    async def read_target(self, min_lsn: int | None = None) -> str:
        """The node a read should go to now (see the sync manager's ``read_target``)."""
        self._check_open()
        return await self._executor.read_target(min_lsn)

    async def write_position(self) -> int:
        """The primary's current WAL position, a read-your-writes token for ``min_lsn``."""
        rows = await self.query("SELECT (pg_current_wal_lsn() - '0/0')::bigint")
        return int(rows[0][0])

    def get_active_pool(self) -> AsyncConnectionPool[Any]:
        """The current primary's ``AsyncConnectionPool``.

        Raises:
            NoPrimaryAvailable: there is no primary right now.
        """
        return self._pools.get(self._active_primary())

    # -- health, failover ------------------------------------------------

    async def check_health(self) -> Snapshot:
        """Probe every node now (off the loop), apply the result, return the snapshot."""
        return await asyncio.to_thread(self.check_health_blocking)

    async def check_primary_health(self) -> bool:
        """Probe now; True when a writable primary answered."""
        return (await self.check_health()).writable_primary is not None

    async def check_standby_health(self, standby: int | str) -> bool:
        """Probe now; True when the standby (index among non-primaries, or name) is healthy."""
        name = standby_named(self._view.snapshot, standby)
        return (await self.check_health()).node(name).healthy_standby

    async def perform_failover(
        self, target: int | str | None = None, *, force: bool = False, timeout: float = 30.0
    ) -> FailoverEvent:
        """Promote a standby now, with the promotion guards (see the sync manager's
        ``perform_failover``); runs on a worker thread.

        Raises:
            PromotionRefused: a guard refused; its ``guard`` attribute names it.
        """
        return await asyncio.to_thread(
            self.perform_failover_blocking, target, force=force, timeout=timeout
        )

    async def switchover(
        self, target: int | str | None = None, *, force: bool = False, timeout: float = 30.0
    ) -> FailoverEvent:
        """Move the primary on purpose, losing nothing (see the sync manager's
        ``switchover``); writes wait meanwhile; runs on a worker thread.

        Raises:
            PromotionRefused: ``guard`` names why.
        """
        return await asyncio.to_thread(
            self.switchover_blocking, target, force=force, timeout=timeout
        )

    async def wait_repointed(self, timeout: float = 30.0) -> bool:
        """Wait until a running promotion (which repoints the standbys) has ended."""
        return await asyncio.to_thread(self._sup.actions.wait_repointed, timeout)

    # -- callbacks -----------------------------------------------------

    def _callback(self, callback: Any) -> Any:
        """Called on the monitor thread; what it returns, if awaitable (a coroutine
        function's call, an object with an async ``__call__``), runs on the manager's
        loop."""

        def call(*args: Any) -> None:
            result = callback(*args)
            if not inspect.isawaitable(result):
                return
            loop = self._loop
            if loop is None or loop.is_closed():
                logger.warning("callback %r not run: the manager's loop is gone", callback)
                if inspect.iscoroutine(result):
                    result.close()
                return
            future = asyncio.run_coroutine_threadsafe(_awaited(result), loop)
            future.add_done_callback(_log_callback_error)

        return call


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _log_callback_error(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.error("a pgfailover callback failed: %r", future.exception())
