"""Applying the state machine's decisions: events, promotion, fencing, callbacks.

:class:`FailoverActions` is the manager's hands. It logs state changes, keeps
the failover incident, promotes in ``auto`` mode (after re-probing every
node, so a primary that reappeared is never doubled), runs the manual
trigger, and soft-fences stale old primaries. The promotion's SQL steps are
:class:`~pgfailover.promote.Promoter`'s; what must converge later (a standby
that attaches late or never, sync names, a node rejoined hours later) is
:mod:`pgfailover.upkeep`'s job, after every round.

It knows nothing of the manager: it is given the published view, the event
log, the counters, the config, a way to find a node's DSN, and four
callables (re-probe, abort a node's in-flight statements, wake the monitor,
run the application's callbacks), so it is unit-tested with fakes.

One rule for promotions: :meth:`FailoverActions.apply` never promotes; only
:meth:`FailoverActions.after_round` (an ``auto`` decision, at the top of the
monitor's round) and :meth:`FailoverActions.manual_failover` do, each under
``_promote_lock``. So no path can re-enter a promotion from inside one.

Callbacks are queued while decisions are applied and run by
:meth:`FailoverActions.flush_callbacks` once every lock is released, so a
callback may call ``perform_failover()`` or ``check_health()``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

import psycopg

from pgfailover.admin import Admin
from pgfailover.cluster import ClusterView
from pgfailover.config import FailoverConfig
from pgfailover.counters import Counters
from pgfailover.errors import ManagerClosed, PgFailoverError, PromotionRefused
from pgfailover.events import CallbackQueue, EventKind, EventLog, FailoverEvent
from pgfailover.guards import Candidate, Refusal, choose_candidate
from pgfailover.incident import Incident
from pgfailover.maintenance import Maintenance
from pgfailover.model import (
    Decision,
    FailoverStarted,
    Fence,
    NodeLost,
    NodeRecovered,
    Promote,
    Snapshot,
    SplitBrainDetected,
    StateChanged,
    SwitchPrimary,
)
from pgfailover.promote import Promoter, PromotionGate
from pgfailover.switchover import Switchover, choose_switchover
from pgfailover.upkeep import Upkeep

__all__ = ["FailoverActions"]

logger = logging.getLogger(__name__)


class FailoverActions:
    """Applies one cluster's decisions; promotes in ``auto`` mode and on demand.

    ``reprobe`` runs a full probe round and returns its decisions (the
    manager's round lock is taken there); ``abort`` unblocks every statement
    in flight on a node; ``wake`` asks the monitor for a round; ``emit(kind,
    *args)`` runs the application's callbacks of one kind.

    Locks, in the order they may be taken: ``_promote_lock`` (one promotion
    at a time, auto or manual; held across ``pg_promote``, the sync names
    and repointing) → the round lock inside ``reprobe`` → the incident's
    lock → the event log's lock. Upkeep runs only while no promotion does,
    under its own ``_run_lock`` (never held with the promotion lock).
    The callback queue's lock (:class:`~pgfailover.events.CallbackQueue`)
    and the promoter's fence lock are leaves. No callback runs while any of them is held.

    Thread safety: :meth:`after_round` runs on the monitor thread or on a
    thread calling ``check_health``; :meth:`manual_failover` on any thread.
    """

    def __init__(
        self,
        *,
        view: ClusterView,
        config: FailoverConfig,
        events: EventLog,
        counters: Counters,
        dsn: Callable[[str], str],
        reprobe: Callable[[], list[Decision]],
        abort: Callable[[str], object],
        busy: Callable[[str], int],
        wake: Callable[[], None],
        emit: Callable[..., None],
        admin: Admin | None = None,
        upkeep: Upkeep | None = None,
        gate: PromotionGate | None = None,
        replication_dsn: Callable[[str], str] | None = None,
    ) -> None:
        self.gate = gate
        self._view = view
        self._config = config
        self._events = events
        self._counters = counters
        self._dsn = dsn
        self._reprobe = reprobe
        self._abort = abort
        self._wake = wake
        self._admin = admin or Admin()
        self.incident = Incident(events, counters, lambda: view.snapshot)
        self.maintenance = Maintenance(
            events, view.name, wake, shared=gate, identity=gate.identity if gate else ""
        )
        if gate is not None:
            gate.watch_pause(self.maintenance.adopt)
        self.upkeep = upkeep or Upkeep(
            config,
            dsn,
            events,
            lambda: counters.bump("sync_lowered"),
            view.name,
            replication_dsn_of=replication_dsn,
        )
        self._promoter = promoter = Promoter(
            cluster=view.name,
            config=config,
            admin=self._admin,
            events=events,
            counters=counters,
            incident=self.incident,
            upkeep=self.upkeep,
            dsn=dsn,
            gate=gate,
            replication_dsn=replication_dsn,
        )
        self._switchover = Switchover(
            view=view,
            config=config,
            admin=self._admin,
            events=events,
            promoter=promoter,
            dsn=dsn,
            busy=busy,
            abort=abort,
        )
        self._promote_lock = threading.Lock()
        self._promotion_paused_until = 0.0  # guarded by self._promote_lock
        self._callbacks = CallbackQueue(emit)

    @property
    def _name(self) -> str:
        return self._view.name

    @property
    def _term(self) -> object:
        """This process's right to change the cluster unasked: ``True`` without a lease,
        the lease's fencing revision while it holds one, ``None`` while another does (of
        several arbiters, only the holder keeps the cluster converged)."""
        if self.gate is None:
            return True
        held = self.gate.holding
        return getattr(held, "revision", True) if held else None

    @property
    def _acts(self) -> bool:
        return self._term is not None

    @property
    def promoting(self) -> bool:
        """True while a promotion (auto or manual) holds the promotion lock."""
        return self._promote_lock.locked()

    # -- one round ---------------------------------------------------------

    def after_round(self, decisions: list[Decision]) -> None:
        """Apply a round's decisions, promote if ``auto`` says so, keep the cluster converged."""
        auto = self._config.promotion == "auto"
        self.upkeep.acting(self._term)  # a lease gained or lost: upkeep starts afresh
        paused = self.maintenance.paused_since is not None
        promote = self.apply(decisions)
        if (
            promote is not None
            and auto
            and not self._view.closed
            and not self.maintenance.holds(promote.node)
        ):
            self._auto_promote(promote)
        if auto and not paused and not self._view.closed and not self.promoting and self._acts:
            # Not while a promotion runs: it sets the sync names and repoints itself.
            self.upkeep.run(
                self._view.snapshot, time.time(), lambda: self._view.closed or not self._acts
            )
        reason = self._view.read_only_reason()
        if self._callbacks.writable(reason):
            logger.warning(
                "cluster %s: %s",
                self._name,
                f"read-only: {reason}" if reason else "writable again",
            )
        self.flush_callbacks()

    def apply(self, decisions: list[Decision]) -> Promote | None:
        """Apply decisions in order; return the promotion asked for, never run it."""
        promote: Promote | None = None
        for decision in decisions:
            if isinstance(decision, StateChanged):
                snap = self._view.snapshot
                self.incident.state_changed(self._name, decision, snap.primary)
                self._emit("state_change", decision.old, decision.new, snap)
            elif isinstance(decision, NodeLost):
                logger.warning("node %s unhealthy: %s", decision.node, decision.error)
            elif isinstance(decision, NodeRecovered):
                logger.info("node %s healthy again", decision.node)
                self._counters.bump("recoveries")
                self._emit("recovery", decision.node)
            elif isinstance(decision, FailoverStarted):
                self.incident.start(self._name, decision.previous, decision.reason)
                if decision.previous is not None:
                    self._abort(decision.previous)
            elif isinstance(decision, SwitchPrimary):
                self._switched(decision)
            elif isinstance(decision, SplitBrainDetected):
                self.incident.split_brain(self._name, decision.nodes)
            elif isinstance(decision, Fence):
                self._promoter.fence(decision.node, decision.reason)
            elif isinstance(decision, Promote):
                promote = decision
        return promote

    # -- callbacks -----------------------------------------------------------

    def _emit(self, kind: str, *args: object) -> None:
        self._callbacks.add(kind, *args)

    def flush_callbacks(self) -> None:
        """Run the queued callbacks; call only with no lock held."""
        self._callbacks.flush()

    # -- the incident --------------------------------------------------------

    def _switched(self, decision: SwitchPrimary) -> None:
        if decision.previous is not None and decision.previous != decision.node:
            self._abort(decision.previous)  # before the event completes, as writes switch
        event = self.incident.switched(self._name, decision)
        if event is not None:
            self._emit("failover", event)

    # -- promotion -------------------------------------------------------------

    def _auto_promote(self, decision: Promote) -> None:
        if not self._promote_lock.acquire(blocking=False):
            return  # a promotion runs already (manual, or another thread's round)
        try:
            if time.monotonic() < self._promotion_paused_until or self._view.closed:
                return
            if self.gate is not None and not self.gate.holding:
                return  # another arbiter holds the lease: it promotes (status: lease)
            # Re-probe every node just before acting: a primary that came
            # back, or another manager's promotion, cancels ours.
            chosen = self.apply(self._reprobe())
            if chosen is not None and self.maintenance.holds(chosen.node):
                return  # paused while the re-probe ran
            if chosen is None:
                snap = self._view.snapshot
                logger.warning(
                    "cluster %s: promotion of %s called off after re-probe (%s)",
                    self._name,
                    decision.node,
                    snap.promotion_blocked or snap.state.value,
                )
                return
            try:
                self._promote(
                    chosen.node,
                    chosen.previous,
                    chosen.reason,
                    chosen.lag_bytes,
                    None,
                    automatic=True,
                )
            except (PgFailoverError, psycopg.Error) as exc:
                pause = self._config.health_check_interval * self._config.unhealthy_threshold
                self._promotion_paused_until = time.monotonic() + pause
                logger.error(
                    "cluster %s: promoting %s failed: %s (next attempt in %.1fs)",
                    self._name,
                    chosen.node,
                    exc,
                    pause,
                )
        finally:
            self._promote_lock.release()

    @contextmanager
    def _exclusive(self, what: str, timeout: float) -> Iterator[Snapshot]:
        """Hold the promotion lock for an operator's operation, on a fresh snapshot.

        Raises ``PromotionRefused`` (guard ``busy``) when another promotion
        or switchover still runs after ``timeout``, ``ManagerClosed`` once
        closed. Callbacks queued meanwhile run after the lock is released.
        """
        if not self._promote_lock.acquire(timeout=timeout):
            raise PromotionRefused(
                f"{what} refused by guard busy: another promotion still runs after {timeout:g}s",
                guard="busy",
            )
        try:
            if self._view.closed:
                raise ManagerClosed(f"manager {self._name} is closed")
            why = self.gate.may_promote() if self.gate is not None else None
            if why is not None:
                raise PromotionRefused(f"{what} refused by guard lease: {why}", guard="lease")
            self.apply(self._reprobe())
            yield self._view.snapshot
        finally:
            self._promote_lock.release()
            self.flush_callbacks()

    def _refuse(
        self, kind: EventKind, previous: str | None, target: str | None, choice: Refusal
    ) -> NoReturn:
        """Record and raise a guard's refusal of an operator's operation."""
        message = f"{kind} refused by guard {choice.guard}: {choice.reason}; {choice.override}"
        now = time.time()
        event = self._events.record(
            FailoverEvent(kind, previous, target, message, now, completed=now, outcome="refused")
        )
        self._emit("failover", event)
        raise PromotionRefused(message, guard=choice.guard)

    def manual_failover(
        self, target: str | None, *, force: bool, timeout: float = 30.0
    ) -> FailoverEvent:
        """The manual trigger: guards, optional fence, promotion.

        Raises:
            PromotionRefused: a guard refused (``busy`` when another
                promotion still ran after ``timeout``).
            ManagerClosed: the manager closed.
        """
        with self._exclusive("failover", timeout) as snap:
            choice = choose_candidate(snap, self._config, time.time(), target=target, force=force)
            previous = snap.primary or snap.last_primary
            if not isinstance(choice, Candidate):
                self._refuse("failover", previous, target, choice)
            fence = snap.primary if snap.writable_primary is not None else None
            reason = f"manual trigger{' (forced)' if force else ''}: {choice.reason}"
            return self._promote(choice.node, previous, reason, choice.lag_bytes, fence)

    def switchover(
        self, target: str | None, *, force: bool = False, timeout: float = 30.0
    ) -> FailoverEvent:
        """A planned switchover that loses nothing (see :mod:`pgfailover.switchover`).

        Raises:
            PromotionRefused: a guard refused up front, or ``catchup_timeout``
                (the target did not catch up; the old primary writes again).
            ManagerClosed: the manager closed.
        """
        with self._exclusive("switchover", timeout) as snap:
            choice = choose_switchover(snap, target=target, force=force)
            if isinstance(choice, Refusal):
                self._refuse("switchover", snap.primary, target, choice)
            old = snap.primary
            assert old is not None  # noqa: S101 - a candidate implies a running primary
            event = self.incident.start(self._name, old, choice.reason)
            event = (
                self._events.update(
                    event.id,
                    kind="switchover",
                    to_node=choice.node,
                    promoted_by="pgfailover",
                    data_loss_bytes=0,
                    reason=choice.reason,
                )
                or event
            )
            done = self._switchover.run(
                event,
                old,
                choice.node,
                timeout=timeout,
                settle=self._settle,
                failed=lambda failed: self._emit("failover", failed),
            )
            self._wake()
            return done

    def _promote(
        self,
        target: str,
        previous: str | None,
        reason: str,
        lag: int | None,
        fence: str | None,
        *,
        automatic: bool = False,
    ) -> FailoverEvent:
        """Open (or take over) the incident's event and let the promoter run; under the lock."""
        snap = self._view.snapshot
        self.upkeep.acting(self._term)  # first: what the promotion tells upkeep is kept
        event = self.incident.start(self._name, previous, reason)
        event = (
            self._events.update(
                event.id,
                kind="switchover" if fence else "failover",
                to_node=target,
                promoted_by="pgfailover",
                data_loss_bytes=lag,
                reason=reason,
            )
            or event
        )
        done = self._promoter.promote(
            snap,
            event,
            target,
            fence=fence,
            settle=self._settle,
            failed=lambda failed: self._emit("failover", failed),
            automatic=automatic,
        )
        self._wake()
        return done

    def _settle(self) -> None:
        self.apply(self._reprobe())

    def wait_repointed(self, timeout: float) -> bool:
        """Wait until no promotion is running (each repoints its standbys before it ends)."""
        if not self._promote_lock.acquire(timeout=timeout):
            return False
        self._promote_lock.release()
        return True
