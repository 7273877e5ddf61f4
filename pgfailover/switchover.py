"""A planned switchover: move the primary to a standby without losing a write.

:func:`choose_switchover` (pure) says which standby may take over, or which
guard refuses. :class:`Switchover` then runs the steps, each written into
the event's notes:

1. hold new writes through the manager (they wait, as during a failover);
2. let the writes in flight on the old primary finish (``drain``), then cut
   the rest off (before COMMIT they are retried on the new primary);
3. fence the old primary: new transactions read-only, every other client
   session ended, and read the WAL flush position it stopped at;
4. wait until the target has replayed that position: it then holds every
   commit the old primary acknowledged, and no standby holds more (a
   walsender only sends flushed WAL). Bounded by ``timeout``: past it the
   fence is undone, writes go back to the old primary, and the switchover
   is refused (guard ``catchup_timeout``);
5. promote the target, give it the old primary's sync policy over the
   standbys that will follow it, and repoint them
   (:class:`~pgfailover.promote.Promoter`);
6. release the held writes onto the target. The old primary stays fenced
   and shows as stale (``needs_rejoin``) until ``pgfailover rejoin``.

The caller (:class:`~pgfailover.failover.FailoverActions`) holds the
promotion lock throughout, so no automatic promotion interleaves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import psycopg

from pgfailover.admin import Admin
from pgfailover.cluster import ClusterView
from pgfailover.config import FailoverConfig
from pgfailover.errors import PromotionRefused
from pgfailover.events import EventLog, FailoverEvent
from pgfailover.guards import Candidate, Refusal, rank
from pgfailover.model import NodeState, Role, Snapshot
from pgfailover.promote import Promoter

__all__ = ["Switchover", "choose_switchover", "lsn_text"]

logger = logging.getLogger(__name__)


def lsn_text(lsn: int) -> str:
    """A WAL position as PostgreSQL writes it (``0/4000060``)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


DRAIN_LIMIT = 1.0
"""Seconds at most that statements in flight on the old primary get to finish.

Statements still running after it are cut off: a read is retried on another
node, a write before its COMMIT on the new primary.
"""


def _fit(node: NodeState, snap: Snapshot) -> str | None:
    """Why ``node`` cannot take over in a switchover, or ``None``."""
    if not node.up:
        return "is down"
    if node.role is not Role.STANDBY or not node.healthy:
        return f"is {node.role.value}, not a healthy standby"
    if (node.timeline or 0) < snap.max_timeline:
        return f"is on timeline {node.timeline}, behind {snap.max_timeline}"
    if not node.receiver_streaming or node.follows is not True:
        return f"does not stream from the primary {snap.primary}"
    return None


def choose_switchover(
    snap: Snapshot, *, target: str | None = None, force: bool = False
) -> Candidate | Refusal:
    """The standby a switchover moves the primary to, or the guard that refuses.

    Guards: ``split_brain``; ``no_primary`` (a switchover moves a running
    primary: with none, that is a failover, ``trigger``);
    ``target_not_streaming`` (not a healthy standby streaming from the
    primary, so it cannot be caught up); ``nofailover`` (the target is
    tagged so; *forceable*); ``no_candidate``. How far behind the target is
    does not matter: the switchover waits until it has caught up.
    """
    if snap.split_brain:
        return Refusal("split_brain", f"split brain between {', '.join(snap.split_brain)}")
    primary = snap.writable_primary
    if primary is None:
        return Refusal(
            "no_primary", "no running primary to switch over from: use trigger for a failover"
        )
    if target is not None:
        names = [n.name for n in snap.nodes]
        if target not in names:
            return Refusal("target_not_eligible", f"unknown node {target!r}")
        if target == primary.name:
            return Refusal("target_not_eligible", f"{target} is the primary already")
        node = snap.node(target)
        why = _fit(node, snap)
        if why is not None:
            return Refusal("target_not_streaming", f"{target} {why}")
        if node.nofailover and not force:
            return Refusal("nofailover", f"{target} is tagged nofailover")
        return Candidate(target, node.lag_bytes, f"switchover to {target} (asked for)")
    fit = sorted(
        (
            n
            for n in snap.nodes
            if n.name != primary.name and not n.nofailover and not _fit(n, snap)
        ),
        key=rank,
    )
    if not fit:
        return Refusal("no_candidate", "no healthy standby streams from the primary")
    best = fit[0]
    return Candidate(best.name, best.lag_bytes, f"switchover to {best.name} (most advanced)")


