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
out of reads a node whose queries keep failing while its probes pass; when
every node that could serve a read is held out, the read fails at once.

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
                self.breakers.sync(snap)  # a node whose probe failed: health takes over
                cached = self._readers = (snap, suspects, tuple(read_candidates(snap, suspects)))
            order = read_order(snap, self.strategy, suspects, candidates=cached[2])
        if not self.breakers.tripped:
            return order
        return self.breakers.arrange(order, time.monotonic())

    def _held_out(self, min_lsn: int | None, tried: set[str]) -> str | None:
        """Why no read can go anywhere: every untried node that could serve it is held out."""
        tripped = self.breakers.tripped
        if not tripped:
            return None
        snap, suspects = self.view.snapshot, self.view.suspects
        fits = [n for n in read_order(snap, self.strategy, suspects, min_lsn) if n not in tried]
        if not fits or not all(n in tripped for n in fits):
            return None
        return self.breakers.describe(fits, time.monotonic())

    def _read_failed(self, node: str, error: str) -> None:
        """A read on ``node`` failed with a connection error: tell its breaker."""
        try:
            up = self.view.snapshot.node(node).up
        except KeyError:
            return
        self.breakers.failure(node, error, up=up, now=time.monotonic())

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

    def _wait_for_readers(
        self,
        deadline: float,
        min_lsn: int | None = None,
        tried: set[str] | None = None,
        last: BaseException | None = None,
    ) -> bool:
        """No node can serve a read: probe and wait a little; False once past ``deadline``.

        Raises:
            NoStandbyAvailable: at once when circuit breakers hold out every
                node that could serve it (waiting would not help).
        """
        held = self._held_out(min_lsn, tried or set())
        if held is not None:
            raise NoStandbyAvailable(f"no node can serve a read now: {held}") from last
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
        breakers = self.breakers
        for _ in range(_MAX_ATTEMPTS):
            order = [n for n in self.read_order(min_lsn) if n not in tried]
            if not order:
                if not self._wait_for_readers(deadline, min_lsn, tried, last):
                    break
                tried.clear()
                continue
            node = order[0]
            if not breakers.admit(node, time.monotonic()):
                tried.add(node)  # another request is the half-open trial
                continue
            primary = self.view.snapshot.primary
            route = "read" if node != primary else "read_primary"
            conn = self._checkout(node, deadline)
            if conn is None:
                self._read_failed(node, "no pooled connection in time")
                tried.add(node)
                count(node, route, "retry")
                continue
            try:
                cur = conn.execute(sql, params)
                rows = cur.fetchall() if cur.description else []
                conn.commit()
            except psycopg.Error as exc:
                self._pools.checkin(node, conn)
                conflict = exc.sqlstate == "40001" and primary != node
                if not is_connection_error(exc):
                    breakers.success(node, time.monotonic())  # the node answered
                if not (is_connection_error(exc) or conflict):
                    count(node, route, "error")
                    raise
                if not conflict:
                    self.suspect(node, _brief(exc))
                    self._read_failed(node, _brief(exc))
                count(node, route, "retry")
                tried.add(node)
                last = exc
                continue
            self._pools.checkin(node, conn)
            breakers.success(node, time.monotonic())
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

    def acquire(self, readonly: bool) -> tuple[str, Connection]:
        """A node and a connection from its pool, waiting up to ``failover_wait_timeout``."""
        deadline = time.monotonic() + self._wait_timeout
        while True:
            if readonly:
                order = self.read_order()
                if not order:
                    if not self._wait_for_readers(deadline):
                        raise NoStandbyAvailable(
                            f"no node can serve reads (cluster {self.view.name})"
                        )
                    continue
                node = order[0]
                if not self.breakers.admit(node, time.monotonic()):
                    self.view.wait_for_change(0.01)  # another request is the half-open trial
                    continue
            else:
                node = self.wait_for_primary(deadline)
            conn = self._checkout(node, deadline)
            if conn is not None:
                return node, conn
            if readonly:
                self._read_failed(node, "no pooled connection in time")
            if time.monotonic() >= deadline:
                raise NoPrimaryAvailable(f"no connection to {node} within the failover wait")

    def release(
        self, node: str, conn: Connection, readonly: bool, exc: BaseException | None
    ) -> None:
        """End a :class:`Session`: commit (or roll back after ``exc``), count, give it back."""
        route = "read" if readonly else "write"
        try:
            if exc is not None:
                self._fail(node, conn, route, exc)
                return
            try:
                self._finish(node, conn)
            except BaseException as failed:
                self._fail(node, conn, route, failed)
                raise
            self._counters.query(node, route, "ok")
            if readonly:
                self.breakers.success(node, time.monotonic())
            else:
                self._on_write(node)
        finally:
            self._pools.checkin(node, conn)

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
            if route == "read" and is_connection_error(exc):
                self._read_failed(node, _brief(exc))
        elif route == "read":  # the node answered: the block's own error
            self.breakers.success(node, time.monotonic())
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

    __slots__ = ("_conn", "_executor", "_node", "_readonly", "_used")

    def __init__(self, executor: Executor, readonly: bool) -> None:
        self._executor = executor
        self._readonly = readonly
        self._node = ""
        self._conn: Connection | None = None
        self._used = False

    def __enter__(self) -> psycopg.Connection[Row]:
        if self._used:
            raise RuntimeError("a get_client() session can be entered only once")
        self._used = True
        self._node, conn = self._executor.acquire(self._readonly)
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
        self._executor.release(self._node, conn, self._readonly, exc)

    def __del__(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:  # abandoned inside its block: roll back, give it back
            with contextlib.suppress(Exception):
                self._executor.release(
                    self._node, conn, self._readonly, RuntimeError("session abandoned")
                )
