"""Applying the state machine's decisions: events, promotion, fencing.

:class:`FailoverActions` is the manager's hands. It logs state changes, keeps
the failover event of the current incident, promotes in ``auto`` mode (after
re-probing every node, so a primary that reappeared is never doubled), runs
the manual trigger, soft-fences stale old primaries, and after a promotion
makes the new primary usable at once: ``synchronous_standby_names`` is
rewritten for the standbys that will follow it and those standbys are
repointed, in the same call, so that ``close()`` (which waits for it) never
leaves half a promotion behind. What must converge later (a standby that
attaches late or never, sync names, a node rejoined hours later) is
:mod:`pgfailover.upkeep`'s job, after every round.

One rule for promotions: :meth:`FailoverActions.apply` never promotes; only
:meth:`FailoverActions.after_round` (an ``auto`` decision, at the top of the
monitor's round) and :meth:`FailoverActions.manual_failover` do, each under
``_promote_lock``. So no path can re-enter a promotion from inside one.

Callbacks are queued while decisions are applied and run by
:meth:`FailoverActions.flush_callbacks` once every lock is released, so a
callback may call ``perform_failover()`` or ``check_health()``.

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

from pgfailover.admin import (
    StandbyLink,
    fence_node,
    promote_node,
    read_standby_link,
    repoint_standby,
    set_sync_standby_names,
)
from pgfailover.errors import ManagerClosed, PgFailoverError, PromotionRefused
from pgfailover.events import FailoverEvent
from pgfailover.guards import Candidate, choose_candidate
from pgfailover.incident import Incident
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
from pgfailover.syncrep import rewrite_sync_names
from pgfailover.upkeep import Upkeep

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

    Locks, in the order they may be taken: ``_promote_lock`` (one promotion
    at a time, auto or manual; held across ``pg_promote``, the sync names
    and repointing) → the manager's round lock (a re-probe) → the
    incident's lock → the event log's lock. Upkeep runs only while no
    promotion does, under its own ``_run_lock`` (never held with the
    promotion lock). ``_lock`` (fence times) and ``_callbacks_lock`` (the
    callback queue) are leaves. No callback runs
    while any of them is held.

    Thread safety: :meth:`after_round` runs on the monitor thread or on a
    thread calling ``check_health``; :meth:`manual_failover` on any thread.
    """

    def __init__(self, manager: FailoverManager) -> None:
        self._mgr = manager
        self._lock = threading.Lock()
        self.incident = Incident(manager.events, manager.counters, lambda: manager.snapshot)
        self._fenced_at: dict[str, float] = {}  # guarded by self._lock
        self._promote_lock = threading.Lock()
        self._promotion_paused_until = 0.0  # guarded by self._promote_lock
        self._callbacks_lock = threading.Lock()
        self._pending: list[tuple[str, tuple[object, ...]]] = []  # guarded by _callbacks_lock
        self.upkeep = Upkeep(
            manager.config,
            lambda name: manager.node(name).dsn,
            manager.events,
            lambda: manager.counters.bump("sync_lowered"),
            manager.name,
        )

    # -- one round ---------------------------------------------------------

    def after_round(self, decisions: list[Decision]) -> None:
        """Apply a round's decisions, promote if ``auto`` says so, keep the cluster converged."""
        mgr = self._mgr
        promote = self.apply(decisions)
        if promote is not None and mgr.config.promotion == "auto" and not mgr.closed:
            self._auto_promote(promote)
        if mgr.config.promotion == "auto" and not mgr.closed and not self._promote_lock.locked():
            # Not while a promotion runs: it sets the sync names and repoints itself.
            self.upkeep.run(mgr.snapshot, time.time(), lambda: mgr.closed)
        self.flush_callbacks()

    def apply(self, decisions: list[Decision]) -> Promote | None:
        """Apply decisions in order; return the promotion asked for, never run it."""
        mgr = self._mgr
        promote: Promote | None = None
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
                self._emit("state_change", decision.old, decision.new, snap)
            elif isinstance(decision, NodeLost):
                logger.warning("node %s unhealthy: %s", decision.node, decision.error)
            elif isinstance(decision, NodeRecovered):
                logger.info("node %s healthy again", decision.node)
                mgr.counters.bump("recoveries")
                self._emit("recovery", decision.node)
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
                promote = decision
        return promote

    # -- callbacks -----------------------------------------------------------

    def _emit(self, kind: str, *args: object) -> None:
        with self._callbacks_lock:
            self._pending.append((kind, args))

    def flush_callbacks(self) -> None:
        """Run the queued callbacks; call only with no lock held."""
        with self._callbacks_lock:
            pending, self._pending = self._pending, []
        for kind, args in pending:
            self._mgr._emit(kind, *args)

    # -- the incident --------------------------------------------------------

    def _open_event(self, previous: str | None, reason: str) -> FailoverEvent:
        event, new = self.incident.open(previous, reason)
        if new:
            logger.warning("cluster %s: failover started: %s", self._mgr.name, reason)
        return event

    def _switched(self, decision: SwitchPrimary) -> None:
        mgr = self._mgr
        if decision.previous is None or decision.previous == decision.node:
            logger.info("cluster %s: primary is %s (%s)", mgr.name, decision.node, decision.reason)
            self.incident.resolve(
                decision.node, f"{decision.node} answered again: nothing was promoted"
            )
            return
        mgr.abort_inflight(decision.previous)
        event = self.incident.complete(
            decision.node, decision.previous, decision.reason, decision.lost_lsn
        )
        mgr.counters.bump("failovers")
        logger.warning(
            "cluster %s: failover complete: writes go to %s (was %s) after %.3fs",
            mgr.name,
            decision.node,
            decision.previous,
            event.duration or 0.0,
        )
        self._emit("failover", event)

    def wrote(self, node: str) -> None:
        """A write was acknowledged by ``node`` (closes the incident's clock)."""
        self.incident.wrote(node)

    # -- fencing ---------------------------------------------------------------

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

    # -- promotion -------------------------------------------------------------

    def _auto_promote(self, decision: Promote) -> None:
        mgr = self._mgr
        if not self._promote_lock.acquire(blocking=False):
            return  # a promotion runs already (manual, or another thread's round)
        try:
            if time.monotonic() < self._promotion_paused_until or mgr.closed:
                return
            # Re-probe every node just before acting: a primary that came
            # back, or another manager's promotion, cancels ours.
            chosen = self.apply(mgr._probe_and_advance())
            if chosen is None:
                snap = mgr.snapshot
                logger.warning(
                    "cluster %s: promotion of %s called off after re-probe (%s)",
                    mgr.name,
                    decision.node,
                    snap.promotion_blocked or snap.state.value,
                )
                return
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
        finally:
            self._promote_lock.release()

    def manual_failover(
        self, target: str | None, *, force: bool, timeout: float = 30.0
    ) -> FailoverEvent:
        """The manual trigger: guards, optional fence, promotion."""
        mgr = self._mgr
        if not self._promote_lock.acquire(timeout=timeout):
            raise PromotionRefused(
                f"failover refused by guard busy: another promotion still runs after {timeout:g}s",
                guard="busy",
            )
        try:
            if mgr.closed:
                raise ManagerClosed(f"manager {mgr.name} is closed")
            self.apply(mgr._probe_and_advance())
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
                self._emit("failover", event)
                raise PromotionRefused(message, guard=choice.guard)
            fence = snap.primary if snap.primary and snap.node(snap.primary).up else None
            reason = f"manual trigger{' (forced)' if force else ''}: {choice.reason}"
            return self._promote(
                choice.node, snap.primary or snap.last_primary, reason, choice.lag_bytes, fence
            )
        finally:
            self._promote_lock.release()
            self.flush_callbacks()

    def _promote(
        self, target: str, previous: str | None, reason: str, lag: int | None, fence: str | None
    ) -> FailoverEvent:
        """Promote ``target``, set its sync names, switch writes, repoint the standbys."""
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
            mgr.counters.bump("promotion_failures")
            failed = self.incident.fail(event.id, (*notes, f"pg_promote failed: {exc}"))
            if failed is not None:
                self._emit("failover", failed)
            raise
        mgr.counters.bump("promotions")
        logger.warning("node %s promoted in %.3fs", target, time.monotonic() - started)
        self._sync_for(snap, target, [link.application_name for _, link in survivors], notes)
        if notes:
            mgr.events.append_notes(event.id, tuple(notes))
        # Probe now so that writes switch without waiting for the interval.
        self.apply(mgr._probe_and_advance())
        if survivors and cfg.repoint_standbys:
            self._repoint(target, survivors, event.id, timeout)
        return mgr.events.get(event.id) or event

    def _sync_for(
        self, snap: Snapshot, target: str, survivors: list[str], notes: list[str]
    ) -> None:
        """Give the new primary the old one's sync policy over the survivors."""
        mgr = self._mgr
        timeout = max(2.0, mgr.config.health_check_timeout * 2)
        original = self._original_sync_names(snap, target)
        self.upkeep.learn(original)
        new_sync, note = rewrite_sync_names(original, survivors)
        if note:
            notes.append(note)
            mgr.counters.bump("sync_lowered")
        current = snap.node(target).sync_standby_names or ""
        written = None
        if new_sync != current:
            try:
                set_sync_standby_names(mgr.node(target).dsn, new_sync, timeout)
                notes.append(f"synchronous_standby_names on {target}: {new_sync!r}")
                written = new_sync
            except psycopg.Error as exc:
                notes.append(f"could not set synchronous_standby_names on {target}: {exc}")
        self.upkeep.promoted(target, current if written is None else written, time.time())

    def wait_repointed(self, timeout: float) -> bool:
        """Wait until no promotion is running (each repoints its standbys before it ends)."""
        if not self._promote_lock.acquire(timeout=timeout):
            return False
        self._promote_lock.release()
        return True

    def _survivor_links(
        self, snap: Snapshot, target: str, timeout: float, notes: list[str]
    ) -> list[tuple[str, StandbyLink]]:
        """The standbys that should follow ``target``, and how they connect now."""
        links = []
        for node in snap.nodes:
            if node.name == target or node.role is not Role.STANDBY or not node.up:
                continue
            try:
                link = read_standby_link(self._mgr.node(node.name).dsn, node.name, timeout)
            except psycopg.Error as exc:
                notes.append(f"cannot read {node.name}'s primary_conninfo: {exc}")
                continue
            links.append((node.name, link))
        return links

    @staticmethod
    def _original_sync_names(snap: Snapshot, target: str) -> str:
        if snap.last_primary is not None:
            seen = snap.node(snap.last_primary).sync_standby_names
            if seen is not None:
                return seen
        return snap.node(target).sync_standby_names or ""

    def _repoint(
        self, target: str, survivors: list[tuple[str, StandbyLink]], event_id: str, timeout: float
    ) -> None:
        """Point the surviving standbys at the new primary (``ALTER SYSTEM`` + reload)."""
        mgr = self._mgr
        new_dsn = mgr.node(target).dsn
        notes: list[str] = []
        for name, link in survivors:
            try:
                repoint_standby(mgr.node(name).dsn, link, new_dsn, new_dsn, timeout)
                notes.append(f"{name} repointed to {target}")
            except psycopg.Error as exc:
                notes.append(f"could not repoint {name}: {exc}")
                logger.error("node %s: repointing to %s failed: %s", name, target, exc)
        mgr.events.append_notes(event_id, tuple(notes))
        mgr.wake()
