"""The published view of the cluster: the latest snapshot, suspects, waiting for a primary.

The monitor publishes one immutable :class:`~pgfailover.model.Snapshot` per
probe round; application threads route on it without a lock. A query that
finds a node gone or read-only makes it a *suspect* until the next round
has probed it again, so that writes stop going there at once. A write with
no primary to go to waits here for one, up to a deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection

from pgfailover.errors import ManagerClosed, NoPrimaryAvailable, ReadOnlyMode
from pgfailover.model import Snapshot
from pgfailover.routing import write_target

__all__ = ["ClusterView"]


class ClusterView:
    """The snapshot and the suspects, published for routing.

    Locks: ``_cond`` (a condition) serialises publishing and wakes threads
    waiting for a change; it is a leaf. The snapshot, the suspects and the
    listeners are replaced, never mutated, under it, so readers take no
    lock; listeners are called after it is released.

    Thread safety: every method may be called from any thread.
    """

    def __init__(
        self,
        cluster: str,
        initial: Snapshot,
        wait_timeout: float,
        read_only: Callable[[Snapshot], str | None] = lambda _snap: None,
    ) -> None:
        self.name = cluster
        self._wait_timeout = wait_timeout
        self._read_only = read_only  # why a snapshot means no primary is coming (pure)
        self._cond = threading.Condition()
        self._snapshot = initial  # replaced under self._cond
        # name -> (when, whether a query lost its connection to it); replaced under _cond
        self._suspects: dict[str, tuple[float, bool]] = {}
        self._suspect_names: frozenset[str] = frozenset()  # replaced under self._cond
        self._closed = False  # set under self._cond
        self._held = False  # set under self._cond: writes wait (a switchover)
        self._listeners: tuple[Callable[[], None], ...] = ()  # replaced under self._cond
        self._ready: str | None = None  # set under self._cond (_refresh): see ready_primary
        self._refresh()

    @property
    def snapshot(self) -> Snapshot:
        """The latest immutable snapshot."""
        return self._snapshot

    @property
    def ready_primary(self) -> str | None:
        """The node writes go to now, when nothing makes a write wait: a primary that is
        not suspect, no split brain, writes not held, not closed; else ``None``.

        Worked out at each change rather than at each write (every write
        asks): one attribute read on the happy path.
        """
        return self._ready

    def _refresh(self) -> None:
        """Work out :attr:`ready_primary` again; under ``_cond`` (or in ``__init__``)."""
        snap = self._snapshot
        target = snap.primary
        if (
            target is None
            or snap.split_brain
            or target in self._suspect_names
            or self._held
            or self._closed
        ):
            target = None
        self._ready = target

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    @property
    def held(self) -> bool:
        """True while writes are held (a switchover moves the primary)."""
        return self._held

    def hold_writes(self) -> None:
        """New writes wait (as when there is no primary) until :meth:`release_writes`."""
        with self._cond:
            self._held = True
            self._refresh()
        self._notify()

    def release_writes(self) -> None:
        """Let held writes go (to whatever primary the snapshot names now)."""
        with self._cond:
            self._held = False
            self._refresh()
            self._cond.notify_all()
        self._notify()

    def read_only_reason(self) -> str | None:
        """Why the cluster is read-only now (no primary and none coming), or ``None``."""
        return self._read_only(self._snapshot)

    @property
    def suspects(self) -> frozenset[str]:
        """Nodes a query found gone or read-only since they were last probed."""
        return self._suspect_names

    def lost_between(self, since: float, until: float) -> frozenset[str]:
        """Nodes a query lost its connection to (a suspicion that began in ``[since,
        until)``, wall clock): what queries found gone between two rounds' starts."""
        return frozenset(
            n for n, (at, lost) in self._suspects.items() if lost and since <= at < until
        )

    def publish(
        self,
        snap: Snapshot,
        probed_since: float,
        probed: Collection[str] | None = None,
        *,
        held: bool | None = None,
    ) -> None:
        """Publish a round's snapshot; clear the suspects it probed up (probes begun after
        them). ``probed``: the nodes the round has a result for (default: all); a node
        whose probe was still out keeps its suspicion. ``held``: hold or release writes
        in the same change (a source's snapshot), so no writer sees one without the other."""
        with self._cond:
            self._snapshot = snap
            if held is not None:
                self._held = held
            if self._suspects:
                kept = {
                    name: entry
                    for name, entry in self._suspects.items()
                    if not (
                        entry[0] <= probed_since
                        and snap.node(name).up
                        and (probed is None or name in probed)
                    )
                }
                self._suspects, self._suspect_names = kept, frozenset(kept)
            self._refresh()
            self._cond.notify_all()
        self._notify()

    def confirmed(self, nodes: Collection[str], since: float) -> None:
        """A follower's probes begun at ``since`` (wall clock) found ``nodes`` fine:
        they are no longer suspect (suspicions raised later stay)."""
        with self._cond:
            kept = {
                name: entry
                for name, entry in self._suspects.items()
                if not (name in nodes and entry[0] <= since)
            }
            if len(kept) == len(self._suspects):
                return
            self._suspects, self._suspect_names = kept, frozenset(kept)
            self._refresh()
            self._cond.notify_all()
        self._notify()

    def suspect(self, node: str, *, lost: bool = True) -> bool:
        """Avoid ``node`` until it is probed again; True when it was not suspect yet.

        ``lost``: a query lost its connection to it (evidence the next round
        counts, :meth:`lost_between`), rather than finding it read-only or
        its pool without a free connection.
        """
        with self._cond:
            if node in self._suspects:
                return False
            suspects = {**self._suspects, node: (time.time(), lost)}
            self._suspects, self._suspect_names = suspects, frozenset(suspects)
            self._refresh()
            return True

    def close(self) -> None:
        """Wake every waiter; waiting from now on raises ``ManagerClosed``."""
        with self._cond:
            self._closed = True
            self._refresh()
            self._cond.notify_all()
        self._notify()

    def wait_for_change(self, timeout: float) -> None:
        """Block until a new snapshot is published or ``timeout`` passes."""
        with self._cond:
            self._cond.wait(timeout)

    def listen(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` after every change a waiter may care about (a snapshot,
        writes held or released, closing), on the thread that made it, with no lock held.

        For waiters that cannot block on the condition (asyncio tasks: the
        callback hands the news to their event loop). Returns ``callback``.
        """
        with self._cond:
            self._listeners = (*self._listeners, callback)
        return callback

    def unlisten(self, callback: Callable[[], None]) -> None:
        """Stop calling ``callback`` (see :meth:`listen`)."""
        with self._cond:
            self._listeners = tuple(c for c in self._listeners if c is not callback)

    def _notify(self) -> None:
        for callback in self._listeners:
            callback()

    def primary_now(self, deadline: float) -> tuple[str | None, float]:
        """The node writes go to now, or ``(None, seconds left to wait)``; never blocks.

        One step of :meth:`wait_for_primary`, for waiters that wait their own way.

        Raises:
            ManagerClosed, SplitBrainError, ReadOnlyMode (no primary is
            coming), NoPrimaryAvailable (past ``deadline``, monotonic).
        """
        if self._closed:
            raise ManagerClosed(f"manager {self.name} is closed")
        snap, held = self._snapshot, self._held
        target = write_target(snap, self._suspect_names)
        if target is not None and not held:
            return target, 0.0
        reason = None if held else self._read_only(snap)
        if reason is not None:
            raise ReadOnlyMode(f"cluster {self.name} is read-only: {reason}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise NoPrimaryAvailable(
                f"no writable primary within {self._wait_timeout:g}s "
                f"(cluster {self.name} is {snap.state.value}"
                + (f"; {snap.promotion_blocked}" if snap.promotion_blocked else "")
                + ("; writes held for a switchover" if held else "")
                + ")"
            )
        return None, remaining

    def wait_for_primary(
        self, deadline: float, poll: float, probe: Callable[[], None] | None = None
    ) -> str:
        """The node writes go to, waiting until ``deadline`` (monotonic) for one.

        ``probe`` runs a round from this thread between waits (when no
        monitor thread runs), outside the lock.

        Raises:
            ManagerClosed, SplitBrainError, NoPrimaryAvailable, ReadOnlyMode
            (at once: no primary is coming).
        """
        while True:
            with self._cond:
                target, remaining = self.primary_now(deadline)
                if target is not None:
                    return target
                self._cond.wait(min(remaining, poll))
            if probe is not None:
                probe()
