"""Running statements for the manager: routing, retries, and honest errors.

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

The happy path is what every application query pays, so it takes no lock of
its own: it reads the published snapshot, takes a connection from the
node's pool, runs the statement, gives the connection back and counts it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

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
from pgfailover.pools import NodePools
from pgfailover.routing import ReadStrategy, read_candidates, read_order, write_target

__all__ = ["Executor", "Session", "classify", "is_connection_error"]

logger = logging.getLogger(__name__)

Verdict = Literal["retry", "readonly", "unknown", "raise"]
Params = Sequence[Any] | dict[str, Any] | None
Row = tuple[Any, ...]
Connection = psycopg.Connection[Any]

_GONE_STATES = {"57P01", "57P02", "57P03"}  # admin shutdown, crash shutdown, cannot connect now
_MAX_ATTEMPTS = 100
_INTRANS = pq.TransactionStatus.INTRANS
_IDLE = pq.TransactionStatus.IDLE


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


def classify(exc: BaseException, phase: Literal["statement", "commit"]) -> Verdict:
    """What to do after ``exc`` was raised in ``phase`` of a write."""
    if isinstance(exc, psycopg.Error) and exc.sqlstate == "25006":
        return "readonly"
    if is_connection_error(exc):
        return "retry" if phase == "statement" else "unknown"
    return "raise"


def _brief(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip()[:200]}"


class Executor:
    """Routes and runs statements over the published view and the node pools.

    ``wake`` asks for a probe round now; ``idle_probe`` runs one from the
    calling thread when no monitor thread runs (a write waiting for a
    primary must not wait forever); ``on_write`` hears of every write a node
    acknowledged (the failover clock stops at the first on a new primary);
    ``breakers`` are the nodes' read circuit breakers.

    Thread safety: every method may be called from any thread; the class
    owns no lock (the view, the pools and the counters have their own).
    """

    def __init__(
        self,
        view: ClusterView,
        pools: NodePools,
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
        self._on_write = on_write
        self._readers: tuple[Snapshot | None, frozenset[str], tuple[NodeState, ...]] = (
            None,
            frozenset(),
            (),
        )

    # -- where a statement goes ---------------------------------------------

    def suspect(self, node: str, reason: str) -> None:
        """A statement found ``node`` gone or read-only: avoid it and probe now."""
        if self.view.suspect(node):
            logger.info("node %s suspect after a query error: %s", node, reason)
        self._wake()

    def wait_for_primary(self, deadline: float) -> str:
        """The primary's name, waiting until ``deadline`` (monotonic) for one.

        Raises:
            ManagerClosed, SplitBrainError, NoPrimaryAvailable.
        """
        view = self.view
        target = write_target(view.snapshot, view.suspects)
        if target is not None and not view.closed and not view.held:
            return target
        self._wake()
        return view.wait_for_primary(deadline, self._poll, self._idle_probe)

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

    def _report(self, node: str, token: int, exc: BaseException | None = None) -> None:
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
            self.breakers.failure(node, _brief(exc), healthy=healthy, now=now)
        elif exc is None or isinstance(exc, psycopg.Error):
            self.breakers.success(node, now, token)
        self.breakers.release(node, token)

    def _admitted(self, order: list[str]) -> tuple[str, int]:
        """The first node of ``order`` its breaker lets through, and the trial it is (0: not
        a trial); the first node when none does (their trials are taken: go all the same)."""
        now = time.monotonic()
        for node in order:
            allowed, token = self.breakers.admit(node, now)
            if allowed:
                return node, token
        return order[0], 0

    def _no_connection(self, node: str, token: int) -> None:
        """No pooled connection in time: a failure of the node unless the application has
        every connection of the pool checked out (its own load)."""
        if self._pools.saturated(node):
            self.breakers.release(node, token)
        else:
            self._report(node, token, psycopg.OperationalError("no pooled connection in time"))

    def read_target(self, min_lsn: int | None = None) -> str:
        """The node a read should go to now; waits for a primary when none can serve."""
        order = self.read_order(min_lsn)
        if order:
            return order[0]
        return self.wait_for_primary(time.monotonic() + self._wait_timeout)

    def _checkout(self, node: str, deadline: float) -> Connection | None:
        """A connection from ``node``'s pool, or ``None`` (node suspected) before ``deadline``."""
        timeout = max(0.05, min(self._pool_timeout, deadline - time.monotonic()))
        try:
            return self._pools.checkout(node, timeout)
        except PoolTimeout:
            if self.view.closed:
                raise ManagerClosed(f"manager {self.view.name} is closed") from None
            self.suspect(node, f"no pooled connection within {timeout:.2f}s")
            return None

    def _wait_for_readers(self, deadline: float) -> bool:
        """No node can serve a read: probe and wait a little; False once past ``deadline``."""
        if time.monotonic() >= deadline:
            return False
        self._wake()
        self.view.wait_for_change(min(0.1, max(0.0, deadline - time.monotonic())))
        return True

    # -- statements -----------------------------------------------------------

    def run_write(self, sql: Any, params: Params) -> list[Row]:
        """Run a write on the primary (see the module docstring for retries)."""
        deadline = time.monotonic() + self._wait_timeout
        count = self._counters.query
        last: BaseException | None = None
        for _ in range(_MAX_ATTEMPTS):
            node = self.wait_for_primary(deadline)
            conn = self._checkout(node, deadline)
            if conn is None:
                count(node, "write", "retry")
                continue
            phase: Literal["statement", "commit"] = "statement"
            try:
                cur = conn.execute(sql, params)
                rows = cur.fetchall() if cur.description else []
                phase = "commit"
                conn.commit()
            except psycopg.Error as exc:
                verdict = classify(exc, phase)
                self._pools.checkin(node, conn)
                if verdict == "raise":
                    count(node, "write", "error")
                    raise
                self.suspect(node, _brief(exc))
                if verdict == "unknown":
                    count(node, "write", "unknown")
                    raise WriteOutcomeUnknown(
                        f"connection to {node} lost during COMMIT: the write may or may not "
                        "have committed; it was not retried"
                    ) from exc
                count(node, "write", "retry")
                last = exc
                continue
            self._pools.checkin(node, conn)
            count(node, "write", "ok")
            self._on_write(node)
            return rows
        raise NoPrimaryAvailable(f"write failed after {_MAX_ATTEMPTS} attempts: {last}") from last

    def run_read(self, sql: Any, params: Params, min_lsn: int | None = None) -> list[Row]:
        """Run a read on a fitting standby, else the primary, retrying elsewhere.

        ``min_lsn``: only standbys known to have replayed that far (read-your-writes).
        """
        deadline = time.monotonic() + self._wait_timeout
        count = self._counters.query
        tried: set[str] = set()
        last: BaseException | None = None
        for _ in range(_MAX_ATTEMPTS):
            order = [n for n in self.read_order(min_lsn) if n not in tried]
            if not order:
                if not self._wait_for_readers(deadline):
                    break
                tried.clear()
                continue
            node, token = self._admitted(order)
            primary = self.view.snapshot.primary
            route = "read" if node != primary else "read_primary"
            conn = self._checkout(node, deadline)
            if conn is None:
                self._no_connection(node, token)
                tried.add(node)
                count(node, route, "retry")
                continue
            try:
                cur = conn.execute(sql, params)
                rows = cur.fetchall() if cur.description else []
                conn.commit()
            except BaseException as exc:
                self._pools.checkin(node, conn)
                self._report(node, token, exc)
                conflict = isinstance(exc, psycopg.Error) and exc.sqlstate == "40001"
                if not (is_connection_error(exc) or (conflict and primary != node)):
                    if isinstance(exc, psycopg.Error):
                        count(node, route, "error")
                    raise
                if not conflict:
                    self.suspect(node, _brief(exc))
                count(node, route, "retry")
                tried.add(node)
                last = exc
                continue
            self._pools.checkin(node, conn)
            self._report(node, token)
            count(node, route, "ok")
            return rows
        snap = self.view.snapshot
        raise NoStandbyAvailable(
            f"no node could serve a read within {self._wait_timeout:g}s"
            + (f": {last}" if last else f" (cluster {self.view.name} is {snap.state.value})")
        ) from last

    def client(self, readonly: bool) -> Session:
        """A pooled connection for a block of work (``get_client``)."""
        return Session(self, readonly)

    def acquire(self, readonly: bool) -> tuple[str, Connection, int]:
        """A node, a connection from its pool and the breaker trial it is (0: none),
        waiting up to ``failover_wait_timeout``."""
        deadline = time.monotonic() + self._wait_timeout
        token = 0
        while True:
            if readonly:
                order = self.read_order()
                if not order:
                    if not self._wait_for_readers(deadline):
                        raise NoStandbyAvailable(
                            f"no node can serve reads (cluster {self.view.name})"
                        )
                    continue
                node, token = self._admitted(order)
            else:
                node = self.wait_for_primary(deadline)
            conn = self._checkout(node, deadline)
            if conn is not None:
                return node, conn, token
            if readonly:
                self._no_connection(node, token)
            if time.monotonic() >= deadline:
                raise NoPrimaryAvailable(f"no connection to {node} within the failover wait")

    def release(
        self,
        node: str,
        conn: Connection,
        readonly: bool,
        exc: BaseException | None,
        token: int = 0,
    ) -> None:
        """End a :class:`Session`: commit (or roll back after ``exc``), count, give it back.

        ``token``: the breaker trial the session was (:meth:`acquire`).
        """
        route = "read" if readonly else "write"
        outcome: BaseException | None = None
        try:
            if exc is not None:
                outcome = exc
                self._fail(node, conn, route, exc)
                return
            try:
                self._finish(node, conn)
            except BaseException as failed:
                outcome = failed
                self._fail(node, conn, route, failed)
                raise
            self._counters.query(node, route, "ok")
            if not readonly:
                self._on_write(node)
        finally:
            self._pools.checkin(node, conn)
            if readonly:
                self._report(node, token, outcome)

    def _finish(self, node: str, conn: Connection) -> None:
        """Commit what the block left open; a lost COMMIT is ``WriteOutcomeUnknown``."""
        if conn.pgconn.transaction_status != _INTRANS:
            return
        try:
            conn.commit()
        except psycopg.Error as exc:
            if classify(exc, "commit") == "unknown":
                self.suspect(node, f"COMMIT lost: {exc}")
                raise WriteOutcomeUnknown(
                    f"connection to {node} lost during COMMIT: outcome unknown"
                ) from exc
            raise

    def _fail(self, node: str, conn: Connection, route: str, exc: BaseException) -> None:
        """The block (or its COMMIT) raised ``exc``: suspect a lost node, roll back, count."""
        if isinstance(exc, psycopg.Error) and classify(exc, "statement") != "raise":
            self.suspect(node, _brief(exc))
        self._counters.query(node, route, "error")
        if not conn.closed and conn.pgconn.transaction_status != _IDLE:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()


