"""The executors as tables: retries, error classification and bookkeeping, without PostgreSQL.

The pools hand out scripted connections (:mod:`tests.unit.fakes`); the view,
the snapshots (real probe results through the real transition) and the
counters are the real ones. What each case pins: which node every attempt
went to, what the caller sees, which nodes became suspect, what was counted.
The statement tables run on both executors, the sync one (threads) and the
asyncio one: they share every decision and must show the same outcomes.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from psycopg import errors as pgerrors
from psycopg import pq
from psycopg_pool import PoolTimeout

from pgfailover.dispatch import CHECKOUT_SLICE
from pgfailover.errors import (
    ManagerClosed,
    NoPrimaryAvailable,
    NoStandbyAvailable,
    WriteOutcomeUnknown,
)

from .executors import KINDS, Harness, Kind, conn_error, copy_script
from .fakes import FakeConn
from .helpers import down, healthy_round, primary, run, standby

pytestmark = pytest.mark.timeout(10)

WRITE_CASES: list[
    tuple[str, dict[str, list[FakeConn | str]], list[str], type[Exception] | None]
] = [
    ("ok on the primary", {}, ["node0"], None),
    (
        "connection lost before COMMIT: retried on the new primary",
        {"node0": [FakeConn("node0", conn_error())]},
        ["node0", "node1"],
        None,
    ),
    (
        "read-only refusal (a demoted primary): retried on the new primary",
        {"node0": [FakeConn("node0", pgerrors.ReadOnlySqlTransaction("read-only"))]},
        ["node0", "node1"],
        None,
    ),
    (
        "administrator shutdown (57P01): retried",
        {"node0": [FakeConn("node0", pgerrors.AdminShutdown("terminating"))]},
        ["node0", "node1"],
        None,
    ),
    (
        "connection lost during COMMIT: outcome unknown, never retried",
        {"node0": [FakeConn("node0", conn_error(), fail_at="commit")]},
        ["node0"],
        WriteOutcomeUnknown,
    ),
    (
        "a constraint violation is the caller's, raised as is",
        {"node0": [FakeConn("node0", pgerrors.UniqueViolation("duplicate key"))]},
        ["node0"],
        pgerrors.UniqueViolation,
    ),
    (
        "pgfailover's own OperationalError subclasses are no lost connection",
        {"node0": [FakeConn("node0", NoStandbyAvailable("nested"))]},
        ["node0"],
        NoStandbyAvailable,
    ),
    (
        "no pooled connection in time: node suspected, retried on the new primary",
        {"node0": ["timeout"] * 5},  # each slice of the pool's 0.5 s
        ["node1"],
        None,
    ),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("script", "attempts", "raises"),
    [c[1:] for c in WRITE_CASES],
    ids=[c[0] for c in WRITE_CASES],
)
def test_run_write(
    script: dict[str, list[FakeConn | str]],
    attempts: list[str],
    raises: type[Exception] | None,
    kind: Kind,
) -> None:
    h = Harness(copy_script(script), kind=kind)
    if raises is None:
        assert h.write() == [(1,)]
        assert h.writes == [attempts[-1]]  # the failover clock hears of the acknowledged write
    else:
        with pytest.raises(raises):
            h.write()
        assert h.writes == []
    assert h.attempts() == attempts
    assert sorted(h.pools.returned, key=id) == sorted(h.pools.out, key=id)  # all back in pools
    for conn in h.pools.returned:  # rolled back here (or closed), not by the pool
        idle = conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
        assert conn.closed or (idle and not conn.autocommit)
    # A node found gone or read-only is suspected and a round probes it at
    # once (here: the round that shows node1 promoted, clearing the suspect).
    suspected = "node0" in h.view.suspects or h.rounds.calls > 0
    assert suspected == (attempts != ["node0"] or raises is WriteOutcomeUnknown)
    outcomes = [k[2] for k in h.counted()]
    assert outcomes.count("ok") == (raises is None)


@pytest.mark.parametrize("kind", KINDS)
def test_a_statement_without_a_result_set_returns_no_rows(kind: Kind) -> None:
    script: dict[str, list[FakeConn | str]] = {
        "node0": [FakeConn("node0", rows=[])],
        "node1": [FakeConn("node1", rows=[])],
    }
    h = Harness(script, kind=kind)
    assert h.write("SET x = 1") == []  # fetching would raise: there is nothing to fetch
    assert h.read("SET x = 1") == []


@pytest.mark.parametrize("kind", KINDS)
def test_commit_lost_is_counted_unknown_and_the_node_suspected(kind: Kind) -> None:
    h = Harness({"node0": [FakeConn("node0", conn_error(), fail_at="commit")]}, kind=kind)
    with pytest.raises(WriteOutcomeUnknown, match="node0 lost during COMMIT"):
        h.write()
    assert h.counted() == [("node0", "write", "unknown")]
    assert h.view.suspects == {"node0"}
    assert h.woken >= 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_write_with_no_primary_ever_fails_after_the_wait(kind: Kind) -> None:
    h = Harness({}, wait=0.2, kind=kind)
    h.rounds.rounds = [[down("node0"), standby("node1"), standby("node2")]]
    h.view.suspect("node0")
    started = time.monotonic()
    with pytest.raises(NoPrimaryAvailable, match=r"no writable primary within 0\.2s"):
        h.write()
    assert 0.15 < time.monotonic() - started < 2.0
    assert h.attempts() == []


READ_CASES: list[
    tuple[str, dict[str, list[FakeConn | str]], list[str], type[Exception] | None]
] = [
    ("ok on the preferred standby", {}, ["node1"], None),
    (
        "standby gone: the next standby",
        {"node1": [FakeConn("node1", conn_error())]},
        ["node1", "node2"],
        None,
    ),
    (
        "recovery conflict (40001) on a standby: the next one, node not suspected",
        {"node1": [FakeConn("node1", pgerrors.SerializationFailure("conflict with recovery"))]},
        ["node1", "node2"],
        None,
    ),
    (
        "both standbys gone: the primary",
        {"node1": [FakeConn("node1", conn_error())], "node2": [FakeConn("node2", conn_error())]},
        ["node1", "node2", "node0"],
        None,
    ),
    (
        "a syntax error is the caller's",
        {"node1": [FakeConn("node1", pgerrors.SyntaxError("syntax error"))]},
        ["node1"],
        pgerrors.SyntaxError,
    ),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("script", "attempts", "raises"),
    [c[1:] for c in READ_CASES],
    ids=[c[0] for c in READ_CASES],
)
def test_run_read(
    script: dict[str, list[FakeConn | str]],
    attempts: list[str],
    raises: type[Exception] | None,
    kind: Kind,
) -> None:
    h = Harness(copy_script(script), kind=kind)
    if raises is None:
        assert h.read() == [(1,)]
    else:
        with pytest.raises(raises):
            h.read()
    assert h.attempts() == attempts
    assert sorted(h.pools.returned, key=id) == sorted(h.pools.out, key=id)  # each back once
    conflict = any(isinstance(c.error, pgerrors.SerializationFailure) for c in h.pools.out)
    expected_suspects = {c.node for c in h.pools.out if c.error and raises is None} - (
        {"node1"} if conflict else set()
    )
    assert h.view.suspects == expected_suspects
    assert h.writes == []  # reads never stop the failover clock
    for conn in h.pools.returned:  # in autocommit for the statement only, no COMMIT sent
        idle = conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
        assert conn.closed or (idle and not conn.autocommit)
        assert "commit" not in conn.log


@pytest.mark.parametrize("kind", KINDS)
def test_read_your_writes_goes_to_the_primary_when_no_standby_replayed_far_enough(
    kind: Kind,
) -> None:
    h = Harness({}, kind=kind)
    assert h.read(min_lsn=10**9) == [(1,)]
    assert h.attempts() == ["node0"]
    assert h.counted() == [("node0", "read_primary", "ok")]


@pytest.mark.parametrize("kind", KINDS)
def test_a_read_with_no_node_to_serve_fails_after_the_wait(kind: Kind) -> None:
    """With no monitor thread, the waiting read runs the rounds itself."""
    h = Harness({}, wait=0.2, kind=kind)
    h.rounds.rounds = [[down("node0"), down("node1"), down("node2")]]
    for name in ("node0", "node1", "node2"):
        h.view.suspect(name)
    with pytest.raises(NoStandbyAvailable, match=r"within 0\.2s"):
        h.read()
    assert h.rounds.calls >= 1


@pytest.mark.parametrize("kind", KINDS)
def test_waiting_reads_add_no_probe_rounds_to_the_monitors(kind: Kind) -> None:
    """With a monitor thread, a read waiting for a node neither wakes it nor probes:
    readers must not add rounds (and failed checks) at their own pace."""
    h = Harness({}, wait=0.2, kind=kind)
    h.monitor_running = True
    for name in ("node0", "node1", "node2"):
        h.view.suspect(name)
    with pytest.raises(NoStandbyAvailable):
        h.read()
    assert h.woken == 0
    assert h.rounds.calls == 0


@pytest.mark.parametrize("kind", KINDS)
def test_client_commits_and_returns_the_connection(kind: Kind) -> None:
    h = Harness({}, kind=kind)
    h.block(readonly=False)
    (used,) = h.pools.out
    assert used.log == ["execute INSERT", "commit", "checkin"]
    assert h.pools.returned == [used]
    assert h.writes == ["node0"]
    assert h.counted() == [("node0", "write", "ok")]


@pytest.mark.parametrize("kind", KINDS)
def test_client_rolls_back_on_an_error_in_the_block(kind: Kind) -> None:
    h = Harness({}, kind=kind)
    with pytest.raises(ValueError, match="application"):
        h.block(readonly=False, fail=ValueError("application bug"))
    (used,) = h.pools.out
    assert used.log == ["execute INSERT", "rollback", "checkin"]  # rolled back first
    assert h.pools.returned == [used]
    assert h.view.suspects == frozenset()
    assert h.counted() == [("node0", "write", "error")]


@pytest.mark.parametrize("kind", KINDS)
def test_client_reports_a_lost_commit_as_unknown(kind: Kind) -> None:
    h = Harness({"node0": [FakeConn("node0", conn_error(), fail_at="commit")]}, kind=kind)
    with pytest.raises(WriteOutcomeUnknown):
        h.block(readonly=False)
    assert h.counted() == [("node0", "write", "unknown")]  # as a query()'s lost COMMIT
    assert h.view.suspects == {"node0"}
    assert h.writes == []
    assert len(h.pools.returned) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_client_for_reads_takes_a_standby(kind: Kind) -> None:
    h = Harness({}, kind=kind)
    h.block(readonly=True, sql="SELECT")
    assert h.attempts() == ["node1"]
    assert h.counted() == [("node1", "read", "ok")]


@pytest.mark.parametrize("kind", KINDS)
def test_a_closed_view_refuses_a_waiting_writer(kind: Kind) -> None:
    """The manager closes while a write waits for a pooled connection: ManagerClosed."""
    h = Harness({}, kind=kind)

    def closed_checkout(node: str, timeout: float) -> Any:
        h.view.close()  # close() shuts the pools, and their waiters time out
        raise PoolTimeout("closing")

    h.pools.checkout = closed_checkout  # type: ignore[method-assign]
    with pytest.raises(ManagerClosed, match="test is closed"):
        h.write()


def test_a_session_can_be_entered_only_once() -> None:
    h = Harness({})
    session = h.executor.client(readonly=False)
    with session as conn:
        conn.execute("INSERT")
    with pytest.raises(RuntimeError, match="only once"), session:
        pass
    assert len(h.pools.out) == len(h.pools.returned) == 1


def test_an_async_session_can_be_entered_only_once() -> None:
    h = Harness({}, kind="async")

    async def scenario() -> None:
        session = h.aexecutor.client(readonly=False)
        async with session as conn:
            await conn.execute("INSERT")
        with pytest.raises(RuntimeError, match="only once"):
            async with session:
                pass

    h.in_loop(scenario())
    assert len(h.pools.out) == len(h.pools.returned) == 1


def test_an_exit_with_only_the_exception_type_rolls_back() -> None:
    h = Harness({})
    session = h.executor.client(readonly=False)
    conn = session.__enter__()
    conn.execute("INSERT")
    session.__exit__(ValueError, None, None)
    (used,) = h.pools.out
    assert used.log == ["execute INSERT", "rollback", "checkin"]
    assert h.writes == []


def test_an_async_exit_with_only_the_exception_type_rolls_back() -> None:
    h = Harness({}, kind="async")

    async def scenario() -> None:
        session = h.aexecutor.client(readonly=False)
        conn = await session.__aenter__()
        await conn.execute("INSERT")
        await session.__aexit__(ValueError, None, None)

    h.in_loop(scenario())
    (used,) = h.pools.out
    assert used.log == ["execute INSERT", "rollback", "checkin"]
    assert h.writes == []


def test_an_abandoned_session_is_rolled_back_and_returned() -> None:
    h = Harness({})
    session = h.executor.client(readonly=False)
    session.__enter__().execute("INSERT")
    del session  # dropped inside its block
    (used,) = h.pools.out
    assert used.log == ["execute INSERT", "rollback", "checkin"]


def test_only_a_new_suspicion_asks_for_a_probe_round() -> None:
    """Callers losing their connections to a node that is already suspect bring
    nothing new: the rounds their wakes would add would make detection depend on
    the application's concurrency (threads or tasks), not on the monitor."""
    h = Harness({})
    h.executor.suspect("node0", "connection lost")
    h.executor.suspect("node0", "connection lost, another caller")
    h.executor.suspect("node1", "connection lost")
    assert h.woken == 2  # node0 once, node1 once


