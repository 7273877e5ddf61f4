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
recovery conflicts. Every connection-type error makes the manager suspect
the node and probe at once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from psycopg import pq

from pgfailover.errors import (
    NoPrimaryAvailable,
    NoStandbyAvailable,
    PgFailoverError,
    WriteOutcomeUnknown,
)
from pgfailover.routing import read_order

if TYPE_CHECKING:
    from pgfailover.manager import FailoverManager

__all__ = ["classify", "client", "run_read", "run_write"]

Verdict = Literal["retry", "readonly", "unknown", "raise"]
Params = Sequence[Any] | dict[str, Any] | None
Row = tuple[Any, ...]

_GONE_STATES = {"57P01", "57P02", "57P03"}  # admin shutdown, crash shutdown, cannot connect now
_MAX_ATTEMPTS = 100


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


def run_write(mgr: FailoverManager, sql: Any, params: Params) -> list[Row]:
    """Run a write on the primary (see the module docstring for retries)."""
    deadline = time.monotonic() + mgr.config.failover_wait_timeout
    last: BaseException | None = None
    for _ in range(_MAX_ATTEMPTS):
        node = mgr.wait_for_primary(deadline)
        conn = mgr.checkout(node, deadline)
        if conn is None:
            mgr.counters.query(node, "write", "retry")
            continue
        phase: Literal["statement", "commit"] = "statement"
        try:
            cur = conn.execute(sql, params)
            rows = cur.fetchall() if cur.description else []
            phase = "commit"
            conn.commit()
        except psycopg.Error as exc:
            verdict = classify(exc, phase)
            mgr.checkin(node, conn)
            if verdict == "raise":
                mgr.counters.query(node, "write", "error")
                raise
            mgr.suspect(node, f"{type(exc).__name__}: {str(exc).strip()[:200]}")
            if verdict == "unknown":
                mgr.counters.query(node, "write", "unknown")
                raise WriteOutcomeUnknown(
                    f"connection to {node} lost during COMMIT: the write may or may not have "
                    "committed; it was not retried"
                ) from exc
            mgr.counters.query(node, "write", "retry")
            last = exc
            continue
        mgr.checkin(node, conn)
        mgr.counters.query(node, "write", "ok")
        mgr._actions.wrote(node)
        return rows
    raise NoPrimaryAvailable(f"write failed after {_MAX_ATTEMPTS} attempts: {last}") from last


def run_read(
    mgr: FailoverManager, sql: Any, params: Params, min_lsn: int | None = None
) -> list[Row]:
    """Run a read on a fitting standby, else the primary, retrying elsewhere.

    ``min_lsn``: only standbys known to have replayed that far (read-your-writes).
    """
    deadline = time.monotonic() + mgr.config.failover_wait_timeout
    tried: set[str] = set()
    last: BaseException | None = None
    for _ in range(_MAX_ATTEMPTS):
        order = read_order(mgr.snapshot, mgr.config, mgr.read_strategy, mgr.suspects(), min_lsn)
        order = [n for n in order if n not in tried]
        if not order:
            if time.monotonic() >= deadline:
                break
            tried.clear()
            mgr.wake()
            mgr.wait_for_change(min(0.1, max(0.0, deadline - time.monotonic())))
            continue
        node = order[0]
        route = "read" if node != mgr.snapshot.primary else "read_primary"
        conn = mgr.checkout(node, deadline)
        if conn is None:
            tried.add(node)
            mgr.counters.query(node, route, "retry")
            continue
        try:
            cur = conn.execute(sql, params)
            rows = cur.fetchall() if cur.description else []
            conn.commit()
        except psycopg.Error as exc:
            mgr.checkin(node, conn)
            conflict = exc.sqlstate == "40001" and mgr.snapshot.primary != node
            if not (is_connection_error(exc) or conflict):
                mgr.counters.query(node, route, "error")
                raise
            if not conflict:
                mgr.suspect(node, f"{type(exc).__name__}: {str(exc).strip()[:200]}")
            mgr.counters.query(node, route, "retry")
            tried.add(node)
            last = exc
            continue
        mgr.checkin(node, conn)
        mgr.counters.query(node, route, "ok")
        return rows
    raise NoStandbyAvailable(
        f"no node could serve a read within {mgr.config.failover_wait_timeout:g}s"
        + (f": {last}" if last else f" (cluster {mgr.name} is {mgr.snapshot.state.value})")
    ) from last


@contextmanager
def client(mgr: FailoverManager, readonly: bool) -> Iterator[psycopg.Connection[Row]]:
    """A pooled connection for a block of work (``get_client``)."""
    deadline = time.monotonic() + mgr.config.failover_wait_timeout
    conn = None
    node = ""
    while conn is None:
        if readonly:
            order = read_order(mgr.snapshot, mgr.config, mgr.read_strategy, mgr.suspects())
            if not order:
                if time.monotonic() >= deadline:
                    raise NoStandbyAvailable(f"no node can serve reads (cluster {mgr.name})")
                mgr.wake()
                mgr.wait_for_change(0.1)
                continue
            node = order[0]
        else:
            node = mgr.wait_for_primary(deadline)
        conn = mgr.checkout(node, deadline)
        if conn is None and time.monotonic() >= deadline:
            raise NoPrimaryAvailable(f"no connection to {node} within the failover wait")
    route = "write" if not readonly else "read"
    try:
        yield conn
        if conn.pgconn.transaction_status == pq.TransactionStatus.INTRANS:
            try:
                conn.commit()
            except psycopg.Error as exc:
                if classify(exc, "commit") == "unknown":
                    mgr.suspect(node, f"COMMIT lost: {exc}")
                    raise WriteOutcomeUnknown(
                        f"connection to {node} lost during COMMIT: outcome unknown"
                    ) from exc
                raise
        mgr.counters.query(node, route, "ok")
        if not readonly:
            mgr._actions.wrote(node)
    except BaseException as exc:
        if isinstance(exc, psycopg.Error) and classify(exc, "statement") in ("retry", "readonly"):
            mgr.suspect(node, f"{type(exc).__name__}: {str(exc).strip()[:200]}")
        mgr.counters.query(node, route, "error")
        if not conn.closed and conn.info.transaction_status != pq.TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
        raise
    finally:
        mgr.checkin(node, conn)
