"""Watching one cluster and acting on it: probe rounds, the monitor thread, decisions.

:class:`Supervisor` owns everything the manager does on its own initiative:
the published :class:`~pgfailover.cluster.ClusterView`, the probe
:class:`~pgfailover.rounds.Rounds` and the ``pgfailover-monitor`` thread
that runs them, the :class:`~pgfailover.failover.FailoverActions` that apply
each round's decisions, the event log, the counters and the application's
callbacks. It knows nothing of the application's connection pools beyond
``abort`` (unblock the statements in flight on a lost node), so the
manager's query side (:class:`~pgfailover.execution.Executor` over
:class:`~pgfailover.pools.NodePools`) is built beside it, not inside it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from pgfailover.availability import KEPT, Availability, WindowStats, writes_taken
from pgfailover.cluster import ClusterView
from pgfailover.config import FailoverConfig, Node
from pgfailover.counters import Counters
from pgfailover.derive import foreign_nodes
from pgfailover.errors import ConfigurationError
from pgfailover.events import Callbacks, EventLog
from pgfailover.failover import FailoverActions
from pgfailover.historyfile import compact
from pgfailover.model import Decision, Snapshot
from pgfailover.monitor import Monitor
from pgfailover.promote import PromotionGate
from pgfailover.report import failover_status, metrics_dict
from pgfailover.rounds import Rounds
from pgfailover.routing import read_only_reason
from pgfailover.topology.build import build_source
from pgfailover.topology.follower import Follower
from pgfailover.transition import initial_snapshot

__all__ = ["Supervisor"]

logger = logging.getLogger(__name__)


class Supervisor:
    """Probes one cluster, publishes what it finds, and acts on it.

    Thread safety: :meth:`wake` and :meth:`probe_if_idle` may be called from
    any thread; :meth:`open`, :meth:`start_monitor`, :meth:`stop_monitor` and
    :meth:`close` by the owner. The class owns no lock; its parts document
    theirs (the promotion lock of ``FailoverActions`` → the round lock of
    ``Rounds`` → the view's condition).
    """

    def __init__(
        self,
        nodes: Sequence[Node],
        config: FailoverConfig,
        name: str,
        *,
        dsn: Callable[[str], str],
        abort: Callable[[str], object],
        busy: Callable[[str], int],
        on_round: Callable[[Snapshot], None] = lambda _snap: None,
        gate: PromotionGate | None = None,
        replication_dsn: Callable[[str], str] | None = None,
    ) -> None:
        self.name = name
        self._on_round = on_round  # the query side's per-round upkeep (circuit breakers)
        self.config = config
        self.counters = Counters()
        if config.history_file is not None:  # before reading it: a week of lines at most
            compact(
                config.history_file, keep_events=config.history_size, keep_since=time.time() - KEPT
            )
        self.events = EventLog(config.history_size, config.history_file)
        self.callbacks = Callbacks()
        self.view = ClusterView(
            name,
            initial_snapshot(nodes, time.time()),
            config.failover_wait_timeout,
            read_only=lambda snap: read_only_reason(
                snap, config.promotion, self.actions.maintenance.paused_since is not None
            ),
        )
        self.actions = FailoverActions(
            view=self.view,
            config=config,
            events=self.events,
            counters=self.counters,
            dsn=dsn,
            reprobe=self._reprobe,
            abort=abort,
            busy=busy,
            wake=self.wake,
            emit=self.callbacks.emit,
            gate=gate,
            replication_dsn=replication_dsn,
        )
        self.rounds = Rounds(nodes, config, self.view, self.counters, self._after_round)
        self.availability: Availability | None = None  # set once by open()
        self._monitor: Monitor | None = None
        self.follower: Follower | None = None
        if config.source is not None:
            self.follower = Follower(build_source(config, nodes, name), self, name=name)
            self.rounds.report_failed = self.follower.report

    def adopt(self, snap: Snapshot, held: bool) -> None:
        """A source's snapshot: publish it and act on it as on a round's (the follower's thread).

        Raises:
            SourceMismatch: other nodes than this manager's, or an older snapshot.
        """
        self._after_round(self.rounds.adopt(snap, held))

    def probe_again(self) -> None:
        """The source is unusable: the monitor probes every node again, from now."""
        self.rounds.stop_following()
        self.wake()

    def _reprobe(self) -> list[Decision]:
        return self.rounds.advance()

    def _after_round(self, decisions: list[Decision]) -> None:
        """Act on a round's decisions; note whether the cluster took writes before and after
        (a promotion within the round, ``auto`` mode's, would hide the outage otherwise)."""
        self._observe()
        self.actions.after_round(decisions)
        self._on_round(self.view.snapshot)
        self._observe()

    def _observe(self) -> None:
        ledger = self.availability
        if ledger is not None:
            writable, reason, since = writes_taken(self.view.snapshot)
            ledger.observe(writable, time.time(), reason, since)

    def open(self) -> None:
        """Probe every node once and act on it, unless a node belongs to another cluster.

        Raises:
            ConfigurationError: a node's system identifier is another
                cluster's; nothing was changed anywhere.
        """
        self.rounds.open()
        follower = self.follower
        if follower is not None:
            # A follower's first snapshot comes from the source; it probes only if
            # none comes within the time it would wait for a silent source.
            self.availability = Availability(self.config.history_file, now=time.time())
            follower.start()
            if follower.wait_first(follower.source.silence):
                self._check_members()
                return
        # The first round's decisions wait for the membership check: a
        # manager pointed at the wrong cluster must change nothing.
        decisions = self.rounds.advance()
        self._check_members()
        # From the first round on: before it, nothing was observed.
        if self.availability is None:
            self.availability = Availability(self.config.history_file, now=time.time())
        self._after_round(decisions)

    def _check_members(self) -> None:
        foreign = foreign_nodes(self.view.snapshot)
        if foreign:
            raise ConfigurationError(f"manager {self.name}: {foreign[0]}")

    def start_monitor(self) -> None:
        """Start the ``pgfailover-monitor`` thread (once)."""
        if self._monitor is not None and self._monitor.running:
            return
        self._monitor = Monitor(
            self.rounds,
            interval=self.config.health_check_interval,
            fast_interval=self.config.fast_interval,
            name=f"pgfailover-monitor-{self.name}",
        )
        self._monitor.start()

    def stop_monitor(self, timeout: float) -> None:
        """Stop the monitor thread; the last snapshot stays published."""
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.stop(timeout)

    def wake(self) -> None:
        """Ask the monitor for a probe round now."""
        monitor = self._monitor
        if monitor is not None:
            monitor.wake()

    def monitoring(self) -> bool:
        """True while the monitor thread runs (no caller needs to probe for it)."""
        monitor = self._monitor
        return monitor is not None and monitor.running

    def probe_if_idle(self) -> None:
        """A writer waits for a primary and no monitor thread runs: probe from its thread."""
        monitor = self._monitor
        if monitor is None or not monitor.running:
            self.rounds.monitor_round()

    def status(self, breakers: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """The status report (``get_failover_status()``); ``breakers``: the read breakers."""
        status = failover_status(
            self.name,
            self.view.snapshot,
            self.config,
            self.actions.upkeep.status(),
            paused_since=self.actions.maintenance.paused_since,
            read_only=self.view.read_only_reason(),
            breakers=breakers,
            availability=self.availability_report(),
        )
        maintenance = self.actions.maintenance
        status["maintenance"]["reason"] = maintenance.reason
        status["maintenance"]["shared"] = "etcd" if maintenance.shared else None
        if self.follower is not None:
            status["source"] = self.follower.status()
        if self.actions.gate is not None:
            status["lease"] = self.actions.gate.status()
        return status

    def availability_report(self) -> dict[str, WindowStats] | None:
        """Availability over 1 h, 24 h and 7 d (``None`` before the first round)."""
        ledger = self.availability
        return None if ledger is None else ledger.report(time.time())

    def metrics(self) -> dict[str, Any]:
        """The counters and gauges (``get_metrics()``)."""
        data = metrics_dict(self.name, self.view.snapshot, self.config, self.counters)
        data["maintenance_paused"] = int(self.actions.maintenance.paused_since is not None)
        follower = self.follower
        if follower is not None:
            source = follower.status()
            data["source_following"] = int(source["mode"] == "following")
            data["source_updates"] = source["updates"]
            data["source_fallbacks"] = source["fallbacks"]
        if self.actions.gate is not None:
            data["arbiter_lease_held"] = int(bool(self.actions.gate.status().get("held")))
        return data

    def close(self, deadline: float) -> None:
        """Stop watching: the monitor, then any promotion in progress, then the probes.

        The view is closed first by the owner (waiters get ``ManagerClosed``);
        a promotion started on any thread is finished, repointing included,
        so the cluster is never left with sync names nobody satisfies.
        """
        self.view.close()
        if self.follower is not None:
            self.follower.close(max(0.1, 0.4 * (deadline - time.monotonic())))
        self.stop_monitor(max(0.1, 0.8 * (deadline - time.monotonic())))
        if not self.actions.wait_repointed(max(0.1, deadline - time.monotonic())):
            logger.warning("manager %s: a promotion still runs at close", self.name)
        self.rounds.close()
        if self.availability is not None:
            self.availability.close(time.time())
