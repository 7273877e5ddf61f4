"""One probe round, end to end: probe every node, transition, publish, act.

The data path of the manager in one place: :class:`~pgfailover.monitor.ProbeRound`
probes the nodes under one deadline, the pure
:func:`~pgfailover.transition.transition` computes the next immutable
snapshot and the decisions, :class:`~pgfailover.cluster.ClusterView`
publishes the snapshot for routing, and the decisions go to ``act``
(:meth:`FailoverActions.after_round <pgfailover.failover.FailoverActions.after_round>`).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from pgfailover.cluster import ClusterView
from pgfailover.config import FailoverConfig, Node
from pgfailover.counters import Counters
from pgfailover.model import ClusterState, Decision, Snapshot
from pgfailover.monitor import ProbeRound
from pgfailover.probe import ProbeResult
from pgfailover.topology.replay import SourceMismatch, decisions_between, refusal
from pgfailover.transition import transition

__all__ = ["CONFIRM_EVERY", "Rounds"]

CONFIRM_EVERY = 0.25
"""Seconds between a follower's probes of one suspect node (see :meth:`Rounds.confirm`)."""


class Rounds:
    """Runs probe rounds for one cluster and publishes each one's snapshot.

    Locks: ``_lock`` serialises rounds from probe to publish (two rounds
    interleaved would publish their snapshots out of order), and a source's
    snapshots (:meth:`adopt`) with them; a follower's confirmation probes
    run outside it. ``_confirm_lock`` (a leaf) guards when each suspect was
    last confirmed. The view's
    condition is taken inside it (a leaf). A caller may hold the promotion
    lock of :class:`~pgfailover.failover.FailoverActions` while it runs a
    round (the re-probe around a promotion); that lock is never taken
    inside ``_lock``, and ``act`` runs after ``_lock`` is released.

    Thread safety: rounds may be run from any thread (the monitor, a
    ``check_health()`` caller, a writer waiting with no monitor).
    """

    def __init__(
        self,
        nodes: Sequence[Node],
        config: FailoverConfig,
        view: ClusterView,
        counters: Counters,
        act: Callable[[list[Decision]], None],
    ) -> None:
        self._nodes = tuple(nodes)
        self._config = config
        self._view = view
        self._counters = counters
        self._act = act
        self._lock = threading.Lock()
        self._probes: ProbeRound | None = None
        self._last_started = 0.0  # under self._lock: when the previous round began
        self._carried: frozenset[str] = frozenset()  # under self._lock: lost, not yet probed
        # Set by a follower (pgfailover.topology.follower): a source publishes the
        # snapshots, and the monitor's rounds only confirm what queries suspect.
        # Written under _lock (adopt, stop_following), read without it: a stale read
        # costs one round of the other kind.
        self.following = False
        self._source_held = False  # under self._lock: writes held on the source's say
        self._fell_back_at = -math.inf  # under self._lock: monotonic, the last stop_following
        # Following: told of each suspect a confirmation found gone (the follower
        # reports it to the arbiter, which then probes at once).
        self.report_failed: Callable[[str], None] = lambda _node: None
        self._confirm_lock = threading.Lock()  # a leaf: guards _confirmed_at only
        self._confirmed_at: dict[str, float] = {}  # under _confirm_lock: last confirmation

    def open(self) -> None:
        """Create the probers (one dedicated connection per node, made at first use)."""
        if self._probes is None:
            self._probes = ProbeRound(self._nodes, self._config.health_check_timeout)

    def close(self) -> None:
        """Abort running probes and close the probe connections."""
        if self._probes is not None:
            self._probes.close()

    def advance(
        self, patience: float | None = None, holds: Mapping[str, float] | None = None
    ) -> list[Decision]:
        """Probe every node and publish the next snapshot; the decisions, not yet acted on.

        ``patience`` and ``holds``: see :meth:`ProbeRound.run` (the monitor's
        rounds); without them every node gets a fresh verdict
        (``check_health()``, the re-probe around a promotion).
        """
        probes = self._probes
        if probes is None:
            raise RuntimeError("probe rounds are not open")
        with self._lock:
            started = time.time()
            snap = self._view.snapshot
            # A standby promoted onto a new timeline while the old primary
            # hangs: act on it now rather than after the old one's timeout.
            # A writable node on a known timeline (a stale old primary) is not
            # decisive: it must never cut short the current primary's probe.
            results = probes.run(
                patience=patience,
                holds=holds,
                decisive=lambda r: (
                    r.writable
                    and r.node != snap.primary
                    and snap.max_timeline > 0
                    and (r.timeline or 0) > snap.max_timeline
                ),
            )
            for result in results.values():
                self._counters.probe(result.node, result.ok, result.response_time)
            self._counters.bump("probe_rounds")
            results = self._excused(results)
            # Queries that lost a node's connection since the previous round began:
            # one more failed check each, if this round's probe fails too (kept for
            # the next round while the node's probe is still out).
            seen = self._carried | self._view.lost_between(self._last_started, started)
            self._last_started = started
            self._carried = frozenset(n for n in seen if n not in results)
            snap, decisions = transition(snap, results, time.time(), self._config, seen)
            self._view.publish(snap, started, results.keys())
            return decisions

    def _excused(self, results: dict[str, ProbeResult]) -> dict[str, ProbeResult]:
        """The results without the probes whose new session got no answer in time on a
        node where a statement succeeded after they began: that node serves, its new
        sessions are slow (hundreds of followers opening theirs at once, a full
        listen backlog). No news for it. Not excused: a probe of an open session
        that fails (a hang, a black hole stops the statements too), a refusal for
        capacity (:func:`~pgfailover.observe.probed`), and a refused or reset
        connection, which is an answer: a statement "succeeding" after the probe
        began may be a reply the node sent before it died, read late (excused, a
        killed primary's first failed probe kept it up, and the next probe came a
        whole interval later)."""
        return {
            name: result
            for name, result in results.items()
            if result.ok
            or result.busy
            or not result.opening
            or not self._counters.served_since(name, result.started)
        }

    def adopt(self, snap: Snapshot, held: bool) -> list[Decision]:
        """Publish a source's snapshot as if a round had computed it; its decisions.

        Suspects stay suspect (a source's probe times are another host's
        clock): :meth:`confirm` clears them. ``held``: the source holds writes.
        From then on the monitor's rounds only confirm (:attr:`following`).

        Raises:
            SourceMismatch: ``snap`` names other nodes than this manager's, or
                is older than what it knows (:func:`~pgfailover.topology.replay.refusal`).
        """
        with self._lock:
            prev = self._view.snapshot
            problem = refusal(prev, snap)
            if problem is not None:
                raise SourceMismatch(problem)
            if not self.following and self._probes is not None:
                # Back from probing everything: keep no probe backend open.
                self._probes.release([n.name for n in self._nodes])
            self.following = True
            self._source_held = held
            decisions = decisions_between(prev, snap)
            self._view.publish(snap, time.time(), (), held=held)
            return decisions

    def stop_following(self) -> None:
        """The source is unusable: rounds probe every node again, and writes the source
        held are released (only a switchover of this manager's own holds them then)."""
        with self._lock:
            if self.following:
                self._fell_back_at = time.monotonic()
            self.following = False
            if self._source_held:
                self._source_held = False
                self._view.release_writes()

    def confirm(self) -> bool:
        """Following: probe the nodes queries suspect, no other; clear those found fine.

        A node is fine when it answers and, if it is the source's primary,
        takes writes (a fenced old primary in a switchover does not), or when
        it refuses the probe's session for lack of slots (a full server is
        alive: the source's word on it stands, and it is not reported). Only a
        suspect the source still reports up is probed: once the source has
        seen the node fail, routing avoids it anyway, and a dead primary is
        not knocked on by every follower until it returns (when the source
        reports it up again, one probe clears it). Each suspect is probed at
        most every ``CONFIRM_EVERY`` seconds, on a connection closed right
        after, so a follower keeps no probe backend open. Returns True while
        a suspect the source reports up remains (the monitor comes back soon).
        """
        probes = self._probes
        suspects = self._view.suspects
        if probes is None or not suspects:
            return False
        snap, now = self._view.snapshot, time.monotonic()
        pending = {n for n in suspects if snap.node(n).up}  # the source has not seen it fail
        if not pending:
            return False  # routing avoids them through the snapshot: nothing to hurry
        with self._confirm_lock:
            due = {n for n in pending if now - self._confirmed_at.get(n, 0.0) >= CONFIRM_EVERY}
            self._confirmed_at.update(dict.fromkeys(due, now))
        if due:
            # Not under the round lock: a probe hanging on a black-holed node must
            # not hold up the source's next snapshot (adopt), which names the new primary.
            started = time.time()
            results = probes.run(only=due)
            probes.release(due)
            snap = self._view.snapshot
            for result in results.values():
                self._counters.probe(result.node, result.ok, result.response_time)
            fine = [r.node for r in results.values() if (r.ok and _fine(r, snap)) or r.busy]
            if fine:
                self._view.confirmed(fine, started)
            for result in results.values():
                if not result.ok and not result.busy:
                    self.report_failed(result.node)
        return bool(pending & self._view.suspects)

    def monitor_round(self, *, full: bool = False) -> bool:
        """One round, acted on. Returns True while the monitor should probe fast.

        The monitor's rounds are patient with stragglers (see
        :class:`ProbeRound`); a ``full`` round gives every node a verdict.
        While a source is followed, a round only confirms suspects
        (:meth:`confirm`) unless it is ``full`` (``check_health()``).
        """
        if self._view.closed or self._probes is None:
            return False
        if self.following and not full:
            return self.confirm()
        cfg = self._config
        patience = None if full else min(cfg.health_check_timeout, max(0.1, 2 * cfg.fast_interval))
        self._act(self.advance(patience, None if full else self._holds()))
        if self.following:  # check_health() while following: keep no probe backend open
            self._probes.release([n.name for n in self._nodes])
        return self.fast(self._view.snapshot)

    def _holds(self) -> dict[str, float]:
        """How long each node's new probe may take to open its session, where that is
        longer than the probe's timeout: ``unhealthy_threshold`` health-check
        intervals (3 s by default),

        - for every node, in that long after a follower fell back from its
          source: every follower of it opens its sessions at once, and a server
          slow to accept hundreds of them is not a dead one (the source's last
          word on each node stands meanwhile);
        - for a node already given up: its recovery is seen up to that much
          later, but a slow server is no longer abandoned mid-handshake and
          asked again at every round, which kept an overloaded one overloaded.

        A refusal, a reset or a failed query still count at once.
        """
        cfg = self._config
        hold = cfg.unhealthy_threshold * cfg.health_check_interval
        with self._lock:
            fell_back_at = self._fell_back_at
        if time.monotonic() - fell_back_at < hold:
            return {n.name: hold for n in self._nodes}
        snap = self._view.snapshot
        return {n.name: hold for n in snap.nodes if n.checked and not n.healthy}

    def fast(self, snap: Snapshot) -> bool:
        """Probe fast: the primary is in doubt (or its probe is still out), or standbys converge.

        Right after a failover, until every standby up follows the new
        primary, a second loss in that window must find them on the new
        timeline.
        """
        converging = snap.state is ClusterState.FAILOVER_COMPLETE and any(
            n.follows is False for n in snap.nodes if n.up and n.name != snap.primary
        )
        pending = self._probes.pending() if self._probes is not None else frozenset()
        return (
            snap.in_doubt or converging or (snap.primary is not None and snap.primary in pending)
        )


def _fine(result: ProbeResult, snap: Snapshot) -> bool:
    """A confirmation clears a suspect: a standby that answers, or the source's primary
    taking writes on the newest timeline (not a fenced or stale old primary)."""
    if result.node != snap.primary:
        return True
    return result.writable and (result.timeline or 0) >= snap.max_timeline
