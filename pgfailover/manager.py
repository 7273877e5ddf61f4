"""FailoverManager: the public API over two halves, watching and serving.

The manager validates its arguments, builds the parts of DESIGN.md and
wires them together; it holds no logic of its own:

- :class:`~pgfailover.supervisor.Supervisor` watches the cluster and acts:
  probe rounds → pure transition → the snapshot published in a
  :class:`~pgfailover.cluster.ClusterView`, each round's decisions applied
  by :class:`~pgfailover.failover.FailoverActions`, the monitor thread;
- :class:`~pgfailover.execution.Executor` serves the application:
  statements routed over the view and the :class:`~pgfailover.pools.NodePools`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from pgfailover import forking
from pgfailover.config import FailoverConfig, Node
from pgfailover.derive import standby_named
from pgfailover.events import FailoverEvent
from pgfailover.execution import Executor
from pgfailover.manager_base import (
    EventCallback,
    ManagerBase,
    RecoveryCallback,
    StateCallback,
    WritableCallback,
)
from pgfailover.model import Snapshot
from pgfailover.pools import NodePools

__all__ = [
    "EventCallback",
    "FailoverManager",
    "RecoveryCallback",
    "StateCallback",
    "WritableCallback",
]

logger = logging.getLogger(__name__)


class FailoverManager(ManagerBase[NodePools, Executor]):
    """Keeps writes on the real primary and reads on healthy standbys.

    Build it from DSNs (``primary=`` and ``standbys=``), from ``nodes=``, or
    with ``from_dsn``, ``from_config``, ``from_env`` (:class:`FromSources`); then
    :meth:`open` it (or use it as a context manager). ``open`` probes every
    node once, so the first query already knows the primary, and starts the
    ``pgfailover-monitor`` thread.

    ``pool_kwargs`` go to every node's ``psycopg_pool.ConnectionPool``
    (``configure``, ``reset``, ``kwargs``...). ``name`` labels this cluster in
    logs and metrics.

    Thread safety: it can be shared between threads. Many application
    threads may call :meth:`query` and :meth:`get_client` while the monitor
    runs; routing never waits on the monitor unless there is no primary.
    """

    def _make_pools(
        self, nodes: Sequence[Node], config: FailoverConfig, name: str, extra: Mapping[str, Any]
    ) -> NodePools:
        return NodePools(nodes, config, name, extra)

    def _make_executor(self, parts: dict[str, Any]) -> Executor:
        return Executor(**parts)

    # -- lifecycle -----------------------------------------------------

    def open(self, *, start_health_checks: bool = True) -> FailoverManager:
        """Open the pools, probe every node once, start the monitor."""
        if self._forked:  # in a forked child, first uses on other threads open it too
            with self._fork_lock:
                return self._open(start_health_checks)
        return self._open(start_health_checks)

    def _open(self, start_health_checks: bool) -> FailoverManager:
        if self._closed:
            raise self._refused()
        if self._opened:
            return self
        forking.watch(self)  # from here: a fork in the middle of opening renews it too
        self._opened = True
        self._monitored = start_health_checks  # as again in a forked child
        try:
            self._pools.open()
            self._sup.open()
            if start_health_checks:
                self.start_health_checks()
        except BaseException:
            self._close(timeout=2.0)
            raise
        self._forked = False  # opened here (in a forked child, explicitly or on first use)
        self._log_open()
        return self

    def _reopen_forked(self) -> None:
        # The first thread to use the manager in a forked child opens it; the
        # others wait for that, then find it open. Opening checks it again (the
        # lock is reentrant) and finds it opening.
        with self._fork_lock:
            if self._forked and not self._opened and not self._closed:
                try:
                    self._open(self._monitored)
                except BaseException:
                    if not self._close_asked:  # not closed by the application meanwhile
                        self._reopen_failed()  # still _forked: the next use tries again
                    raise
                self._forked = False

    def __enter__(self) -> FailoverManager:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start_health_checks(self) -> None:
        """Start the ``pgfailover-monitor`` thread (``open`` does it by default)."""
        self._check_open()
        self._monitored = True
        self._sup.start_monitor()

    def stop_health_checks(self, timeout: float = 5.0) -> None:
        """Stop the monitor thread; routing keeps using the last snapshot."""
        self._monitored = False
        self._sup.stop_monitor(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Finish what is running, unblock every caller, close every pool; within ``timeout``.

        A promotion in progress (on any thread) is waited for, repointing
        included, so the cluster is never left with sync names nobody
        satisfies; nothing is lowered because the manager closes. Callers
        blocked on a hung server or waiting for a pooled connection get
        :class:`~pgfailover.errors.ManagerClosed` (or ``WriteOutcomeUnknown``
        for a COMMIT already sent). A node that hangs cannot hold this up:
        probes are aborted and pools are closed in parallel, each with what
        is left of the timeout.
        """
        self._close_asked = True  # a failed first use in a forked child stays closed
        self._close(timeout)

    def _close(self, timeout: float) -> None:
        if self._closed:
            return
        deadline = time.monotonic() + timeout
        self._closed = True
        forking.unwatch(self)
        self._view.close()
        # Callers blocked on a hung server are freed first (ManagerClosed next).
        for name in self._by_name:
            self._pools.abort(name)
        self._sup.close(deadline)
        if not self._pools.close(deadline):
            logger.warning("manager %s: pools did not close within %.1fs", self.name, timeout)
        logger.info("manager %s closed", self.name)

    # -- routing support -----------------------------------------------

    def wait_for_primary(self, deadline: float) -> str:
        """The primary's name, waiting until ``deadline`` (monotonic) for one.

        Raises:
            ManagerClosed, SplitBrainError, NoPrimaryAvailable, ReadOnlyMode (at once).
        """
        if self._forked:
            self._reopen_forked()
        return self._executor.wait_for_primary(deadline)

    def pool(self, node: str) -> ConnectionPool:
        """The pool of one node."""
        if self._forked:
            self._reopen_forked()
        return self._pools.get(node)

    # -- the public query API ------------------------------------------

    def query(
        self,
        sql: Any,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        readonly: bool = False,
        min_lsn: int | None = None,
    ) -> list[tuple[Any, ...]]:
        """Run one statement in its own transaction and return its rows.

        Writes go to the primary; while a failover is in progress they wait
        up to ``failover_wait_timeout`` and run on the new primary. A write
        that provably did not commit (the connection failed before COMMIT)
        is retried there; one whose COMMIT was lost raises
        :class:`~pgfailover.errors.WriteOutcomeUnknown` and is never retried.
        ``readonly=True`` runs on a fitting standby, else the primary, and is
        retried on another node on connection errors; with ``min_lsn`` (from
        :meth:`write_position` after a write) only on a standby that has
        replayed that far, else the primary: read-your-writes. A read runs
        in autocommit mode, its own implicit transaction in one round trip
        (:mod:`pgfailover.statements`).
        """
        if self._closed or not self._opened:
            self._check_open()
        if readonly:
            return self._executor.run_read(sql, params, min_lsn)
        return self._executor.run_write(sql, params)

    def get_client(
        self, readonly: bool = False
    ) -> AbstractContextManager[psycopg.Connection[tuple[Any, ...]]]:
        """A pooled ``psycopg.Connection`` to the primary (or a standby if ``readonly``).

        On leaving the block the transaction is committed (rolled back on an
        exception) and the connection goes back to its pool. A connection
        error or a read-only refusal inside the block makes the manager
        re-probe at once; a lost COMMIT raises ``WriteOutcomeUnknown``.
        """
        if self._closed or not self._opened:
            self._check_open()
        return self._executor.client(readonly)

    def read_target(self, min_lsn: int | None = None) -> str:
        """The node a read should go to now: a fitting standby, else the primary.

        ``min_lsn``: only a standby whose last probe showed it replayed that
        far (see :meth:`write_position`). Framework integrations route with
        this; it waits for a primary (``failover_wait_timeout``) when no
        node can serve.
        """
        self._check_open()
        return self._executor.read_target(min_lsn)

    def write_position(self) -> int:
        """The primary's current WAL position, as a read-your-writes token.

        Taken after a write has committed, a standby whose replay reached it
        has that write: pass it as ``min_lsn`` to :meth:`query` or
        :meth:`read_target`. One round trip to the primary.
        """
        rows = self.query("SELECT (pg_current_wal_lsn() - '0/0')::bigint")
        return int(rows[0][0])

    def get_active_pool(self) -> ConnectionPool:
        """The current primary's ``ConnectionPool``.

        Raises:
            NoPrimaryAvailable: there is no primary right now.
        """
        return self._pools.get(self._active_primary())

    # -- health, failover, status --------------------------------------

    def check_health(self) -> Snapshot:
        """Probe every node now, apply the result, and return the snapshot."""
        return self.check_health_blocking()

    def check_primary_health(self) -> bool:
        """Probe now; True when a writable primary answered."""
        return self.check_health().writable_primary is not None

    def check_standby_health(self, standby: int | str) -> bool:
        """Probe now; True when the standby (index among non-primaries, or name) is healthy."""
        name = standby_named(self._view.snapshot, standby)
        return self.check_health().node(name).healthy_standby

    def perform_failover(
        self, target: int | str | None = None, *, force: bool = False, timeout: float = 30.0
    ) -> FailoverEvent:
        """Promote a standby now (manual trigger), with the promotion guards.

        ``target`` is a node name, an index among the non-primary nodes, or
        ``None`` for the best candidate. ``force=True`` skips only the guards
        marked forceable in :mod:`pgfailover.guards`; a primary that still
        answers is soft-fenced before the standby is promoted. ``timeout``
        bounds the wait for a promotion that is already running (guard
        ``busy``).

        Raises:
            PromotionRefused: a guard refused; its ``guard`` attribute names it.
        """
        return self.perform_failover_blocking(target, force=force, timeout=timeout)

    def switchover(
        self, target: int | str | None = None, *, force: bool = False, timeout: float = 30.0
    ) -> FailoverEvent:
        """Move the primary to a standby on purpose, losing nothing (steps: :mod:`.switchover`).

        ``target``: a node name, an index among the non-primary nodes, or
        ``None`` for the most advanced streaming standby; ``force`` allows a
        ``nofailover`` one. Writes wait meanwhile; ``timeout`` bounds the
        target's catch-up. The old primary stays fenced until it is rejoined.

        Raises:
            PromotionRefused: ``guard`` names why (``catchup_timeout``: the
                old primary takes writes again, nothing was promoted).
        """
        return self.switchover_blocking(target, force=force, timeout=timeout)

    def wait_repointed(self, timeout: float = 30.0) -> bool:
        """Wait until a running promotion (which repoints the standbys) has ended.

        Returns False if repointing was still running after ``timeout``.
        """
        return self._sup.actions.wait_repointed(timeout)
