"""pgfailover.statements as tables: when a read may skip BEGIN, and how a connection
is made fit to go back to its pool, on scripted connections (no PostgreSQL)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from psycopg import IsolationLevel, pq

from pgfailover.statements import read, read_async, settle, settle_async, shortcut

from .executors import conn_error
from .fakes import AsyncFakeConn, FakeConn, FakePgConn

pytestmark = pytest.mark.timeout(10)
S = pq.TransactionStatus

# (case, settings on the connection, whether autocommit may stand in for BEGIN)
SHORTCUT_CASES: list[tuple[str, dict[str, Any], bool]] = [
    ("psycopg's defaults", {}, True),
    ("already autocommit: the caller's choice", {"autocommit": True}, False),
    (
        "an isolation level: BEGIN carries it",
        {"isolation_level": IsolationLevel.SERIALIZABLE},
        False,
    ),
    ("read only: BEGIN carries it", {"read_only": True}, False),
    ("read write said outright", {"read_only": False}, False),
    ("deferrable", {"deferrable": True}, False),
    ("not idle: a transaction open", {"pgconn": FakePgConn(S.INTRANS)}, False),
]


@pytest.mark.parametrize(
    ("settings", "expected"), [c[1:] for c in SHORTCUT_CASES], ids=[c[0] for c in SHORTCUT_CASES]
)
def test_shortcut(settings: dict[str, Any], expected: bool) -> None:
    conn = FakeConn("node1", **settings)
    assert shortcut(conn) is expected  # type: ignore[arg-type]
    assert shortcut(AsyncFakeConn(conn)) is expected  # type: ignore[arg-type]


# (case, status left, autocommit set for the statement, (log, autocommit, closed) after)
SETTLE_CASES: list[tuple[str, S, bool, tuple[list[str], bool, bool]]] = [
    ("committed", S.IDLE, False, ([], False, False)),
    ("a read in autocommit", S.IDLE, True, ([], False, False)),
    ("a failed statement", S.INERROR, False, (["rollback"], False, False)),
    ("interrupted before COMMIT", S.INTRANS, False, (["rollback"], False, False)),
    ("failed in autocommit inside its own BEGIN", S.INERROR, True, (["rollback"], False, False)),
    ("a statement under way", S.ACTIVE, True, (["close"], True, True)),
    ("the connection lost", S.UNKNOWN, False, (["close"], False, True)),
]


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize(
    ("status", "autocommit_set", "after"),
    [c[1:] for c in SETTLE_CASES],
    ids=[c[0] for c in SETTLE_CASES],
)
def test_settle(
    status: S, autocommit_set: bool, after: tuple[list[str], bool, bool], kind: str
) -> None:
    conn = FakeConn("node1", autocommit=autocommit_set)
    conn.pgconn.transaction_status = status
    if kind == "sync":
        settle(conn, autocommit_set)  # type: ignore[arg-type]
    else:
        asyncio.run(settle_async(AsyncFakeConn(conn), autocommit_set))  # type: ignore[arg-type]
    assert (conn.log, conn.autocommit, conn.closed) == after


def _read(kind: str, conn: FakeConn) -> list[tuple[Any, ...]]:
    if kind == "sync":
        return read(conn, "SELECT", None)  # type: ignore[arg-type]
    return asyncio.run(read_async(AsyncFakeConn(conn), "SELECT", None))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize(
    ("settings", "log"),
    [
        ({}, ["execute SELECT"]),
        ({"isolation_level": IsolationLevel.REPEATABLE_READ}, ["execute SELECT", "commit"]),
    ],
    ids=["no COMMIT: its own implicit transaction", "BEGIN ISOLATION LEVEL ..., COMMIT"],
)
def test_a_read_runs_in_autocommit_only_for_that_statement(
    settings: dict[str, Any], log: list[str], kind: str
) -> None:
    conn = FakeConn("node1", rows=[(7,)], **settings)
    assert _read(kind, conn) == [(7,)]
    assert conn.log == log
    assert not conn.autocommit
    assert conn.pgconn.transaction_status == S.IDLE


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_read_that_fails_gives_its_connection_back_out_of_autocommit(kind: str) -> None:
    conn = FakeConn("node1", conn_error())
    conn.pgconn.transaction_status = S.IDLE
    with pytest.raises(type(conn_error())):
        _read(kind, conn)
    assert conn.log == ["execute SELECT"]
    assert not conn.autocommit
