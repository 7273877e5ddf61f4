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
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from pgfailover.availability import WindowStats
from pgfailover.breaker import BreakerPolicy, Breakers
from pgfailover.config import FailoverConfig, Node
from pgfailover.derive import standby_named
from pgfailover.errors import ConfigurationError, ManagerClosed, NoPrimaryAvailable
from pgfailover.events import FailoverEvent
from pgfailover.execution import Executor
from pgfailover.model import ClusterState, Snapshot
from pgfailover.pools import NodePools
from pgfailover.routing import ReadStrategy, make_strategy, write_target
from pgfailover.sources import FromSources, resolve_nodes
from pgfailover.strategies import describe
from pgfailover.supervisor import Supervisor
from pgfailover.upkeep import UpkeepStatus

__all__ = ["FailoverManager"]

logger = logging.getLogger(__name__)

StateCallback = Callable[[ClusterState, ClusterState, Snapshot], object]
EventCallback = Callable[[FailoverEvent], object]
RecoveryCallback = Callable[[str], object]
WritableCallback = Callable[[bool, str | None], object]


class FailoverManager(FromSources):
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

    def __init__(
        self,
        primary: str | None = None,
        standbys: Sequence[str] = (),
        *,
        nodes: Sequence[Node] | None = None,
        config: FailoverConfig | None = None,
        name: str = "default",
        read_strategy: ReadStrategy | None = None,
        pool_kwargs: dict[str, Any] | None = None,
    ) -> None:
        nodes = resolve_nodes(primary, standbys, nodes)
        self.config = cfg = config or FailoverConfig()
        self.nodes: tuple[Node, ...] = tuple(nodes)
        self.name = name
        self._by_name = {n.name: n for n in nodes}
        cfg.check_nodes(self._by_name)
        self._opened = False
        self._closed = False
        self._pools = NodePools(nodes, cfg, name, pool_kwargs)
        breakers = Breakers(self._by_name, BreakerPolicy.from_config(cfg), cluster=name)
        self._sup = sup = Supervisor(
            nodes,
            cfg,
            name,
            dsn=lambda node: self.node(node).dsn,
            abort=self._pools.abort,
            busy=self._pools.in_use,
            on_round=lambda snap: breakers.sync(snap, time.monotonic()),
        )
        self.counters = sup.counters
        self.events = sup.events
        self._view = sup.view
        self._executor = Executor(
            sup.view,
            self._pools,
            sup.counters,
            read_strategy or self._make_strategy(cfg.read_strategy),
            wait_timeout=cfg.failover_wait_timeout,
            pool_timeout=cfg.pool_timeout,
            poll=cfg.fast_interval * 2,
            wake=sup.wake,
            idle_probe=sup.probe_if_idle,
            on_write=sup.actions.incident.wrote,
            breakers=breakers,
        )

    @property
    def read_strategy(self) -> ReadStrategy:
        """The strategy that orders the standbys for reads (may be replaced at any time:
        a :class:`ReadStrategy`, or a built-in's name, with the config's ``read_weights``)."""
        return self._executor.strategy

    @read_strategy.setter
    def read_strategy(self, strategy: ReadStrategy | str) -> None:
        if isinstance(strategy, str):
            strategy = self._make_strategy(strategy)
        self._executor.strategy = strategy

    def _make_strategy(self, name: str) -> ReadStrategy:
        return make_strategy(name, weights=self.config.read_weights, busy=self._pools.in_use)

    # -- lifecycle -----------------------------------------------------

    def open(self, *, start_health_checks: bool = True) -> FailoverManager:
        """Open the pools, probe every node once, start the monitor."""
        if self._closed:
            raise ManagerClosed(f"manager {self.name} is closed")
        if self._opened:
            return self
        self._opened = True
        try:
            self._pools.open()
            self._sup.open()
            if start_health_checks:
                self.start_health_checks()
        except BaseException:
            self.close(timeout=2.0)
            raise
        snap = self._view.snapshot
        logger.info(
            "manager %s open: %d nodes, primary %s, state %s, promotion %s",
            self.name,
            len(self.nodes),
            snap.primary,
            snap.state.value,
            self.config.promotion,
        )
        return self

    def __enter__(self) -> FailoverManager:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start_health_checks(self) -> None:
        """Start the ``pgfailover-monitor`` thread (``open`` does it by default)."""
        self._check_open()
        self._sup.start_monitor()

    def stop_health_checks(self, timeout: float = 5.0) -> None:
        """Stop the monitor thread; routing keeps using the last snapshot."""
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
        if self._closed:
            return
        deadline = time.monotonic() + timeout
        self._closed = True
        self._view.close()
        # Callers blocked on a hung server are freed first (ManagerClosed next).
        for name in self._by_name:
            self._pools.abort(name)
        self._sup.close(deadline)
        if not self._pools.close(deadline):
            logger.warning("manager %s: pools did not close within %.1fs", self.name, timeout)
        logger.info("manager %s closed", self.name)

    def _check_open(self) -> None:
        if self._closed:
            raise ManagerClosed(f"manager {self.name} is closed")
        if not self._opened:
            raise ManagerClosed(f"manager {self.name} is not open: call open() or use 'with'")

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    # -- routing support -----------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        """The latest immutable snapshot of the cluster."""
        return self._view.snapshot

    @property
    def writable(self) -> bool:
        """False in read-only mode: the primary is lost and none is coming (see
        :func:`~pgfailover.routing.read_only_reason`); writes raise ``ReadOnlyMode`` at once.
        True while a primary takes writes or a promotion is expected (writes wait)."""
        return self._view.read_only_reason() is None

    def suspect(self, node: str, reason: str) -> None:
        """A query found ``node`` gone or read-only: avoid it and probe now.

        For integrations that run statements on their own connections
        (Django, SQLAlchemy): the manager's own queries do it themselves.
        """
        self._executor.suspect(node, reason)

    def wait_for_primary(self, deadline: float) -> str:
        """The primary's name, waiting until ``deadline`` (monotonic) for one.

        Raises:
            ManagerClosed, SplitBrainError, NoPrimaryAvailable, ReadOnlyMode (at once).
        """
        return self._executor.wait_for_primary(deadline)

    def pool(self, node: str) -> ConnectionPool:
        """The pool of one node."""
        return self._pools.get(node)

    def node(self, name: str) -> Node:
        """The configured :class:`Node` called ``name``."""
        try:
            return self._by_name[name]
        except KeyError:
            raise ConfigurationError(
                f"unknown node {name!r} (known: {', '.join(self._by_name)})"
            ) from None

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
        replayed that far, else the primary: read-your-writes.
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
        self._check_open()
        primary = write_target(self._view.snapshot, ())
        if primary is None:
            raise NoPrimaryAvailable(
                f"cluster {self.name} has no primary ({self._view.snapshot.state.value})"
            )
        return self._pools.get(primary)

    # -- health, failover, status --------------------------------------

    def check_health(self) -> Snapshot:
        """Probe every node now, apply the result, and return the snapshot."""
        self._check_open()
        self._sup.rounds.monitor_round(full=True)
        return self._view.snapshot

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
        self._check_open()
        name = standby_named(self._view.snapshot, target) if target is not None else None
        return self._sup.actions.manual_failover(name, force=force, timeout=timeout)

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
        self._check_open()
        name = standby_named(self._view.snapshot, target) if target is not None else None
        return self._sup.actions.switchover(name, force=force, timeout=timeout)

    def pause(self, reason: str = "maintenance") -> bool:
        """Maintenance mode (see :mod:`.maintenance`): no automatic promotion until resumed.

        Returns False when already paused.
        """
        self._check_open()
        return self._sup.actions.maintenance.pause(reason)

    def resume(self) -> bool:
        """Leave maintenance mode (the next round may fail over); False if not paused."""
        self._check_open()
        return self._sup.actions.maintenance.resume()

    @property
    def paused(self) -> bool:
        """True in maintenance mode (see :meth:`pause`)."""
        return self._sup.actions.maintenance.paused_since is not None

    def wait_repointed(self, timeout: float = 30.0) -> bool:
        """Wait until a running promotion (which repoints the standbys) has ended.

        Returns False if repointing was still running after ``timeout``.
        """
        return self._sup.actions.wait_repointed(timeout)

    def get_failover_status(self) -> dict[str, Any]:
        """The cluster, every node and the failover counters, as a JSON-ready dict."""
        status = self._sup.status(self._executor.breakers.report(time.monotonic()))
        status["read_strategy"] = describe(self._executor.strategy)
        return status

    @property
    def breakers(self) -> Breakers:
        """The nodes' read circuit breakers (:mod:`pgfailover.breaker`)."""
        return self._executor.breakers

    def availability(self) -> dict[str, WindowStats] | None:
        """Fraction of observed time writes were taken, over 1 h, 24 h, 7 d (once open)."""
        return self._sup.availability_report()

    def upkeep_status(self) -> UpkeepStatus:
        """What ``auto`` mode's upkeep knows: sync policy, settings it could not apply."""
        return self._sup.actions.upkeep.status()

    def get_metrics(self) -> dict[str, Any]:
        """Counters and gauges as a JSON-ready dict."""
        return self._sup.metrics()

    def history(self) -> list[FailoverEvent]:
        """Failover events, oldest first (newest last)."""
        return self.events.events()

    # -- callbacks -----------------------------------------------------

    def on_failover(self, callback: EventCallback) -> EventCallback:
        """Call ``callback(event)`` when a failover completes, fails or is refused."""
        return self._sup.callbacks.add("failover", callback)

    def on_state_change(self, callback: StateCallback) -> StateCallback:
        """Call ``callback(old, new, snapshot)`` on every cluster state change."""
        return self._sup.callbacks.add("state_change", callback)

    def on_writable_change(self, callback: WritableCallback) -> WritableCallback:
        """Call ``callback(writable, reason)`` when read-only mode begins or ends."""
        return self._sup.callbacks.add("writable_change", callback)

    def on_recovery(self, callback: RecoveryCallback) -> RecoveryCallback:
        """Call ``callback(node_name)`` when an unhealthy node is healthy again."""
        return self._sup.callbacks.add("recovery", callback)

    def __repr__(self) -> str:
        snap = self._view.snapshot
        return (
            f"<FailoverManager {self.name} nodes={[n.name for n in self.nodes]} "
            f"primary={snap.primary} state={snap.state.value}>"
        )