@pytest.mark.parametrize("kind", KINDS)
def test_a_write_that_waits_for_a_primary_asks_for_one_round(kind: Kind) -> None:
    """The write's connection error wakes the monitor; waiting for a primary does not
    wake it again (it probes fast while there is none)."""
    h = Harness({"node0": [FakeConn("node0", conn_error())]}, wait=0.2, kind=kind)
    h.rounds.rounds = [[down("node0"), standby("node1"), standby("node2")]]  # no promotion
    with pytest.raises(NoPrimaryAvailable):
        h.write()
    assert h.woken == 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("route", ["write", "read"])
def test_a_checkout_waiting_on_a_node_given_up_moves_on_within_a_slice(
    kind: Kind, route: str
) -> None:
    """The node's pool can open no connection (its server died) and a statement waits on
    it; the monitor gives the node up meanwhile: the wait ends at the next slice and
    the statement runs elsewhere, not after the pool's whole timeout (0.5 s here, 5 s
    by default: a benchmark's write waited that long after a 0.07 s failover)."""
    node = "node0" if route == "write" else "node1"
    h = Harness({node: ["timeout"] * 50}, kind=kind)
    timed_out: list[str] = []

    def monitor_round_after_two_slices(waited_on: str) -> None:
        timed_out.append(waited_on)
        if len(timed_out) == 2:
            if route == "write":
                h.rounds()  # node0 down, node1 promoted
            else:
                h.view.publish(
                    run([healthy_round(), [primary("node0"), down("node1"), standby("node2")]])[0],
                    time.time(),
                )

    h.pools.timed_out = monitor_round_after_two_slices
    assert (h.write() if route == "write" else h.read()) == [(1,)]
    waits = [w for n, w in h.pools.waits if n == node]
    assert len(waits) == 2, h.pools.waits  # no third slice once the view had moved
    assert all(w <= CHECKOUT_SLICE for w in waits)
    served = h.pools.out[-1].node
    assert served == ("node1" if route == "write" else "node2"), h.pools.waits
