"""What FailoverManager and AsyncFailoverManager share: the parts, status, callbacks.

Both managers are the same two halves (see :mod:`pgfailover.manager`): a
:class:`~pgfailover.supervisor.Supervisor` that watches the cluster and acts
on it, and an executor that serves the application. They differ only in the
serving half: threads over psycopg_pool's ``ConnectionPool`` for one,
asyncio over ``AsyncConnectionPool`` for the other. Everything that does not
wait (construction, routing state, status, metrics, history, maintenance,
callbacks) lives here once.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from pgfailover.availability import WindowStats
from pgfailover.breaker import BreakerPolicy, Breakers
from pgfailover.config import FailoverConfig, Node
from pgfailover.derive import standby_named
from pgfailover.dispatch import Dispatcher
from pgfailover.errors import (
    ConfigurationError,
    ManagerClosed,
    NoPrimaryAvailable,
    PromotionRefused,
)
from pgfailover.events import FailoverEvent
from pgfailover.manager_fork import ForkRenewal
from pgfailover.model import ClusterState, Snapshot
from pgfailover.pools import TrackedPools
from pgfailover.promote import PromotionGate
from pgfailover.routing import ReadStrategy, make_strategy, write_target
from pgfailover.sources import FromSources, resolve_nodes
from pgfailover.strategies import describe
from pgfailover.supervisor import Supervisor
from pgfailover.upkeep import UpkeepStatus

__all__ = [
    "EventCallback",
    "ManagerBase",
    "RecoveryCallback",
    "StateCallback",
    "WritableCallback",
]

logger = logging.getLogger(__name__)

StateCallback = Callable[[ClusterState, ClusterState, Snapshot], object]
EventCallback = Callable[[FailoverEvent], object]
RecoveryCallback = Callable[[str], object]
WritableCallback = Callable[[bool, str | None], object]

P = TypeVar("P", bound=TrackedPools[Any])
X = TypeVar("X", bound=Dispatcher[Any])


class ManagerBase(FromSources, ForkRenewal, Generic[P, X]):
    """The manager's parts and its non-blocking API; subclasses add the waiting half.

    A subclass provides :meth:`_make_pools` (its kind of pools) and
    :meth:`_make_executor` (its executor over them, from the keyword
    arguments this class prepares). What a fork does to it: :class:`ForkRenewal`.

    Locks: none of its own (``ForkRenewal``'s, in a forked child).

    Thread safety: every method here may be called from any thread.
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
        source: str | None = None,
        promotion_gate: PromotionGate | None = None,
    ) -> None:
        nodes = resolve_nodes(primary, standbys, nodes)
        self.config = cfg = config or FailoverConfig()
        if source is not None:
            self.config = cfg = cfg.replace(source=source)
        self.nodes: tuple[Node, ...] = tuple(nodes)
        self.name = name
        self._by_name = {n.name: n for n in nodes}
        cfg.check_nodes(self._by_name)
        self._opened = False
        self._closed = False
        self._init_renewal()
        # What the parts are built from, again in a forked child (_after_fork).
        self._pool_kwargs = dict(pool_kwargs or {})
        self._gate = promotion_gate
        self._strategy: ReadStrategy | str = read_strategy or cfg.read_strategy
        self._registered: list[tuple[str, Any]] = []  # callbacks, by kind
        self._listeners: list[Callable[[], None]] = []
        self._build(promotion_gate)

    def _build(self, gate: PromotionGate | None) -> None:
        """Make the parts: pools, supervisor, executor (at construction, and in a fork)."""
        cfg, nodes, name = self.config, self.nodes, self.name
        self._pools: P = self._make_pools(nodes, cfg, name, self._pool_kwargs)
        breakers = Breakers(self._by_name, BreakerPolicy.from_config(cfg), cluster=name)
        self._sup = sup = Supervisor(
            nodes,
            cfg,
            name,
            dsn=lambda node: self.node(node).dsn,
            replication_dsn=lambda node: self.node(node).replication_dsn,
            abort=self._pools.abort,
            busy=self._pools.in_use,
            on_round=lambda snap: breakers.sync(snap, time.monotonic()),
            gate=gate,
        )
        self.counters = sup.counters
        self.events = sup.events
        self._view = sup.view
        self._executor: X = self._make_executor(
            {
                "view": sup.view,
                "pools": self._pools,
                "counters": sup.counters,
                "strategy": self._strategy_now(),
                "wait_timeout": cfg.failover_wait_timeout,
                "pool_timeout": cfg.pool_timeout,
                "poll": cfg.fast_interval * 2,
                "wake": sup.wake,
                "idle_probe": sup.probe_if_idle,
                "monitoring": sup.monitoring,
                "on_write": sup.actions.incident.wrote,
                "breakers": breakers,
            }
        )
        for kind, callback in self._registered:
            sup.callbacks.add(kind, callback)
        for listener in self._listeners:
            sup.view.listen(listener)

    def _make_pools(
        self, nodes: Sequence[Node], config: FailoverConfig, name: str, extra: Mapping[str, Any]
    ) -> P:
        raise NotImplementedError  # pragma: no cover - each manager builds its own

    def _make_executor(self, parts: dict[str, Any]) -> X:
        raise NotImplementedError  # pragma: no cover - each manager builds its own

    # -- read strategy ---------------------------------------------------

    @property
    def read_strategy(self) -> ReadStrategy:
        """The strategy that orders the standbys for reads (may be replaced at any time:
        a :class:`ReadStrategy`, or a built-in's name, with the config's ``read_weights``)."""
        return self._executor.strategy

    @read_strategy.setter
    def read_strategy(self, strategy: ReadStrategy | str) -> None:
        self._strategy = strategy  # a built-in by name: a fork makes it over its own pools
        self._executor.strategy = self._strategy_now()

    def _strategy_now(self) -> ReadStrategy:
        """The strategy object: a built-in named is made over the current pools."""
        strategy = self._strategy
        return self._make_strategy(strategy) if isinstance(strategy, str) else strategy

    def _make_strategy(self, name: str) -> ReadStrategy:
        return make_strategy(name, weights=self.config.read_weights, busy=self._pools.in_use)

    # -- lifecycle state -----------------------------------------------

    def _check_open(self) -> None:
        if self._forked:
            self._reopen_forked()
        if self._closed:
            raise self._refused()
        if not self._opened:
            raise ManagerClosed(f"manager {self.name} is not open: call open() or use 'with'")

    @property
    def closed(self) -> bool:
        """True after ``close()``."""
        return self._closed

    def _log_open(self) -> None:
        snap = self._view.snapshot
        logger.info(
            "manager %s open: %d nodes, primary %s, state %s, promotion %s",
            self.name,
            len(self.nodes),
            snap.primary,
            snap.state.value,
            self.config.promotion,
        )

    # -- routing support -----------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        """The latest immutable snapshot of the cluster."""
        if self._forked:
            self._reopen_forked()
        return self._view.snapshot

    @property
    def writable(self) -> bool:
        """False in read-only mode: the primary is lost and none is coming (see
        :func:`~pgfailover.routing.read_only_reason`); writes raise ``ReadOnlyMode`` at once.
        True while a primary takes writes or a promotion is expected (writes wait)."""
        if self._forked:  # a forked child's first request asks this first (Flask)
            self._reopen_forked()
        return self._view.read_only_reason() is None

    def probe_soon(self) -> None:
        """Run the monitor's next probe round now rather than at the interval (an arbiter
        hears from a follower that a node failed; any thread)."""
        self._sup.wake()

    @property
    def promoting(self) -> bool:
        """True while a promotion or switchover runs (on any thread)."""
        return self._sup.actions.promoting

    def writes_held(self) -> bool:
        """True while writes wait for a switchover to move the primary."""
        return self._view.held

    def listen(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` after every change of :attr:`snapshot` (or of writes held).

        It runs on the thread that made the change (the monitor's, or a
        follower's), with no lock held, so it must only hand the news on
        (the arbiter's stream wakes its event loop with it). Returns ``callback``.
        """
        self._listeners.append(callback)
        return self._view.listen(callback)

    def unlisten(self, callback: Callable[[], None]) -> None:
        """Stop calling ``callback`` (see :meth:`listen`)."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(callback)
        self._view.unlisten(callback)

    def suspect(self, node: str, reason: str) -> None:
        """A query found ``node`` gone or read-only: avoid it and probe now.

        For integrations that run statements on their own connections
        (Django, SQLAlchemy): the manager's own queries do it themselves.
        """
        if self._forked:
            self._reopen_forked()
        self._executor.suspect(node, reason)

    def node(self, name: str) -> Node:
        """The configured :class:`Node` called ``name``."""
        try:
            return self._by_name[name]
        except KeyError:
            raise ConfigurationError(
                f"unknown node {name!r} (known: {', '.join(self._by_name)})"
            ) from None

    def _active_primary(self) -> str:
        """The node writes go to now (``get_active_pool``), without waiting.

        Raises:
            NoPrimaryAvailable: there is no primary right now.
        """
        self._check_open()
        primary = write_target(self._view.snapshot, ())
        if primary is None:
            raise NoPrimaryAvailable(
                f"cluster {self.name} has no primary ({self._view.snapshot.state.value})"
            )
        return primary

    # -- blocking admin operations, for threads --------------------------

    def check_health_blocking(self) -> Snapshot:
        """Probe every node now, apply the result, return the snapshot; blocks the calling
        thread (the HTTP API's workers; the managers' ``check_health`` use it)."""
        self._check_open()
        self._sup.rounds.monitor_round(full=True)
        return self._view.snapshot

    def perform_failover_blocking(
        self, target: int | str | None = None, *, force: bool = False, timeout: float = 30.0
    ) -> FailoverEvent:
        """A manual, guarded promotion (``perform_failover``), blocking the calling thread.

        Raises:
            PromotionRefused: a guard refused; its ``guard`` attribute names it.
        """
        self._check_open()
        self._refuse_following("trigger a failover")
        name = standby_named(self._view.snapshot, target) if target is not None else None
        return self._sup.actions.manual_failover(name, force=force, timeout=timeout)

    def _refuse_following(self, what: str) -> None:
        follower = self._sup.follower
        if follower is not None:
            raise PromotionRefused(
                f"manager {self.name} follows {follower.source.shown} and never promotes: "
                f"{what} on the arbiter",
                guard="follower",
            )

    def switchover_blocking(
        self, target: int | str | None = None, *, force: bool = False, timeout: float = 30.0
    ) -> FailoverEvent:
        """A planned switchover (``switchover``), blocking the calling thread.

        Raises:
            PromotionRefused: ``guard`` names why.
        """
        self._check_open()
        self._refuse_following("run a switchover")
        name = standby_named(self._view.snapshot, target) if target is not None else None
        return self._sup.actions.switchover(name, force=force, timeout=timeout)

    # -- maintenance, status, history ------------------------------------

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

    def get_failover_status(self) -> dict[str, Any]:
        """The cluster, every node and the failover counters, as a JSON-ready dict."""
        if self._forked:  # a health check may be a forked worker's first use
            self._reopen_forked()
        status = self._sup.status(self._executor.breakers.report(time.monotonic()))
        status["read_strategy"] = describe(self._executor.strategy)
        return status

    def source_status(self) -> dict[str, Any] | None:
        """What following the source is doing (``None`` without ``source``): ``mode``
        (``following``, ``probing``, ``connecting``), since when, why it probes (or, still
        following, why it will unless a snapshot comes: a broken stream's grace), the
        arbiter followed, the last update's sequence number and time, updates and
        fallbacks."""
        follower = self._sup.follower
        return None if follower is None else follower.status()

    def lease_status(self) -> dict[str, Any] | None:
        """The arbiter lease of ``pgfailover serve --etcd`` (``None`` without one):
        ``held``, the holder, the fencing revision, seconds left, etcd's last error."""
        gate = self._sup.actions.gate
        return None if gate is None else gate.status()

    @property
    def breakers(self) -> Breakers:
        """The nodes' read circuit breakers (:mod:`pgfailover.breaker`)."""
        return self._executor.breakers

    def availability(self) -> dict[str, WindowStats] | None:
        """Fraction of observed time writes were taken, over 1 h, 24 h, 7 d (once open)."""
        if self._forked:
            self._reopen_forked()
        return self._sup.availability_report()

    def upkeep_status(self) -> UpkeepStatus:
        """What ``auto`` mode's upkeep knows: sync policy, settings it could not apply."""
        return self._sup.actions.upkeep.status()

    def get_metrics(self) -> dict[str, Any]:
        """Counters and gauges as a JSON-ready dict."""
        if self._forked:
            self._reopen_forked()
        return self._sup.metrics()

    def history(self) -> list[FailoverEvent]:
        """Failover events, oldest first (newest last)."""
        return self.events.events()

    # -- callbacks -----------------------------------------------------

    def on_failover(self, callback: EventCallback) -> EventCallback:
        """Call ``callback(event)`` when a failover completes, fails or is refused."""
        self._register("failover", callback)
        return callback

    def on_state_change(self, callback: StateCallback) -> StateCallback:
        """Call ``callback(old, new, snapshot)`` on every cluster state change."""
        self._register("state_change", callback)
        return callback

    def on_writable_change(self, callback: WritableCallback) -> WritableCallback:
        """Call ``callback(writable, reason)`` when read-only mode begins or ends."""
        self._register("writable_change", callback)
        return callback

    def on_recovery(self, callback: RecoveryCallback) -> RecoveryCallback:
        """Call ``callback(node_name)`` when an unhealthy node is healthy again."""
        self._register("recovery", callback)
        return callback

    def _register(self, kind: str, callback: Any) -> None:
        wrapped = self._callback(callback)
        self._registered.append((kind, wrapped))  # made again in a forked child
        self._sup.callbacks.add(kind, wrapped)

    def _callback(self, callback: Any) -> Any:
        """How a callback is called from the monitor thread (as it is, here)."""
        return callback

    def __repr__(self) -> str:
        snap = self._view.snapshot
        return (
            f"<{type(self).__name__} {self.name} nodes={[n.name for n in self.nodes]} "
            f"primary={snap.primary} state={snap.state.value}>"
        )