class Session:
    """``with mgr.get_client() as conn:``: a pooled connection for one block of work.

    A plain class rather than a generator-based context manager: it is on
    every ``get_client()`` call, and this way costs a few calls less. It can
    be entered once (a second ``with`` on the same object is an error, never
    a second connection that the first one's exit would give back), and a
    session dropped without its ``with`` ending is rolled back and returned
    when it is garbage-collected.
    """

    __slots__ = ("_conn", "_executor", "_node", "_readonly", "_token", "_used")

    def __init__(self, executor: Executor, readonly: bool) -> None:
        self._executor = executor
        self._readonly = readonly
        self._node = ""
        self._token = 0  # the breaker trial this session is (0: none)
        self._conn: Connection | None = None
        self._used = False

    def __enter__(self) -> psycopg.Connection[Row]:
        if self._used:
            raise RuntimeError("a get_client() session can be entered only once")
        self._used = True
        self._node, conn, self._token = self._executor.acquire(self._readonly)
        self._conn = conn
        return conn

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if exc is None and exc_type is not None:  # an exit called with the type only
            exc = RuntimeError(f"the block raised {exc_type.__name__}")
        self._executor.release(self._node, conn, self._readonly, exc, self._token)

    def __del__(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:  # abandoned inside its block: roll back, give it back
            abandoned = RuntimeError("session abandoned")
            with contextlib.suppress(Exception):
                self._executor.release(self._node, conn, self._readonly, abandoned, self._token)
