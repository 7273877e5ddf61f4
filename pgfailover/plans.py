"""What running a statement does, step by step, written once for both executors.

A *plan* is a generator: it makes every decision itself (through
:class:`~pgfailover.dispatch.Dispatcher`) and yields, one at a time, the
operations that wait or do I/O; the executor performs each one and sends
the result back in (or throws the exception in). The sync
:class:`~pgfailover.execution.Executor` performs them by blocking, the
:class:`~pgfailover.aio.execution.AsyncExecutor` by awaiting, so the retry
loops, the error verdicts, the breaker trials and the order of bookkeeping
exist once: the executors differ only in how they wait. (psycopg builds its
sync and asyncio connections the same way, on generators.)

The operations, as tuples whose first item is the kind:

- ``(PRIMARY, deadline)``: wait for a primary; sends back its name;
- ``(CHECKOUT, node, timeout)``: a connection from the node's pool;
- ``(EXECUTE, conn, sql, params)``: run the statement; sends back its rows;
- ``(COMMIT, conn)``, ``(ROLLBACK, conn)``;
- ``(CHECKIN, node, conn)``: give the connection back;
- ``(WAIT, seconds)``: wait for the view to change, at most that long.

Bookkeeping comes before the operation that gives a connection back, so
that an asyncio cancellation arriving there cannot skip it. An exception
other than a server's (a cancellation) during COMMIT leaves the write's
outcome unknown: it is counted so and logged, never retried.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Generator
from typing import Any, Literal, TypeVar

import psycopg
from psycopg import pq
from psycopg_pool import PoolTimeout

from pgfailover.dispatch import MAX_ATTEMPTS, Dispatcher, P
from pgfailover.errors import ManagerClosed, NoPrimaryAvailable, NoStandbyAvailable

__all__ = [
    "CHECKIN",
    "CHECKOUT",
    "COMMIT",
    "EXECUTE",
    "PRIMARY",
    "ROLLBACK",
    "WAIT",
    "Op",
    "Plan",
    "Planner",
]

logger = logging.getLogger(__name__)

PRIMARY, CHECKOUT, EXECUTE, COMMIT, ROLLBACK, CHECKIN, WAIT = range(7)
Op = tuple[Any, ...]
T = TypeVar("T")
Plan = Generator[Op, Any, T]
Row = tuple[Any, ...]

_INTRANS = pq.TransactionStatus.INTRANS
_IDLE = pq.TransactionStatus.IDLE


class Planner(Dispatcher[P]):
    """The plans of a write, a read and a session's start and end, over the
    dispatcher's decisions (constructor: :class:`Dispatcher`).

    Thread safety: as :class:`Dispatcher`; a plan is driven by one caller.
    """

    def plan_write(self, sql: Any, params: Any) -> Plan[list[Row]]:
        """A write on the primary, retried while nothing committed (the rules:
        :mod:`pgfailover.dispatch`)."""
        deadline = time.monotonic() + self._wait_timeout
        last: BaseException | None = None
        for _ in range(MAX_ATTEMPTS):
            node = self.ready_primary()  # the happy path: no waiting
            if node is None:
                node = yield (PRIMARY, deadline)
            timeout = self._checkout_timeout(deadline)
            try:
                conn = yield (CHECKOUT, node, timeout)
            except BaseException as exc:
                if not self.checkout_timed_out(node, 0, timeout, False, exc):
                    raise
                conn = None
            if conn is None:
                self._counters.query(node, "write", "retry")
                continue
            phase: Literal["statement", "commit"] = "statement"
            try:
                rows = yield (EXECUTE, conn, sql, params)
                phase = "commit"
                yield (COMMIT, conn)
            except psycopg.Error as exc:
                try:  # decided and counted before the connection goes back
                    retry = self.write_failed(node, exc, phase)
                finally:
                    yield (CHECKIN, node, conn)
                if not retry:
                    raise
                last = exc
                continue
            except BaseException as exc:
                try:
                    if phase == "commit":
                        self._interrupted_commit(node, exc)
                finally:
                    yield (CHECKIN, node, conn)
                raise
            try:  # committed: counted before the connection goes back
                self.write_done(node)
            finally:
                yield (CHECKIN, node, conn)
            return rows  # type: ignore[no-any-return]
        raise self.too_many(last) from last

    def plan_read(self, sql: Any, params: Any, min_lsn: int | None = None) -> Plan[list[Row]]:
        """A read on a fitting standby, else the primary, retried on the next node.

        ``min_lsn``: only standbys known to have replayed that far (read-your-writes).
        """
        deadline = time.monotonic() + self._wait_timeout
        tried: set[str] = set()
        last: BaseException | None = None
        for _ in range(MAX_ATTEMPTS):
            picked = self.pick_reader(min_lsn, tried)
            if picked is None:
                if not (yield from self._wait_for_readers(deadline)):
                    break
                tried.clear()
                continue
            node, token, route = picked
            timeout = self._checkout_timeout(deadline)
            try:
                conn = yield (CHECKOUT, node, timeout)
            except BaseException as exc:
                if not self.checkout_timed_out(node, token, timeout, True, exc):
                    raise
                conn = None
            if conn is None:
                tried.add(node)
                self._counters.query(node, route, "retry")
                continue
            try:
                rows = yield (EXECUTE, conn, sql, params)
                yield (COMMIT, conn)
            except BaseException as exc:
                try:  # decided before the connection goes back
                    retry = self.read_failed(node, token, route, exc)
                finally:
                    yield (CHECKIN, node, conn)
                if not retry:
                    raise
                tried.add(node)
                last = exc
                continue
            try:
                self.read_done(node, token, route)
            finally:
                yield (CHECKIN, node, conn)
            return rows  # type: ignore[no-any-return]
        raise self.no_reader(last) from last

    def plan_acquire(self, readonly: bool) -> Plan[tuple[str, Any, int]]:
        """A node, a connection from its pool and the breaker trial it is (0: none),
        waiting up to ``failover_wait_timeout`` (a ``get_client()`` session's start)."""
        deadline = time.monotonic() + self._wait_timeout
        token = 0
        while True:
            if readonly:
                order = self.read_order()
                if not order:
                    if not (yield from self._wait_for_readers(deadline)):
                        raise NoStandbyAvailable(
                            f"no node can serve reads (cluster {self.view.name})"
                        )
                    continue
                node, token = self.admitted(order)
            else:
                ready = self.ready_primary()
                node = ready if ready is not None else (yield (PRIMARY, deadline))
            timeout = self._checkout_timeout(deadline)
            try:
                conn = yield (CHECKOUT, node, timeout)
            except BaseException as exc:
                if not self.checkout_timed_out(node, token, timeout, readonly, exc):
                    raise
                conn = None
            if conn is not None:
                return node, conn, token
            if time.monotonic() >= deadline:
                raise NoPrimaryAvailable(f"no connection to {node} within the failover wait")

    def plan_release(
        self, node: str, conn: Any, readonly: bool, exc: BaseException | None, token: int
    ) -> Plan[None]:
        """A session's end: commit (or roll back after ``exc``), count, give the connection
        back. ``token``: the breaker trial the session was (:meth:`plan_acquire`)."""
        route = "read" if readonly else "write"
        outcome: BaseException | None = None
        committing = False
        try:
            if exc is not None:
                outcome = exc
                yield from self._fail(node, conn, route, exc)
                return
            try:
                if conn.pgconn.transaction_status == _INTRANS:
                    committing = True
                    try:
                        yield (COMMIT, conn)
                    except psycopg.Error as failed:
                        self.commit_failed(node, failed)
                        raise
            except BaseException as failed:
                outcome = failed
                if committing and not readonly and not isinstance(failed, psycopg.Error):
                    self._interrupted_commit(node, failed)  # the COMMIT may have ended
                else:
                    yield from self._fail(node, conn, route, failed)
                raise
            self.session_done(node, readonly)
        finally:
            try:
                if readonly:
                    self.report(node, token, outcome)
            finally:
                yield (CHECKIN, node, conn)

    # -- parts ----------------------------------------------------------------

    def _checkout_timeout(self, deadline: float) -> float:
        """How long a checkout may wait for a pooled connection before ``deadline``."""
        return max(0.05, min(self._pool_timeout, deadline - time.monotonic()))

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

    def _wait_for_readers(self, deadline: float) -> Plan[bool]:
        """No node can serve a read: probe, wait a little; False once past ``deadline``."""
        if time.monotonic() >= deadline:
            return False
        self._wake()
        yield (WAIT, min(0.1, max(0.0, deadline - time.monotonic())))
        return True

    def _fail(self, node: str, conn: Any, route: str, exc: BaseException) -> Plan[None]:
        """The block (or its COMMIT) raised ``exc``: suspect a lost node, count, roll back.

        A cancellation (not an ``Exception``) is counted nowhere, as in
        :meth:`plan_write` and :meth:`plan_read`: it says nothing of node or statement.
        """
        if isinstance(exc, Exception):
            self.session_failed(node, route, exc)
        if not conn.closed and conn.pgconn.transaction_status != _IDLE:
            with contextlib.suppress(psycopg.Error):  # the pool discards what it cannot reset
                yield (ROLLBACK, conn)

    def _interrupted_commit(self, node: str, exc: BaseException) -> None:
        """Not a server's error but something else (a cancellation) ended a COMMIT."""
        self._counters.query(node, "write", "unknown")
        logger.warning(
            "a write on %s was interrupted during COMMIT (%s): it may or may not have committed",
            node,
            type(exc).__name__,
        )
