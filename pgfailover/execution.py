"""Running statements for the manager on threads: waiting, retrying, sessions.

Every decision (where a statement goes, what an error means, the circuit
breakers, the counters) is :class:`~pgfailover.dispatch.Dispatcher`'s, shared
with the asyncio executor; this module adds blocking waits and the
statements themselves (see :mod:`pgfailover.dispatch` for the rules). The
steps are written out straight, as in the asyncio executor, not driven from
one shared generator: under threads doing I/O, a generator driver cost
every ``get_client()`` 6 µs of CPU (measured), 10 % of a ``SELECT 1``.

The happy path is what every application query pays, so it takes no lock of
its own: it reads the published snapshot, takes a connection from the
node's pool, runs the statement, gives the connection back and counts it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any, Literal

import psycopg
from psycopg import pq

from pgfailover.dispatch import (
    CHECKOUT_SLICE,
    MAX_ATTEMPTS,
    Dispatcher,
    Verdict,
    classify,
    is_connection_error,
    returns_rows,
)
from pgfailover.errors import NoPrimaryAvailable, NoStandbyAvailable
from pgfailover.pools import NodePools
from pgfailover.statements import read, settle

__all__ = ["Executor", "Session", "Verdict", "classify", "is_connection_error"]

Params = Sequence[Any] | dict[str, Any] | None
Row = tuple[Any, ...]
Connection = psycopg.Connection[Any]

_INTRANS = pq.TransactionStatus.INTRANS
_IDLE = pq.TransactionStatus.IDLE


class Executor(Dispatcher[NodePools]):
    """Routes and runs statements over the published view and the node pools, blocking
    the calling thread while it waits (constructor: :class:`Dispatcher`).

    Thread safety: every method may be called from any thread; the class
    owns no lock (the view, the pools and the counters have their own).
    """

    def wait_for_primary(self, deadline: float) -> str:
        """The primary's name, waiting until ``deadline`` (monotonic) for one.

        Raises:
            ManagerClosed, SplitBrainError, NoPrimaryAvailable, ReadOnlyMode.
        """
        target = self.ready_primary()
        if target is not None:
            return target
        # No wake here: what made the write wait asked for a round already (a new
        # suspicion), or the monitor probes fast (no primary in the snapshot).
        return self.view.wait_for_primary(deadline, self._poll, self._idle_probe)

    def read_target(self, min_lsn: int | None = None) -> str:
        """The node a read should go to now; waits for a primary when none can serve."""
        order = self.read_order(min_lsn)
        if order:
            return order[0]
        return self.wait_for_primary(time.monotonic() + self._wait_timeout)

    def _checkout(
        self, node: str, deadline: float, token: int, readonly: bool
    ) -> Connection | None:
        """A connection from ``node``'s pool, or ``None`` (node suspected) before
        ``deadline``; a read's breaker trial (``token``) is released if the wait ends
        otherwise (the manager closed, an interrupt)."""
        timeout = self.checkout_timeout(deadline)
        until = time.monotonic() + timeout
        wait = min(timeout, CHECKOUT_SLICE)
        while True:
            try:
                return self._pools.checkout(node, wait)
            except BaseException as exc:  # noqa: BLE001 - slice_ended raises it again unless a timeout
                more = self.slice_ended(
                    node, exc, token=token, readonly=readonly, timeout=timeout, until=until
                )
                if more is None:
                    return None
                wait = more

    def _wait_for_readers(self, deadline: float) -> bool:
        """No node can serve a read: wait a little for a change; False once past
        ``deadline``.

        No wake: whatever left no node (the primary lost or suspect) asked for
        a round already, and the monitor probes fast while the primary is in
        doubt; waiting readers must not add rounds at their own pace. With no
        monitor thread, a round runs here.
        """
        if time.monotonic() >= deadline:
            return False
        self.view.wait_for_change(min(0.1, max(0.0, deadline - time.monotonic())))
        self._idle_probe()
        return True

    # -- statements -----------------------------------------------------------
    # The same steps as the asyncio executor's, each decided by the Dispatcher;
    # bookkeeping always precedes giving the connection back.

    def run_write(self, sql: Any, params: Params) -> list[Row]:
        """Run a write on the primary (see :mod:`pgfailover.dispatch` for retries)."""
        deadline = time.monotonic() + self._wait_timeout
        last: BaseException | None = None
        for _ in range(MAX_ATTEMPTS):
            node = self.ready_primary() or self.wait_for_primary(deadline)
            conn = self._checkout(node, deadline, 0, False)
            if conn is None:
                self._counters.query(node, "write", "retry")
                continue
            phase: Literal["statement", "commit"] = "statement"
            try:
                try:
                    cur = conn.execute(sql, params)
                    rows = cur.fetchall() if returns_rows(cur) else []
                    phase = "commit"
                    conn.commit()
                except BaseException:
                    settle(conn)  # rolled back here, not by the pool with a warning
                    raise
            except psycopg.Error as exc:
                try:
                    retry = self.write_failed(node, exc, phase)
                finally:
                    self._pools.checkin(node, conn)
                if not retry:
                    raise
                last = exc
                continue
            except BaseException as exc:
                try:
                    if phase == "commit":
                        self.interrupted_commit(node, exc)
                finally:
                    self._pools.checkin(node, conn)
                raise
            try:
                self.write_done(node)
            finally:
                self._pools.checkin(node, conn)
            return rows
        raise self.too_many(last) from last

    def run_read(self, sql: Any, params: Params, min_lsn: int | None = None) -> list[Row]:
        """Run a read on a fitting standby, else the primary, retrying elsewhere.

        ``min_lsn``: only standbys known to have replayed that far (read-your-writes).
        """
        deadline = time.monotonic() + self._wait_timeout
        tried: set[str] = set()
        last: BaseException | None = None
        for _ in range(MAX_ATTEMPTS):
            picked = self.pick_reader(min_lsn, tried)
            if picked is None:
                if not self._wait_for_readers(deadline):
                    break
                tried.clear()
                continue
            node, token, route = picked
            conn = self._checkout(node, deadline, token, True)
            if conn is None:
                tried.add(node)
                self._counters.query(node, route, "retry")
                continue
            try:
                rows = read(conn, sql, params)
            except BaseException as exc:
                try:
                    retry = self.read_failed(node, token, route, exc)
                finally:
                    self._pools.checkin(node, conn)
                if not retry:
                    raise
                tried.add(node)
                last = exc
                continue
            try:
                self.read_done(node, token, route)
            finally:
                self._pools.checkin(node, conn)
            return rows
        raise self.no_reader(last) from last

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
                node, token = self.admitted(order)
            else:
                node = self.ready_primary() or self.wait_for_primary(deadline)
            conn = self._checkout(node, deadline, token, readonly)
            if conn is not None:
                return node, conn, token
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
        committing = False
        try:
            if exc is not None:
                outcome = exc
                self._fail(node, conn, route, exc)
                return
            try:
                if conn.pgconn.transaction_status == _INTRANS:
                    committing = True
                    try:
                        conn.commit()
                    except psycopg.Error as failed:
                        self.commit_failed(node, failed)
                        raise
            except BaseException as failed:
                outcome = failed
                if committing and not readonly and not isinstance(failed, psycopg.Error):
                    self.interrupted_commit(node, failed)
                else:
                    self._fail(node, conn, route, failed)
                raise
            self.session_done(node, readonly)
        finally:
            try:
                if readonly:
                    self.report(node, token, outcome)
            finally:
                self._pools.checkin(node, conn)

    def _fail(self, node: str, conn: Connection, route: str, exc: BaseException) -> None:
        """The block (or its COMMIT) raised ``exc``: suspect a lost node, count, roll back.
        An interrupt (not an ``Exception``) is counted nowhere, as in :meth:`run_write`."""
        if isinstance(exc, Exception):
            self.session_failed(node, route, exc)
        if not conn.closed and conn.pgconn.transaction_status != _IDLE:
            with contextlib.suppress(psycopg.Error):  # the pool discards what it cannot reset
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
