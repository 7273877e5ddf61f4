"""One statement in its own transaction, in as few round trips as the connection allows.

``query()`` runs one statement in its own transaction. Left to itself,
psycopg spends three round trips on that: ``BEGIN``, the statement,
``COMMIT``. Each is a wait for the network and for the server's backend to
be scheduled, which is what a write waiting out a failover pays when
hundreds of them reach a new primary at once. So:

- **A read** runs in autocommit mode: the statement is its own implicit
  transaction, in one round trip. Nothing changes for the statement: a
  string of several statements is still one transaction.
- **A write** sends ``BEGIN`` and the statement together in pipeline mode
  (one round trip), then ``COMMIT`` (a second). ``COMMIT`` stays a round
  trip of its own on purpose: a connection lost before it was sent
  provably committed nothing, so the write is retried on the new primary
  (:mod:`pgfailover.dispatch`'s phases); one lost after it raises
  ``WriteOutcomeUnknown``.

Only where it changes nothing but the round trips: a connection whose
transactions carry settings of their own (autocommit, an isolation level,
read only or deferrable, which psycopg's ``BEGIN`` would send) runs as
psycopg would; so does a write without parameters (psycopg sends it with
the simple query protocol, which allows several statements in one string;
pipeline mode does not), and one over a libpq without pipeline mode (before
14). Either way a connection is handed back as it came: out of autocommit,
its transaction rolled back here if the statement failed (psycopg_pool
would do it, with a warning in the log for each failed statement), or
closed if neither is possible (the pool then replaces it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import pq

from pgfailover.dispatch import returns_rows

__all__ = [
    "begin_write",
    "begin_write_async",
    "read",
    "read_async",
    "restore",
    "restore_async",
    "shortcut",
]

Params = Sequence[Any] | dict[str, Any] | None
Row = tuple[Any, ...]

PIPELINE = psycopg.Pipeline.is_supported()
"""Whether this psycopg's libpq has pipeline mode (14 and later)."""

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
    )


def _pipelined(params: Params) -> bool:
    return PIPELINE and bool(params)


def read(conn: psycopg.Connection[Any], sql: Any, params: Params) -> list[Row]:
    """Run ``sql`` as a transaction of its own and return its rows (a read's way)."""
    quick = shortcut(conn)
    if quick:
        conn.autocommit = True
    try:
        cur = conn.execute(sql, params)
        rows = cur.fetchall() if returns_rows(cur) else []
        if not quick:
            conn.commit()
        return rows
    finally:
        restore(conn, quick)


def begin_write(conn: psycopg.Connection[Any], sql: Any, params: Params) -> tuple[list[Row], bool]:
    """Begin a transaction, run ``sql`` in it and return its rows, leaving the
    transaction open for the caller's ``conn.commit()``, after which the caller must
    :func:`restore` the connection (on every path) with the flag returned: whether
    autocommit mode was turned on for it."""
    quick = _pipelined(params) and shortcut(conn)
    try:
        if not quick:
            cur = conn.execute(sql, params)
            return (cur.fetchall() if returns_rows(cur) else []), False
        conn.autocommit = True  # psycopg's own BEGIN would be a round trip of its own
        with conn.pipeline():
            conn.execute(b"BEGIN")
            cur = conn.execute(sql, params)
        return (cur.fetchall() if returns_rows(cur) else []), True
    except BaseException:
        restore(conn, quick)
        raise


def restore(conn: psycopg.Connection[Any], autocommit_set: bool) -> None:
    """Hand ``conn`` back as it came: roll back what a failed or interrupted
    statement left open, take it out of autocommit mode if ``autocommit_set``;
    close it if that is not possible (the pool then replaces it)."""
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
    if quick:
        await conn.set_autocommit(True)
    try:
        cur = await conn.execute(sql, params)
        rows = await cur.fetchall() if returns_rows(cur) else []
        if not quick:
            await conn.commit()
        return rows
    finally:
        await restore_async(conn, quick)


async def begin_write_async(
    conn: psycopg.AsyncConnection[Any], sql: Any, params: Params
) -> tuple[list[Row], bool]:
    """:func:`begin_write` for an asyncio connection."""
    quick = _pipelined(params) and shortcut(conn)
    try:
        if not quick:
            cur = await conn.execute(sql, params)
            return (await cur.fetchall() if returns_rows(cur) else []), False
        await conn.set_autocommit(True)
        async with conn.pipeline():
            await conn.execute(b"BEGIN")
            cur = await conn.execute(sql, params)
        return (await cur.fetchall() if returns_rows(cur) else []), True
    except BaseException:
        await restore_async(conn, quick)
        raise


async def restore_async(conn: psycopg.AsyncConnection[Any], autocommit_set: bool) -> None:
    """:func:`restore` for an asyncio connection."""
    with contextlib.suppress(psycopg.Error):
        if conn.pgconn.transaction_status in _ROLLBACK:
            await conn.rollback()
        if conn.pgconn.transaction_status == _IDLE:
            if autocommit_set:
                await conn.set_autocommit(False)
            return
    await conn.close()
