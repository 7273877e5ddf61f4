"""Which errors mean "this node is gone", and what a write does after each."""

from __future__ import annotations

import psycopg
import psycopg.errors
import pytest

from pgfailover.errors import (
    ManagerClosed,
    NoPrimaryAvailable,
    NoStandbyAvailable,
    SplitBrainError,
    WriteOutcomeUnknown,
)
from pgfailover.execution import Verdict, classify, is_connection_error

# id, error, connection error?, verdict in the statement phase, in the COMMIT phase
CASES: list[tuple[str, BaseException, bool, Verdict, Verdict]] = [
    (
        "driver connection error without SQLSTATE",
        psycopg.OperationalError("x"),
        True,
        "retry",
        "unknown",
    ),
    ("interface error (connection closed)", psycopg.InterfaceError("x"), True, "retry", "unknown"),
    (
        "08006 connection failure",
        psycopg.errors.ConnectionFailure("x"),
        True,
        "retry",
        "unknown",
    ),
    ("57P01 admin shutdown", psycopg.errors.AdminShutdown("x"), True, "retry", "unknown"),
    ("57P02 crash shutdown", psycopg.errors.CrashShutdown("x"), True, "retry", "unknown"),
    ("57P03 cannot connect now", psycopg.errors.CannotConnectNow("x"), True, "retry", "unknown"),
    (
        "25006 read-only transaction",
        psycopg.errors.ReadOnlySqlTransaction("x"),
        False,
        "readonly",
        "readonly",
    ),
    (
        "unique violation is the caller's",
        psycopg.errors.UniqueViolation("x"),
        False,
        "raise",
        "raise",
    ),
    (
        "57014 query canceled is not a lost node",
        psycopg.errors.QueryCanceled("x"),
        False,
        "raise",
        "raise",
    ),
    ("not a database error", RuntimeError("x"), False, "raise", "raise"),
    ("NoPrimaryAvailable", NoPrimaryAvailable("x"), False, "raise", "raise"),
    ("NoStandbyAvailable", NoStandbyAvailable("x"), False, "raise", "raise"),
    ("ManagerClosed", ManagerClosed("x"), False, "raise", "raise"),
    ("SplitBrainError", SplitBrainError("x"), False, "raise", "raise"),
    ("WriteOutcomeUnknown", WriteOutcomeUnknown("x"), False, "raise", "raise"),
]


@pytest.mark.parametrize(
    ("exc", "connection", "statement", "commit"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_error_classification(
    exc: BaseException, connection: bool, statement: Verdict, commit: Verdict
) -> None:
    assert is_connection_error(exc) is connection
    assert classify(exc, "statement") == statement
    assert classify(exc, "commit") == commit


def test_our_own_errors_are_still_caught_as_psycopg_operational_errors() -> None:
    # They subclass OperationalError for callers' sake: that is exactly why
    # is_connection_error must not take them for a lost node.
    for exc in (NoPrimaryAvailable("x"), ManagerClosed("x"), WriteOutcomeUnknown("x")):
        assert isinstance(exc, psycopg.OperationalError)
        assert exc.sqlstate is None
