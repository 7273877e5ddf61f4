"""What the sync and the asyncio executors share: routing, error verdicts, bookkeeping.

A write runs in its own explicit transaction: the statement, then COMMIT.
That makes every failure classifiable:

- the connection failed before COMMIT was sent (at BEGIN or during the
  statement), or the node refused the write as read-only (SQLSTATE 25006):
  nothing committed, so the write is retried on the primary once there is
  one, waiting up to ``failover_wait_timeout``;
- the connection failed during COMMIT: the outcome is unknown, and
  :class:`~pgfailover.errors.WriteOutcomeUnknown` is raised, never a retry;
- any other server error (a constraint, a syntax error) is the caller's and
  is raised as psycopg raised it.

Reads are retried on the next fitting node on connection errors and on
recovery conflicts. Every connection-type error makes the node a suspect
(writes and reads avoid it) and asks for a probe round at once. Reads also
feed each node's circuit breaker (:mod:`pgfailover.breaker`), which holds
out of reads a node whose queries keep failing while its probes pass (and,
when every node a read could go to is held out, lets it go to them anyway).

:class:`Dispatcher` holds every decision of that: where a statement goes and
what an error means. It does no I/O and never blocks, so that
:class:`~pgfailover.execution.Executor` (threads) and
:class:`~pgfailover.aio.execution.AsyncExecutor` (asyncio) only add the
waiting and the statements themselves, each in its own way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Generic, Literal, TypeVar

import psycopg
from psycopg import pq
from psycopg_pool import PoolTimeout

from pgfailover.breaker import Breakers
from pgfailover.cluster import ClusterView
from pgfailover.counters import Counters
from pgfailover.errors import (
    ManagerClosed,
    NoPrimaryAvailable,
    NoStandbyAvailable,
    PgFailoverError,
    WriteOutcomeUnknown,
)
from pgfailover.model import NodeState, Snapshot
from pgfailover.pools import TrackedPools
from pgfailover.routing import ReadStrategy, read_candidates, read_order

__all__ = [
    "MAX_ATTEMPTS",
    "Dispatcher",
    "Verdict",
    "classify",
    "is_connection_error",
    "returns_rows",
]

logger = logging.getLogger(__name__)

Verdict = Literal["retry", "readonly", "unknown", "raise"]
Phase = Literal["statement", "commit"]

_GONE_STATES = {"57P01", "57P02", "57P03"}  # admin shutdown, crash shutdown, cannot connect now
MAX_ATTEMPTS = 100
P = TypeVar("P", bound=TrackedPools[Any])

CHECKOUT_SLICE = 0.1
"""Seconds a checkout waits for a pooled connection before it looks again whether its
node is still where the statement goes (:meth:`Dispatcher.slice_ended`)."""


def is_connection_error(exc: BaseException) -> bool:
    """True for errors that mean "this node is gone", not "this statement is wrong".

    pgfailover's own errors (``NoPrimaryAvailable``, ``ManagerClosed``...)
    subclass ``psycopg.OperationalError`` for callers' sake but say nothing
    about a node: they are never taken for a lost connection.
    """
    if not isinstance(exc, psycopg.Error) or isinstance(exc, PgFailoverError):
        return False
    state = exc.sqlstate
    if state is None:
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    return state.startswith("08") or state in _GONE_STATES


def classify(exc: BaseException, phase: Phase) -> Verdict:
    """What to do after ``exc`` was raised in ``phase`` of a write."""
    if isinstance(exc, psycopg.Error) and exc.sqlstate == "25006":
        return "readonly"
    if is_connection_error(exc):
        return "retry" if phase == "statement" else "unknown"
    return "raise"


_ROW_STATES = frozenset(
    {pq.ExecStatus.TUPLES_OK, pq.ExecStatus.SINGLE_TUPLE, pq.ExecStatus.TUPLES_CHUNK}
)


def returns_rows(cur: psycopg.Cursor[Any] | psycopg.AsyncCursor[Any]) -> bool:
    """Whether the cursor's last statement produced rows to fetch.

    The same answer as ``cur.description is not None``, without building
    the column descriptions, which costs several microseconds on every
    ``query()`` (measured: 4 % of a ``SELECT 1`` round trip under asyncio).
    """
    res = cur.pgresult
    return res is not None and (res.nfields > 0 or res.status in _ROW_STATES)


def brief(exc: BaseException) -> str:
    """An error in one line, for logs and suspicions."""
    return f"{type(exc).__name__}: {str(exc).strip()[:200]}"


class Dispatcher(Generic[P]):
    """Where statements go and what their errors mean, over the view and the pools.

    ``wake`` asks for a probe round now; ``idle_probe`` runs one from the
    caller when no monitor thread runs (``monitoring()`` is False: a write
    waiting for a primary must not wait forever); ``on_write`` hears of
    every write a node acknowledged (the failover clock stops at the first
    on a new primary); ``breakers``
    are the nodes' read circuit breakers. ``P``: the kind of pools (sync or
    asyncio) the executor built on it takes connections from.

    Thread safety: every method may be called from any thread; the class
    owns no lock (the view, the pools and the counters have their own).
    """

    def __init__(
        self,
        view: ClusterView,
        pools: P,
        counters: Counters,
        strategy: ReadStrategy,
        *,
        wait_timeout: float,
        pool_timeout: float,
        poll: float,
        wake: Callable[[], None],
        idle_probe: Callable[[], None],
        on_write: Callable[[str], None],
        breakers: Breakers,
        monitoring: Callable[[], bool] = lambda: True,
    ) -> None:
        self.view = view
        self.breakers = breakers
        self.strategy = strategy
        self._pools = pools
        self._counters = counters
        self._wait_timeout = wait_timeout
        self._pool_timeout = pool_timeout
        self._poll = poll
        self._wake = wake
        self._idle_probe = idle_probe
        self._monitoring = monitoring  # whether a monitor thread runs (else: idle_probe)
        self._on_write = on_write
        self._readers: tuple[Snapshot | None, frozenset[str], tuple[NodeState, ...]] = (
            None,
            frozenset(),
            (),
        )

    # -- where a statement goes ---------------------------------------------

    def suspect(self, node: str, reason: str, *, lost: bool = True) -> None:
        """A statement found ``node`` gone (``lost``: its connection failed) or
        read-only or without a free pooled connection: avoid it and, the first time,
        probe now.

        Only a new suspicion asks for a round: the callers that find the same
        node gone a moment later (other threads, other tasks) bring nothing
        new, and their wakes would add rounds, and so failed probes, at the
        pace of the application's concurrency rather than the monitor's.
        """
        if self.view.suspect(node, lost=lost):
            logger.info("node %s suspect after a query error: %s", node, reason)
            self._wake()

    def ready_primary(self) -> str | None:
        """The node writes go to now, when nothing makes a write wait (no suspect primary,
        no split brain, no switchover holding writes, not closed); ``None`` otherwise,
        and waiting for a primary then says why. Never raises."""
        return self.view.ready_primary

    def read_order(self, min_lsn: int | None = None) -> list[str]:
        """Nodes to try for a read now, best first (fitting standbys, then the primary).

        The standbys that may serve a plain read change only with the
        snapshot or the suspects, so they are worked out once per change,
        not once per read (a tuple swapped whole: no lock needed).
        """
        snap, suspects = self.view.snapshot, self.view.suspects
        if min_lsn is not None:
            order = read_order(snap, self.strategy, suspects, min_lsn)
        else:
            cached = self._readers
            if cached[0] is not snap or cached[1] is not suspects:
                cached = self._readers = (snap, suspects, tuple(read_candidates(snap, suspects)))
            order = read_order(snap, self.strategy, suspects, candidates=cached[2])
        if not self.breakers.tripped:
            return order
        return self.breakers.arrange(order, time.monotonic())

    def admitted(self, order: list[str]) -> tuple[str, int]:
        """The first node of ``order`` its breaker lets through, and the trial it is (0: not
        a trial); the first node when none does (their trials are taken: go all the same)."""
        now = time.monotonic()
        for node in order:
            allowed, token = self.breakers.admit(node, now)
            if allowed:
                return node, token
        return order[0], 0

    def pick_reader(self, min_lsn: int | None, tried: set[str]) -> tuple[str, int, str] | None:
        """The next node a read tries (not in ``tried``), its breaker trial (0: none) and
        its counters' route; ``None`` when no node is left to try now."""
        order = [n for n in self.read_order(min_lsn) if n not in tried]
        if not order:
            return None
        node, token = self.admitted(order)
        return node, token, self.read_route(node)

    def read_route(self, node: str) -> str:
        """The counters' route of a read on ``node``."""
        return "read" if node != self.view.snapshot.primary else "read_primary"

    # -- what happened ------------------------------------------------------

    def report(self, node: str, token: int, exc: BaseException | None = None) -> None:
        """Tell ``node``'s breaker how a read ended (``token``: the trial it was, or 0).

        Success, or a server error (the node answered): a success. A lost
        connection: a failure, counted while the node's probes pass. Anything
        else (the application's own exception) says nothing of the node.
        """
        if exc is None and token == 0 and self.breakers.clean(node):
            return  # the happy path: nothing to tell
        now = time.monotonic()
        if exc is not None and (is_connection_error(exc) or isinstance(exc, WriteOutcomeUnknown)):
            snap = self.view.snapshot
            healthy = any(n.name == node and n.healthy for n in snap.nodes)
            self.breakers.failure(node, brief(exc), healthy=healthy, now=now)
        elif exc is None or isinstance(exc, psycopg.Error):
            self.breakers.success(node, now, token)
        self.breakers.release(node, token)

    def checkout_timeout(self, deadline: float) -> float:
        """How long a checkout may wait for a pooled connection before ``deadline``."""
        return max(0.05, min(self._pool_timeout, deadline - time.monotonic()))

    def slice_ended(
        self,
        node: str,
        exc: BaseException,
        *,
        token: int,
        readonly: bool,
        timeout: float,
        until: float,
    ) -> float | None:
        """A slice of a checkout from ``node``'s pool raised ``exc``: how long the next
        slice may wait, or ``None`` when the checkout ends without a connection (the
        node was given up meanwhile, or no connection came within ``timeout``: the
        caller tries again, elsewhere if the view says so).

        Raises:
            exc: it says nothing of the node (a read's breaker trial is released first).
            ManagerClosed: the pool timed out because the manager is closing.
        """
        if isinstance(exc, PoolTimeout) and not self.view.closed and time.monotonic() < until:
            more = self._next_slice(node, readonly, until)
            if more is not None:
                return more
            self.breakers.release(node, token)  # given up: retried elsewhere
            return None
        if not self.checkout_timed_out(node, token, timeout, readonly, exc):
            raise exc
        return None

    def _next_slice(self, node: str, readonly: bool, until: float) -> float | None:
        """A slice of a checkout from ``node``'s pool found no connection: how long the
        next may wait, or ``None`` when ``node`` is no longer where the statement goes.

        A pool whose connections died with their node opens new ones in the
        background, and a caller waiting on it would wait ``pool_timeout``
        (5 s by default) after the node was given up and writes had moved:
        measured, one failover in ten took 5 s for the write that started just
        after the kill. So the wait goes in slices of :data:`CHECKOUT_SLICE`,
        and between them the caller gives the node up as soon as the view
        has; a pool whose every connection is the application's own (busy,
        not gone) is waited on whole. ``until``: when the checkout's time
        is up (monotonic); past it, the caller's timeout handling applies.
        """
        if readonly:
            if node not in self.read_order():
                return None
        elif self.view.ready_primary != node:
            return None
        left = until - time.monotonic()
        return left if self._pools.saturated(node) else min(left, CHECKOUT_SLICE)

    def checkout_timed_out(
        self, node: str, token: int, timeout: float, readonly: bool, exc: BaseException
    ) -> bool:
        """A checkout from ``node``'s pool raised ``exc``: True when no pooled connection
        came in time (the node is suspected: try again); False to raise ``exc``, and a
        read's breaker trial (``token``) is released first, since ``exc`` says nothing
        of the node.

        Raises:
            ManagerClosed: the pool timed out because the manager is closing.
        """
        if isinstance(exc, PoolTimeout) and not self.view.closed:
            self.no_connection(node, token, timeout, readonly)
            return True
        self.breakers.release(node, token)
        if isinstance(exc, PoolTimeout):
            raise ManagerClosed(f"manager {self.view.name} is closed") from None
        return False

    def interrupted_commit(self, node: str, exc: BaseException) -> None:
        """Something other than a server's error (a cancellation, an interrupt) ended a
        write's COMMIT: it may or may not have committed; counted unknown, never retried."""
        self._counters.query(node, "write", "unknown")
        logger.warning(
            "a write on %s was interrupted during COMMIT (%s): it may or may not have committed",
            node,
            type(exc).__name__,
        )

    def no_connection(self, node: str, token: int, timeout: float, readonly: bool) -> None:
        """No pooled connection within ``timeout``: avoid the node, and for a read tell its
        breaker, unless the application has every connection of the pool checked out."""
        self.suspect(node, f"no pooled connection within {timeout:.2f}s", lost=False)
        if not readonly:
            return
        if self._pools.saturated(node):
            self.breakers.release(node, token)
        else:
            self.report(node, token, psycopg.OperationalError("no pooled connection in time"))

    def write_failed(self, node: str, exc: psycopg.Error, phase: Phase) -> bool:
        """A write's ``exc`` in ``phase``: True to retry it on the primary; else raise.

        Raises:
            WriteOutcomeUnknown: the connection was lost during COMMIT.
        """
        verdict = classify(exc, phase)
        if verdict == "raise":
            self._counters.query(node, "write", "error")
            return False
        self.suspect(node, brief(exc), lost=verdict != "readonly")
        if verdict == "unknown":
            self._counters.query(node, "write", "unknown")
            raise WriteOutcomeUnknown(
                f"connection to {node} lost during COMMIT: the write may or may not "
                "have committed; it was not retried"
            ) from exc
        self._counters.query(node, "write", "retry")
        return True

    def write_done(self, node: str) -> None:
        """A write committed on ``node``."""
        self._counters.query(node, "write", "ok")
        self._on_write(node)

    def read_failed(self, node: str, token: int, route: str, exc: BaseException) -> bool:
        """A read's ``exc``: True to retry it on another node; else raise."""
        self.report(node, token, exc)
        conflict = isinstance(exc, psycopg.Error) and exc.sqlstate == "40001"
        if not (is_connection_error(exc) or (conflict and self.view.snapshot.primary != node)):
            if isinstance(exc, psycopg.Error):
                self._counters.query(node, route, "error")
            return False
        if not conflict:
            self.suspect(node, brief(exc))
        self._counters.query(node, route, "retry")
        return True

    def read_done(self, node: str, token: int, route: str) -> None:
        """A read succeeded on ``node``."""
        self.report(node, token)
        self._counters.query(node, route, "ok")

    def no_reader(self, last: BaseException | None) -> NoStandbyAvailable:
        """The error of a read that found no node within the failover wait."""
        snap = self.view.snapshot
        return NoStandbyAvailable(
            f"no node could serve a read within {self._wait_timeout:g}s"
            + (f": {last}" if last else f" (cluster {self.view.name} is {snap.state.value})")
        )

    def too_many(self, last: BaseException | None) -> NoPrimaryAvailable:
        """The error of a write retried :data:`MAX_ATTEMPTS` times."""
        return NoPrimaryAvailable(f"write failed after {MAX_ATTEMPTS} attempts: {last}")

    def commit_failed(self, node: str, exc: psycopg.Error) -> None:
        """A session's COMMIT raised ``exc``.

        Raises:
            WriteOutcomeUnknown: the connection was lost during COMMIT.
        """
        if classify(exc, "commit") == "unknown":
            self.suspect(node, f"COMMIT lost: {exc}")
            raise WriteOutcomeUnknown(
                f"connection to {node} lost during COMMIT: outcome unknown"
            ) from exc

    def session_failed(self, node: str, route: str, exc: BaseException) -> None:
        """A session's block (or its COMMIT) raised ``exc``: suspect a lost node, count
        (``unknown`` for a COMMIT whose connection was lost, else ``error``)."""
        verdict = classify(exc, "statement")
        if isinstance(exc, psycopg.Error) and verdict != "raise":
            self.suspect(node, brief(exc), lost=verdict != "readonly")
        lost_commit = isinstance(exc, WriteOutcomeUnknown)  # as a query()'s lost COMMIT
        self._counters.query(node, route, "unknown" if lost_commit else "error")

    def session_done(self, node: str, readonly: bool) -> None:
        """A session's block committed on ``node``."""
        self._counters.query(node, "read" if readonly else "write", "ok")
        if not readonly:
            self._on_write(node)