class Switchover:
    """Runs one switchover's steps; the caller holds the promotion lock.

    ``settle`` re-probes and applies the result (writes switch there);
    ``busy`` counts the manager's connections in flight on a node and
    ``abort`` cuts them off; ``emit`` queues a callback.

    Thread safety: one :meth:`run` at a time (the caller's lock); the class
    owns no lock.
    """

    def __init__(
        self,
        *,
        view: ClusterView,
        config: FailoverConfig,
        admin: Admin,
        events: EventLog,
        promoter: Promoter,
        dsn: Callable[[str], str],
        busy: Callable[[str], int],
        abort: Callable[[str], object],
    ) -> None:
        self._view = view
        self._config = config
        self._admin = admin
        self._events = events
        self._promoter = promoter
        self._dsn = dsn
        self._busy = busy
        self._abort = abort

    def run(
        self,
        event: FailoverEvent,
        old: str,
        target: str,
        *,
        timeout: float,
        settle: Callable[[], None],
        failed: Callable[[FailoverEvent], None],
    ) -> FailoverEvent:
        """Move the primary from ``old`` to ``target`` (see the module docstring).

        Raises:
            PromotionRefused: guard ``catchup_timeout``; the old primary
                takes writes again and nothing was promoted.
            PromotionFailed, psycopg.Error: fencing or promoting failed;
                the fence is undone when nothing was promoted.
        """
        admin_timeout = max(2.0, self._config.health_check_timeout * 2)
        started = time.monotonic()
        # Held writes wait failover_wait_timeout at most: decide before they give up.
        held_limit = max(1.0, min(timeout, self._config.failover_wait_timeout - 1.0))
        deadline = started + held_limit
        notes: list[str] = []

        def note(text: str) -> None:
            notes.append(f"+{time.monotonic() - started:.3f}s {text}")

        self._view.hold_writes()
        fenced = promoting = promoted = False
        try:
            note("new writes held")
            drained = self._drain(old, min(DRAIN_LIMIT, held_limit / 4))
            note(f"statements in flight on {old} cut off: {drained}")
            fenced = True  # from here on, an interruption must undo the fence
            ended, final = self._admin.fence_sessions(self._dsn(old), admin_timeout)
            note(f"{old} fenced (read-only), {ended} client session(s) ended")
            note(f"{old}'s WAL written and flushed to {lsn_text(final)}")
            replayed = self._catch_up(target, final, deadline)
            if replayed is None:
                note(f"{target} did not replay {lsn_text(final)} within {held_limit:g}s")
                self._admin.unfence(self._dsn(old), admin_timeout)
                fenced = False
                note(f"fence on {old} undone: it takes writes again")
                message = (
                    f"switchover refused by guard catchup_timeout: {target} did not replay "
                    f"{old}'s last WAL ({lsn_text(final)}) within {held_limit:g}s; "
                    f"{old} takes writes again"
                )
                failed(self._finish(event, notes, "refused", message))
                raise PromotionRefused(message, guard="catchup_timeout")
            note(f"{target} replayed {lsn_text(replayed)}: it holds every commit {old} made")
            self._events.append_notes(event.id, tuple(notes))
            notes.clear()
            promoting = True  # a failure from here on is reported by the promoter
            self._promoter.promote(
                self._view.snapshot, event, target, fence=None, settle=settle, failed=failed
            )
            promoted = True
        except BaseException as exc:
            if fenced and not promoted and not isinstance(exc, PromotionRefused):
                done = self._undo(
                    old=old,
                    target=target,
                    event=event,
                    notes=notes,
                    exc=exc,
                    timeout=admin_timeout,
                )
                if not promoting:
                    failed(done)
            raise
        finally:
            self._view.release_writes()
        note("held writes released")
        return self._events.append_notes(event.id, tuple(notes)) or event

    def _catch_up(self, target: str, lsn: int, deadline: float) -> int | None:
        """Wait until ``target`` has replayed ``lsn``; ``None`` past the deadline or at close."""
        while not self._view.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            replayed = self._admin.wait_replayed(self._dsn(target), lsn, min(left, 0.5))
            if replayed is not None:
                return replayed
        return None

    def _drain(self, node: str, limit: float) -> int:
        """Wait up to ``limit`` for the manager's statements on ``node``; cut off the rest."""
        deadline = time.monotonic() + limit
        while self._busy(node) and time.monotonic() < deadline:
            time.sleep(0.002)
        left = self._busy(node)
        if left:
            self._abort(node)
        return left

    def _undo(
        self,
        *,
        old: str,
        target: str,
        event: FailoverEvent,
        notes: list[str],
        exc: BaseException,
        timeout: float,
    ) -> FailoverEvent:
        """A step failed (or was interrupted) after the fence: give writes back to ``old``.

        Only when ``target`` is certainly still in recovery: ``pg_promote``
        may have gone through before the error, and two writable nodes are
        worse than none (the probes then see which one is primary).
        """
        try:
            recovering = self._admin.in_recovery(self._dsn(target), timeout)
        except psycopg.Error:
            recovering = None
        if recovering is not True:
            notes.append(
                f"fence on {old} kept after: {exc} ({target} may have been promoted; "
                "the probes decide which node takes writes)"
            )
            logger.error("switchover to %s interrupted after the fence: %s", target, exc)
        else:
            try:
                self._admin.unfence(self._dsn(old), timeout)
                notes.append(f"fence on {old} undone after: {exc}")
            except psycopg.Error as undo_error:
                notes.append(f"could not undo the fence on {old}: {undo_error}")
                logger.error("node %s: undoing the fence failed: %s", old, undo_error)
        return self._finish(event, notes, "failed", f"switchover failed: {exc}")

    def _finish(
        self, event: FailoverEvent, notes: list[str], outcome: str, reason: str
    ) -> FailoverEvent:
        current = self._events.get(event.id) or event
        done = self._events.update(
            event.id,
            outcome=outcome,
            completed=time.time(),
            notes=(*current.notes, *notes, reason),
        )
        return done or current
