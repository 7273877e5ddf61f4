"""One failover's record: the event from detection to the first write on the new primary.

An incident opens when the primary is lost (or a promotion starts), gathers
what happens (who took over, notes, the data-loss estimate), completes when
writes switch to the new primary, and closes its clock at the first write
the new primary acknowledges through this manager. There is at most one open
incident; everything that records a failover asks :class:`Incident`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from pgfailover.counters import Counters
from pgfailover.events import EventLog, FailoverEvent
from pgfailover.model import ClusterState, Snapshot, StateChanged, SwitchPrimary

__all__ = ["Incident"]

logger = logging.getLogger(__name__)

_STATE_LEVEL = {
    ClusterState.HEALTHY: logging.INFO,
    ClusterState.DEGRADED: logging.WARNING,
    ClusterState.RECOVERY_IN_PROGRESS: logging.INFO,
    ClusterState.FAILOVER_IN_PROGRESS: logging.WARNING,
    ClusterState.FAILOVER_COMPLETE: logging.WARNING,
    ClusterState.UNKNOWN: logging.ERROR,
    ClusterState.SPLIT_BRAIN: logging.ERROR,
}


class Incident:
    """The open failover event and the first-write clock.

    Locks: ``_lock`` guards the two fields below; the event log's own lock
    may be taken under it (never the other way round).

    Thread safety: every method may be called from any thread.
    """

    def __init__(
        self, events: EventLog, counters: Counters, snapshot: Callable[[], Snapshot]
    ) -> None:
        self._events = events
        self._stats = counters
        self._snapshot = snapshot
        self._lock = threading.Lock()
        self._event_id: str | None = None  # guarded by self._lock: the open event
        self._first_write: tuple[str, str, float] | None = None  # guarded by self._lock

    def open(self, previous: str | None, reason: str) -> tuple[FailoverEvent, bool]:
        """The open event, recorded now if none is open; True when it is new."""
        with self._lock:
            if self._event_id is not None:
                current = self._events.get(self._event_id)
                if current is not None and current.outcome == "in_progress":
                    return current, False
            started = self._snapshot().failover.started_at or time.time()
            event = FailoverEvent("failover", previous, None, reason, started)
            self._event_id = event.id
            return self._events.record(event), True

    @staticmethod
    def state_changed(cluster: str, change: StateChanged, primary: str | None) -> None:
        """Log a change of the cluster's state, at the level it deserves."""
        logger.log(
            _STATE_LEVEL[change.new],
            "cluster %s: %s -> %s (primary %s)",
            cluster,
            change.old.value,
            change.new.value,
            primary,
        )

    def start(self, cluster: str, previous: str | None, reason: str) -> FailoverEvent:
        """:meth:`open`, saying so in the log when the event is new."""
        event, new = self.open(previous, reason)
        if new:
            logger.warning("cluster %s: failover started: %s", cluster, reason)
        return event

    def split_brain(self, cluster: str, nodes: tuple[str, ...]) -> None:
        """Several nodes take writes on one timeline: logged and recorded (writes are
        refused by the routing, not here)."""
        shown = ", ".join(nodes)
        logger.error("cluster %s: SPLIT BRAIN between %s: writes refused", cluster, shown)
        self._events.record(
            FailoverEvent(
                "split_brain",
                None,
                None,
                f"writable on one timeline: {shown}",
                time.time(),
                outcome="detected",
            )
        )

    def resolve(self, node: str, note: str) -> FailoverEvent | None:
        """The primary came back before anything was promoted: end the open event.

        Its outcome is ``completed`` with ``to`` the same node, and a note
        saying so (a client-only partition that healed, a restart).
        """
        with self._lock:
            event_id, self._event_id = self._event_id, None
        if event_id is None:
            return None
        current = self._events.get(event_id)
        if current is None or current.outcome != "in_progress":
            return None
        return self._events.update(
            event_id,
            to_node=node,
            completed=time.time(),
            outcome="completed",
            notes=(*current.notes, note),
        )

    def fail(self, event_id: str, notes: tuple[str, ...]) -> FailoverEvent | None:
        """The promotion of the open incident failed; ``notes`` are added to the event's."""
        with self._lock:
            self._event_id = None
        self._events.append_notes(event_id, notes)
        return self._events.update(event_id, outcome="failed", completed=time.time())

    def switched(self, cluster: str, decision: SwitchPrimary) -> FailoverEvent | None:
        """Writes switched to ``decision.node``: the completed failover event (for the
        callbacks), or ``None`` when the primary itself answered again (the open event,
        if any, is resolved: nothing was promoted). Logged and counted here."""
        node, previous = decision.node, decision.previous
        if previous is None or previous == node:
            logger.info("cluster %s: primary is %s (%s)", cluster, node, decision.reason)
            self.resolve(node, f"{node} answered again: nothing was promoted")
            return None
        event = self.complete(node, previous, decision.reason, decision.lost_lsn)
        self._stats.bump("failovers")
        logger.warning(
            "cluster %s: failover complete: writes go to %s (was %s) after %.3fs",
            cluster,
            node,
            previous,
            event.duration or 0.0,
        )
        return event

    def complete(
        self, node: str, previous: str, reason: str, lost_lsn: int | None
    ) -> FailoverEvent:
        """Writes switched to ``node``: complete the event, observe its duration, start the
        first-write clock.

        ``lost_lsn`` is the furthest WAL the previous primary was known to
        hold; what ``node`` held when it took over is subtracted from it.
        """
        event, _ = self.open(previous, reason)
        snap = self._snapshot()
        changes: dict[str, Any] = {
            "to_node": node,
            "completed": time.time(),
            "outcome": "completed",
        }
        if event.data_loss_bytes is None and lost_lsn is not None:
            position = self._position_before(snap, node)
            changes["data_loss_bytes"] = None if position is None else max(0, lost_lsn - position)
        event = self._events.update(event.id, **changes) or event
        with self._lock:
            self._event_id = None
            self._first_write = (event.id, node, event.started)
        # Every completed failover is observed (an arbiter without writes too);
        # the first write, when this process makes one, is on the event.
        self._stats.failover_took(changes["completed"] - event.started)
        return event

    @staticmethod
    def _position_before(snap: Snapshot, node: str) -> int | None:
        """How much WAL ``node`` held when it took over (its position at the fork)."""
        state = snap.node(node)
        fork = snap.fork_lsn if snap.fork_timeline == state.timeline else None
        return fork if fork is not None else state.position

    def wrote(self, node: str) -> None:
        """A write was acknowledged by ``node``: close the failover clock."""
        pending = self._first_write
        if pending is None or pending[1] != node:
            return  # the common case, without the lock
        with self._lock:
            if self._first_write != pending:
                return
            self._first_write = None
        event_id, _, started = pending
        self._events.update(event_id, first_write_after=time.time() - started)
