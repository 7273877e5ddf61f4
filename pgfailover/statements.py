"""A ``query()`` statement in its own transaction: a read in one round trip, and a
connection handed back as it came.

``query()`` runs one statement in its own transaction. Left to itself,
psycopg spends three round trips on that: ``BEGIN``, the statement,
``COMMIT``. A read needs no explicit transaction: in autocommit mode the
statement is its own implicit transaction, in one round trip (a string of
several statements is still one transaction). Measured on the lab's
loopback, the client pinned to one CPU: a ``SELECT`` of a parameter took
82 µs (58 µs of client CPU) against 152 µs (94 µs).

A write keeps psycopg's three. ``COMMIT`` must be a round trip of its own,
so that a connection lost before it was sent provably committed nothing and
the write can be retried on the new primary (:mod:`pgfailover.dispatch`'s
phases). ``BEGIN`` could travel with the statement in pipeline mode, which
saves a round trip on the network but costs psycopg's pipeline machinery
about 65 µs of client CPU per write (160 µs against 94 µs per ``INSERT``,
measured as above): on a busy client that is slower, and 200 managers'
writes released together on a healthy primary (``benchmarks/scale.py``)
took twice as long.

Autocommit stands in for ``BEGIN`` only where that changes nothing but the
round trips: a connection whose transactions carry settings of their own
(autocommit, an isolation level, read only or deferrable, which psycopg's
``BEGIN`` would send), or one not idle (psycopg_pool hands out none), reads
as psycopg would. Either way a connection goes back to its pool as it came:
out of autocommit, its transaction rolled back here if the statement failed
(psycopg_pool would do it, with a warning in the log for each failed
statement), or closed if neither is possible (the pool then replaces it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import pq

from pgfailover.dispatch import returns_rows

__all__ = ["read", "read_async", "settle", "settle_async", "shortcut"]

Params = Sequence[Any] | dict[str, Any] | None
Row = tuple[Any, ...]

_IDLE = pq.TransactionStatus.IDLE
_ROLLBACK = (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR)


def shortcut(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether ``conn`` runs its transactions as psycopg's defaults do (a plain
    ``BEGIN``), so that autocommit mode may stand in for it."""
    return (
        not conn.autocommit
        and conn.isolation_level is None
        and conn.read_only is None
        and conn.deferrable is None
        and conn.pgconn.transaction_status == _IDLE  # as psycopg_pool hands it out
    )


def read(conn: psycopg.Connection[Any], sql: Any, params: Params) -> list[Row]:
    """Run ``sql`` as a transaction of its own and return its rows (a read's way)."""
    quick = shortcut(conn)
    try:
        if quick:
            conn.autocommit = True
        cur = conn.execute(sql, params)
        rows = cur.fetchall() if returns_rows(cur) else []
        if not quick:
            conn.commit()
        return rows
    finally:
        settle(conn, quick)


def settle(conn: psycopg.Connection[Any], autocommit_set: bool = False) -> None:
    """Make ``conn`` fit to go back to its pool: roll back what a failed or
    interrupted statement left open, take it out of autocommit mode if
    ``autocommit_set``; close it if that is not possible."""
    with contextlib.suppress(psycopg.Error):
        if conn.pgconn.transaction_status in _ROLLBACK:
            conn.rollback()
        if conn.pgconn.transaction_status == _IDLE:
            if autocommit_set:
                conn.autocommit = False
            return
    conn.close()


async def read_async(conn: psycopg.AsyncConnection[Any], sql: Any, params: Params) -> list[Row]:
    """:func:`read` for an asyncio connection."""
    quick = shortcut(conn)
    try:
        if quick:  # inside: whatever interrupts it, the finally takes autocommit off
            await conn.set_autocommit(True)
        cur = await conn.execute(sql, params)
        rows = await cur.fetchall() if returns_rows(cur) else []
        if not quick:
            await conn.commit()
        return rows
    finally:
        await settle_async(conn, quick)


async def settle_async(conn: psycopg.AsyncConnection[Any], autocommit_set: bool = False) -> None:
    """:func:`settle` for an asyncio connection."""
    with contextlib.suppress(psycopg.Error):
        if conn.pgconn.transaction_status in _ROLLBACK:
            await conn.rollback()
        if conn.pgconn.transaction_status == _IDLE:
            if autocommit_set:
                await conn.set_autocommit(False)
            return
    await conn.close()
