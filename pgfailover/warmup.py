"""``pool_warmup``: SQL run on every new pool connection, so a promoted standby's first
writes find their connections ready.

A PostgreSQL backend loads the catalog entries of a table (its columns, its
indexes, their operators) the first time a statement uses it, and keeps
them for its life. A manager keeps a pool per node, standbys included, so
after a failover the writes go to connections opened while the new
primary was a standby; if the application only wrote, those connections
never ran a statement, and at the failover every one of them loads the
same entries at once, on the server that is also finishing its promotion.
Measured with ``benchmarks/warmup.py`` on 2 CPUs (200 connections to a
standby, the standby promoted, 200 writes let go at once): p99 0.129 s warm
against 0.153 s cold, medians of 6 alternating pairs. A few tens of
milliseconds, paid at the worst moment; nothing in steady state.

The warm-up runs right after psycopg_pool opens a connection (its
``configure`` hook), before the caller's own ``configure``, inside a
transaction that is always rolled back: it reads on a standby and changes
nothing on a primary (``SELECT 1 FROM orders WHERE id = 0`` plans and runs
a lookup by the primary key, loading the table's and the index's entries).
It may wait for ``connect_timeout`` at most (``statement_timeout`` and
``lock_timeout`` are set for its transaction): a migration holding a lock
on the table must not hold the pool's new connections. A warm-up that
fails (a table not yet created, a statement a standby refuses, a timeout)
is logged, once per pool until it succeeds again, and the connection is
used all the same: the warm-up is an optimisation, never a reason to be
without connections. A connection the failure left broken is given back to
the pool to discard.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from pgfailover.errors import first_line

__all__ = ["async_warm_configure", "warm_configure"]

logger = logging.getLogger(__name__)


class _Warnings:
    """Logs a pool's failing warm-up once until it succeeds again.

    Locks: ``_lock`` guards the failing flag (a leaf, held for a flip).
    """

    def __init__(self, pool: str) -> None:
        self._pool = pool
        self._lock = threading.Lock()
        self._failing = False  # guarded by self._lock

    def failed(self, exc: psycopg.Error) -> None:
        with self._lock:
            first, self._failing = not self._failing, True
        message = first_line(exc)
        logger.log(
            logging.WARNING if first else logging.DEBUG,
            "pool %s: pool_warmup failed (%s); the connection is used without it",
            self._pool,
            message,
        )

    def succeeded(self) -> None:
        with self._lock:
            self._failing = False


def _limits(timeout: float) -> bytes:
    """The statement bounding the warm-up's transaction to ``timeout`` seconds."""
    ms = max(1, round(timeout * 1000))
    return f"SET LOCAL statement_timeout = {ms}; SET LOCAL lock_timeout = {ms}".encode()


def warm_configure(
    sql: str,
    pool: str,
    then: Callable[[psycopg.Connection[Any]], None] | None,
    *,
    timeout: float,
) -> Callable[[psycopg.Connection[Any]], None]:
    """psycopg_pool's ``configure`` for the pool named ``pool``: ``sql`` rolled back
    (waiting ``timeout`` seconds at most), then ``then`` (the caller's own
    ``configure``, if any)."""
    warnings = _Warnings(pool)
    limits, query = _limits(timeout), sql.encode()

    def configure(conn: psycopg.Connection[Any]) -> None:
        try:
            with conn.transaction(force_rollback=True):
                conn.execute(limits)
                conn.execute(query)
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                raise  # nothing to keep: the pool discards it and opens another
            warnings.failed(exc)
        else:
            warnings.succeeded()
        if then is not None:
            then(conn)

    return configure


def async_warm_configure(
    sql: str,
    pool: str,
    then: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]] | None,
    *,
    timeout: float,
) -> Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]]:
    """:func:`warm_configure` for an ``AsyncConnectionPool``."""
    warnings = _Warnings(pool)
    limits, query = _limits(timeout), sql.encode()

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        try:
            async with conn.transaction(force_rollback=True):
                await conn.execute(limits)
                await conn.execute(query)
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                raise
            warnings.failed(exc)
        else:
            warnings.succeeded()
        if then is not None:
            await then(conn)

    return configure
