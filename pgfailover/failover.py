"""Applying the state machine's decisions: events, promotion, fencing.

:class:`FailoverActions` is the manager's hands. It logs state changes, keeps
the failover event of the current incident, promotes in ``auto`` mode (after
re-probing every node, so a primary that reappeared is never doubled), runs
the manual trigger, soft-fences stale old primaries, and after a promotion
keeps the new primary usable: ``synchronous_standby_names`` is rewritten for
the standbys that will follow it, and those standbys are repointed.

Promotion order matters on PostgreSQL 15: reloading a standby's config just
before ``pg_promote`` was seen to stall the promotion by
``wal_retrieve_retry_interval`` (5 s). So the candidate is promoted first,
untouched; only then is the new primary's config changed and reloaded, and
the other standbys repointed.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

import psycopg

from pgfailover.errors import PgFailoverError, PromotionRefused
from pgfailover.events import FailoverEvent
from pgfailover.model import (
    ClusterState,
    Decision,
    FailoverStarted,
    Fence,
    NodeLost,
    NodeRecovered,
    Promote,
    Role,
    Snapshot,
    SplitBrainDetected,
    StateChanged,
    SwitchPrimary,
)
from pgfailover.promotion import (
    Candidate,
    StandbyLink,
    choose_candidate,
    fence_node,
    promote_node,
    read_standby_link,
    repoint_standby,
    rewrite_sync_names,
    set_sync_standby_names,
    streaming_standbys,
)

if TYPE_CHECKING:
    from pgfailover.manager import FailoverManager

__all__ = ["FailoverActions"]

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
_FENCE_RETRY = 10.0


class FailoverActions:
    """Applies decisions for one manager.

    Thread safety: :meth:`apply` runs on the monitor thread or on a thread
    calling ``check_health``; promotions are serialised by ``_promote_lock``.
    """

    def __init__(self, manager: FailoverManager) -> None:
        self._mgr = manager
        self._lock = threading.Lock()
        self._event_id: str | None = None  # guarded by self._lock: the open failover event
        self._first_write: tuple[str, str, float] | None = None  # guarded by self._lock
        self._fenced_at: dict[str, float] = {}  # guarded by self._lock
        self._promote_lock = threading.Lock()
        self._promotion_paused_until = 0.0  # guarded by self._promote_lock
        self._repointing: list[threading.Thread] = []  # guarded by self._lock

    # -- decisions -------------------------------------------------------

    def apply(self, decisions: list[Decision]) -> None:
        """Apply one round's decisions, in order."""
        mgr = self._mgr
        for decision in decisions:
            if isinstance(decision, StateChanged):
                snap = mgr.snapshot
                logger.log(
                    _STATE_LEVEL[decision.new],
                    "cluster %s: %s -> %s (primary %s)",
                    mgr.name,
                    decision.old.value,
                    decision.new.value,
                    snap.primary,
                )
                mgr._emit("state_change", decision.old, decision.new, snap)
            elif isinstance(decision, NodeLost):
                logger.warning("node %s unhealthy: %s", decision.node, decision.error)
            elif isinstance(decision, NodeRecovered):
                logger.info("node %s healthy again", decision.node)
                mgr.stats.bump("recoveries")
                mgr._emit("recovery", decision.node)
            elif isinstance(decision, FailoverStarted):
                self._open_event(decision.previous, decision.reason)
                if decision.previous is not None:
                    mgr.abort_inflight(decision.previous)
            elif isinstance(decision, SwitchPrimary):
                self._switched(decision)
            elif isinstance(decision, SplitBrainDetected):
                logger.error(
                    "cluster %s: SPLIT BRAIN between %s: writes refused",
                    mgr.name,
                    ", ".join(decision.nodes),
                )
                mgr.events.record(
                    FailoverEvent(
                        "split_brain",
                        None,
                        None,
                        f"writable on one timeline: {', '.join(decision.nodes)}",
                        time.time(),
                        outcome="detected",
                    )
                )
            elif isinstance(decision, Fence):
                self._fence(decision.node, decision.reason)
            elif isinstance(decision, Promote):
                self._auto_promote(decision)

    def _open_event(self, previous: str | None, reason: str) -> FailoverEvent:
        with self._lock:
            if self._event_id is not None:
                current = next(
                    (e for e in self._mgr.events.events() if e.id == self._event_id), None
                )
                if current is not None and current.outcome == "in_progress":
                    return current
            snap = self._mgr.snapshot
            event = FailoverEvent(
                "failover", previous, None, reason, snap.failover_started_at or time.time()
            )
            self._event_id = event.id
        logger.warning("cluster %s: failover started: %s", self._mgr.name, reason)
        return self._mgr.events.record(event)

    def _switched(self, decision: SwitchPrimary) -> None:
        mgr = self._mgr
        if decision.previous is None or decision.previous == decision.node:
            logger.info("cluster %s: primary is %s (%s)", mgr.name, decision.node, decision.reason)
            with self._lock:
                self._event_id = None
            return
        mgr.abort_inflight(decision.previous)
        snap = mgr.snapshot
        event = self._open_event(decision.previous, decision.reason)
        loss = None
        if snap.last_primary_lsn is not None:
            position = snap.node(decision.node).position
            loss = None if position is None else max(0, (snap.last_primary_lsn or 0) - position)
        event = (
            mgr.events.update(
                event.id,
                to_node=decision.node,
                completed=time.time(),
                outcome="completed",
                data_loss_bytes=event.data_loss_bytes
                if event.data_loss_bytes is not None
                else loss,
            )
            or event
        )
        with self._lock:
            self._event_id = None
            self._first_write = (event.id, decision.node, event.started)
        mgr.stats.bump("failovers")
        logger.warning(
            "cluster %s: failover complete: writes go to %s (was %s) after %.3fs",
            mgr.name,
            decision.node,
            decision.previous,
            event.duration or 0.0,
        )
        mgr._emit("failover", event)

    def wrote(self, node: str) -> None:
        """A write was acknowledged by ``node``: close the failover clock."""
        pending = self._first_write
        if pending is None or pending[1] != node:
            return
        with self._lock:
            if self._first_write != pending:
                return
            self._first_write = None
        event_id, _, started = pending
        elapsed = time.time() - started
        self._mgr.stats.failover_took(elapsed)
        self._mgr.events.update(event_id, first_write_after=elapsed)

    # -- fencing ---------------------------------------------------------

    def _fence(self, node: str, reason: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._fenced_at.get(node, -_FENCE_RETRY) < _FENCE_RETRY:
                return
            self._fenced_at[node] = now
        timeout = self._mgr.config.health_check_timeout * 2
        try:
            fence_node(self._mgr.node(node).dsn, timeout)
        except psycopg.Error as exc:
            logger.error("node %s: soft fence failed: %s", node, exc)
            return
        logger.warning(
            "node %s soft-fenced (default_transaction_read_only = on): %s", node, reason
        )
        self._mgr.events.record(
            FailoverEvent(
                "fence",
                node,
                None,
                reason,
                time.time(),
                completed=time.time(),
                outcome="completed",
            )
        )

    # -- promotion -------------------------------------------------------

    def _auto_promote(self, decision: Promote) -> None:
        mgr = self._mgr
        with self._promote_lock:
            if time.monotonic() < self._promotion_paused_until:
                return
            # Re-probe every node just before acting: a primary that came
            # back, or another manager's promotion, cancels ours.
            decisions = mgr._probe_and_advance()
            promotes = [d for d in decisions if isinstance(d, Promote)]
            self.apply([d for d in decisions if not isinstance(d, Promote)])
            if not promotes:
                snap = mgr.snapshot
                logger.warning(
                    "cluster %s: promotion of %s called off after re-probe (%s)",
                    mgr.name,
                    decision.node,
                    snap.promotion_blocked or snap.state.value,
                )
                return
            chosen = promotes[0]
            try:
                self._promote(chosen.node, chosen.previous, chosen.reason, chosen.lag_bytes, None)
            except (PgFailoverError, psycopg.Error) as exc:
                pause = mgr.config.health_check_interval * mgr.config.unhealthy_threshold
                self._promotion_paused_until = time.monotonic() + pause
                logger.error(
                    "cluster %s: promoting %s failed: %s (next attempt in %.1fs)",
                    mgr.name,
                    chosen.node,
                    exc,
                    pause,
                )

    def manual_failover(self, target: str | None, *, force: bool) -> FailoverEvent:
        """The manual trigger: guards, optional fence, promotion."""
        mgr = self._mgr
        with self._promote_lock:
            decisions = mgr._probe_and_advance()
            self.apply([d for d in decisions if not isinstance(d, Promote)])
            snap = mgr.snapshot
            choice = choose_candidate(snap, mgr.config, time.time(), target=target, force=force)
            if not isinstance(choice, Candidate):
                message = (
                    f"failover refused by guard {choice.guard}: {choice.reason}; {choice.override}"
                )
                event = mgr.events.record(
                    FailoverEvent(
                        "failover",
                        snap.primary or snap.last_primary,
                        target,
                        message,
                        time.time(),
                        completed=time.time(),
                        outcome="refused",
                    )
                )
                mgr._emit("failover", event)
                raise PromotionRefused(message, guard=choice.guard)
            fence = snap.primary if snap.primary and snap.node(snap.primary).up else None
            reason = f"manual trigger{' (forced)' if force else ''}: {choice.reason}"
            return self._promote(
                choice.node, snap.primary or snap.last_primary, reason, choice.lag_bytes, fence
            )

    def _promote(
        self, target: str, previous: str | None, reason: str, lag: int | None, fence: str | None
    ) -> FailoverEvent:
        mgr = self._mgr
        cfg = mgr.config
        timeout = max(2.0, cfg.health_check_timeout * 2)
        snap = mgr.snapshot
        event = self._open_event(previous, reason)
        event = (
            mgr.events.update(
                event.id,
                kind="switchover" if fence else "failover",
                to_node=target,
                promoted_by="pgfailover",
                data_loss_bytes=lag,
                reason=reason,
            )
            or event
        )
        notes: list[str] = []
        if fence is not None:
            try:
                fence_node(mgr.node(fence).dsn, timeout)
                notes.append(f"old primary {fence} soft-fenced before promotion")
            except psycopg.Error as exc:
                notes.append(f"could not fence old primary {fence}: {exc}")
        survivors = self._survivor_links(snap, target, timeout, notes)
        logger.warning("cluster %s: promoting %s (%s)", mgr.name, target, reason)
        started = time.monotonic()
        try:
            promote_node(mgr.node(target).dsn)
        except (PgFailoverError, psycopg.Error) as exc:
            mgr.stats.bump("promotion_failures")
            failed = mgr.events.update(
                event.id,
                outcome="failed",
                completed=time.time(),
                notes=(*notes, f"pg_promote failed: {exc}"),
            )
            with self._lock:
                self._event_id = None
            if failed is not None:
                mgr._emit("failover", failed)
            raise
        mgr.stats.bump("promotions")
        logger.warning("node %s promoted in %.3fs", target, time.monotonic() - started)
        original = self._original_sync_names(snap, target)
        names = [link.application_name for _, link in survivors]
        new_sync, note = rewrite_sync_names(original, names)
        if note:
            notes.append(note)
        current = snap.node(target).sync_standby_names or ""
        if new_sync != current:
            try:
                set_sync_standby_names(mgr.node(target).dsn, new_sync, timeout)
                notes.append(f"synchronous_standby_names on {target}: {new_sync!r}")
            except psycopg.Error as exc:
                notes.append(f"could not set synchronous_standby_names on {target}: {exc}")
        if notes:
            mgr.events.update(event.id, notes=tuple(notes))
        # Probe now so that writes switch without waiting for the interval.
        self.apply(mgr._probe_and_advance())
        if survivors and cfg.repoint_standbys:
            thread = threading.Thread(
                target=self._repoint,
                args=(target, survivors, new_sync, event.id),
                name=f"pgfailover-repoint-{mgr.name}",
                daemon=True,
            )
            with self._lock:
                self._repointing = [t for t in self._repointing if t.is_alive()] + [thread]
            thread.start()
        return next((e for e in mgr.events.events() if e.id == event.id), event)

    def wait_repointed(self, timeout: float) -> bool:
        """Wait for background repointing after a promotion; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._repointing)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    def _survivor_links(
        self, snap: Snapshot, target: str, timeout: float, notes: list[str]
    ) -> list[tuple[str, StandbyLink]]:
        """The standbys that should follow ``target``, and how they connect now."""
        links = []
        for node in snap.nodes:
            if node.name == target or node.role is not Role.STANDBY or not node.up:
                continue
            try:
                links.append(
                    (
                        node.name,
                        read_standby_link(self._mgr.node(node.name).dsn, node.name, timeout),
                    )
                )
            except psycopg.Error as exc:
                notes.append(f"cannot read {node.name}'s primary_conninfo: {exc}")
        return links

    @staticmethod
    def _original_sync_names(snap: Snapshot, target: str) -> str:
        if snap.last_primary is not None:
            seen = snap.node(snap.last_primary).sync_standby_names
            if seen is not None:
                return seen
        return snap.node(target).sync_standby_names or ""

    def _repoint(
        self, target: str, survivors: list[tuple[str, StandbyLink]], sync: str, event_id: str
    ) -> None:
        """Repoint the surviving standbys; lower quorum sync if none attaches."""
        mgr = self._mgr
        cfg = mgr.config
        timeout = max(2.0, cfg.health_check_timeout * 2)
        new_dsn = mgr.node(target).dsn
        notes: list[str] = []
        for name, link in survivors:
            try:
                repoint_standby(mgr.node(name).dsn, link, new_dsn, new_dsn, timeout)
                notes.append(f"{name} repointed to {target}")
            except psycopg.Error as exc:
                notes.append(f"could not repoint {name}: {exc}")
                logger.error("node %s: repointing to %s failed: %s", name, target, exc)
        wanted = {link.application_name for _, link in survivors}
        deadline = time.monotonic() + cfg.sync_standby_attach_timeout
        attached: set[str] = set()
        while time.monotonic() < deadline and not mgr.closed:
            try:
                attached = streaming_standbys(new_dsn, timeout) & wanted
            except psycopg.Error:
                attached = set()
            if attached == wanted:
                break
            mgr.wait_for_change(0.05)
        notes.append(f"streaming from {target}: {', '.join(sorted(attached)) or 'none'}")
        if sync and not attached:
            try:
                set_sync_standby_names(new_dsn, "", timeout)
                notes.append("no standby attached in time: synchronous replication off")
                logger.error(
                    "cluster %s: no standby follows %s: commits are async now", mgr.name, target
                )
            except psycopg.Error as exc:
                notes.append(f"could not lower synchronous_standby_names: {exc}")
        current = next((e for e in mgr.events.events() if e.id == event_id), None)
        if current is not None:
            mgr.events.update(event_id, notes=(*current.notes, *notes))
        mgr.wake()
