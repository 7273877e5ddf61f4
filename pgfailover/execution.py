"""Running statements for the manager on threads: waiting, retrying, sessions.

Every decision (where a statement goes, what an error means, the circuit
breakers, the counters) and every retry loop is shared with the asyncio
executor: the decisions are :class:`~pgfailover.dispatch.Dispatcher`'s (see
it for the rules), the loops are the generators of :mod:`pgfailover.plans`.
This module performs the operations a plan yields, blocking the calling
thread.

The happy path is what every application query pays, so it takes no lock of
its own: it reads the published snapshot, takes a connection from the
node's pool, runs the statement, gives the connection back and counts it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any, TypeVar

import psycopg

from pgfailover.dispatch import Verdict, classify, is_connection_error, returns_rows
from pgfailover.plans import (
    CHECKIN,
    CHECKOUT,
    COMMIT,
    EXECUTE,
    PRIMARY,
    ROLLBACK,
    Plan,
    Planner,
)
from pgfailover.pools import NodePools

__all__ = ["Executor", "Session", "Verdict", "classify", "is_connection_error"]

Params = Sequence[Any] | dict[str, Any] | None
Row = tuple[Any, ...]
Connection = psycopg.Connection[Any]

T = TypeVar("T")


class Executor(Planner[NodePools]):
    """Routes and runs statements over the published view and the node pools, blocking
    the calling thread while it waits: it performs the operations of the
    :mod:`~pgfailover.plans` (constructor: :class:`~pgfailover.dispatch.Dispatcher`).

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

    # -- statements -----------------------------------------------------------

    def run_write(self, sql: Any, params: Params) -> list[Row]:
        """Run a write on the primary (see :mod:`pgfailover.dispatch` for retries)."""
        return self._drive(self.plan_write(sql, params))

    def run_read(self, sql: Any, params: Params, min_lsn: int | None = None) -> list[Row]:
        """Run a read on a fitting standby, else the primary, retrying elsewhere.

        ``min_lsn``: only standbys known to have replayed that far (read-your-writes).
        """
        return self._drive(self.plan_read(sql, params, min_lsn))

    def client(self, readonly: bool) -> Session:
        """A pooled connection for a block of work (``get_client``)."""
        return Session(self, readonly)

    def acquire(self, readonly: bool) -> tuple[str, Connection, int]:
        """A node, a connection from its pool and the breaker trial it is (0: none),
        waiting up to ``failover_wait_timeout``."""
        return self._drive(self.plan_acquire(readonly))

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
        self._drive(self.plan_release(node, conn, readonly, exc, token))

    def _drive(self, plan: Plan[T]) -> T:
        """Run ``plan`` to its end, performing each operation it yields by blocking."""
        sent: Any = None
        error: BaseException | None = None
        pools = self._pools
        while True:
            try:
                op = plan.send(sent) if error is None else plan.throw(error)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            except BaseException:
                error = sent = None  # no cycle through this frame's traceback
                raise
            error = sent = None
            kind = op[0]
            try:
                if kind == EXECUTE:
                    cur = op[1].execute(op[2], op[3])
                    sent = cur.fetchall() if returns_rows(cur) else []
                elif kind == CHECKOUT:
                    sent = pools.checkout(op[1], op[2])
                elif kind == COMMIT:
                    op[1].commit()
                elif kind == CHECKIN:
                    pools.checkin(op[1], op[2])
                elif kind == PRIMARY:
                    sent = self.wait_for_primary(op[1])
                elif kind == ROLLBACK:
                    op[1].rollback()
                else:  # WAIT
                    self.view.wait_for_change(op[1])
            except BaseException as exc:  # noqa: BLE001 - thrown into the plan, which decides
                error = exc


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
