"""Executor as tables: retries, error classification and bookkeeping, without PostgreSQL.

The pools hand out scripted connections (:mod:`tests.unit.fakes`); the view,
the snapshots (real probe results through the real transition) and the
counters are the real ones. What each case pins: which node every attempt
went to, what the caller sees, which nodes became suspect, what was counted.
"""

from __future__ import annotations

import random
import time
from typing import Any, cast

import psycopg
import pytest
from psycopg import errors as pgerrors

from pgfailover import FailoverConfig
from pgfailover.breaker import BreakerPolicy, Breakers
from pgfailover.cluster import ClusterView
from pgfailover.counters import Counters
from pgfailover.errors import (
    ManagerClosed,
    NoPrimaryAvailable,
    NoStandbyAvailable,
    WriteOutcomeUnknown,
)
from pgfailover.execution import Executor
from pgfailover.pools import NodePools
from pgfailover.routing import PriorityOrder

from .fakes import FakeConn, FakePools, ScriptedRounds
from .helpers import down, healthy_round, primary, run, standby

pytestmark = pytest.mark.timeout(10)

CFG = FailoverConfig()
HEALTHY = run([healthy_round()] * 3)[0]
# node0 lost, node1 promoted: what the next probe round shows.
PROMOTED = [down("node0"), primary("node1", tl=2, lsn=2000), standby("node2", tl=2, lsn=2000)]


class Harness:
    def __init__(
        self,
        script: dict[str, list[FakeConn | str]],
        *,
        wait: float = 1.0,
        breaker: BreakerPolicy | None = None,
    ) -> None:
        self.view = ClusterView("test", HEALTHY, wait)
        self.pools = FakePools(script)
        self.counters = Counters()
        self.rounds = ScriptedRounds(self.view, CFG, [PROMOTED], now=2000.0)
        self.woken = 0
        self.writes: list[str] = []
        self.executor = Executor(
            self.view,
            cast(NodePools, self.pools),
            self.counters,
            PriorityOrder(),
            wait_timeout=wait,
            pool_timeout=0.5,
            poll=0.01,
            wake=self._wake,
            idle_probe=self._probe,
            on_write=self.writes.append,
            breakers=Breakers(
                [n.name for n in HEALTHY.nodes],
                breaker or BreakerPolicy(),
                rng=random.Random(1),  # noqa: S311
            ),
        )

    def _wake(self) -> None:
        self.woken += 1

    def _probe(self) -> None:
        self.rounds()

    def attempts(self) -> list[str]:
        return [c.node for c in self.pools.out]

    def counted(self) -> list[tuple[str, str, str]]:
        return sorted(k for k, v in self.counters.queries.items() for _ in range(v))


def conn_error() -> psycopg.OperationalError:
    return psycopg.OperationalError("server closed the connection unexpectedly")


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
        {"node0": ["timeout"]},
        ["node1"],
        None,
    ),
]


@pytest.mark.parametrize(
    ("script", "attempts", "raises"),
    [c[1:] for c in WRITE_CASES],
    ids=[c[0] for c in WRITE_CASES],
)
def test_run_write(
    script: dict[str, list[FakeConn | str]], attempts: list[str], raises: type[Exception] | None
) -> None:
    h = Harness(script)
    if raises is None:
        assert h.executor.run_write("INSERT", None) == [(1,)]
        assert h.writes == [attempts[-1]]  # the failover clock hears of the acknowledged write
    else:
        with pytest.raises(raises):
            h.executor.run_write("INSERT", None)
        assert h.writes == []
    assert h.attempts() == attempts
    assert sorted(h.pools.returned, key=id) == sorted(h.pools.out, key=id)  # all back in pools
    # A node found gone or read-only is suspected and a round probes it at
    # once (here: the round that shows node1 promoted, clearing the suspect).
    suspected = "node0" in h.view.suspects or h.rounds.calls > 0
    assert suspected == (attempts != ["node0"] or raises is WriteOutcomeUnknown)
    outcomes = [k[2] for k in h.counted()]
    assert outcomes.count("ok") == (raises is None)


def test_commit_lost_is_counted_unknown_and_the_node_suspected() -> None:
    h = Harness({"node0": [FakeConn("node0", conn_error(), fail_at="commit")]})
    with pytest.raises(WriteOutcomeUnknown, match="node0 lost during COMMIT"):
        h.executor.run_write("INSERT", None)
    assert h.counted() == [("node0", "write", "unknown")]
    assert h.view.suspects == {"node0"}
    assert h.woken >= 1


def test_a_write_with_no_primary_ever_fails_after_the_wait() -> None:
    h = Harness({}, wait=0.2)
    h.rounds.rounds = [[down("node0"), standby("node1"), standby("node2")]]
    h.view.suspect("node0")
    started = time.monotonic()
    with pytest.raises(NoPrimaryAvailable, match=r"no writable primary within 0\.2s"):
        h.executor.run_write("INSERT", None)
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


@pytest.mark.parametrize(
    ("script", "attempts", "raises"),
    [c[1:] for c in READ_CASES],
    ids=[c[0] for c in READ_CASES],
)
def test_run_read(
    script: dict[str, list[FakeConn | str]], attempts: list[str], raises: type[Exception] | None
) -> None:
    h = Harness(script)
    if raises is None:
        assert h.executor.run_read("SELECT", None) == [(1,)]
    else:
        with pytest.raises(raises):
            h.executor.run_read("SELECT", None)
    assert h.attempts() == attempts
    assert len(h.pools.returned) == len(attempts)
    conflict = any(isinstance(c.error, pgerrors.SerializationFailure) for c in h.pools.out)
    expected_suspects = {c.node for c in h.pools.out if c.error and raises is None} - (
        {"node1"} if conflict else set()
    )
    assert h.view.suspects == expected_suspects
    assert h.writes == []  # reads never stop the failover clock


def test_read_your_writes_goes_to_the_primary_when_no_standby_replayed_far_enough() -> None:
    h = Harness({})
    assert h.executor.run_read("SELECT", None, min_lsn=10**9) == [(1,)]
    assert h.attempts() == ["node0"]
    assert h.counted() == [("node0", "read_primary", "ok")]


def test_a_read_with_no_node_to_serve_fails_after_the_wait() -> None:
    h = Harness({}, wait=0.2)
    for name in ("node0", "node1", "node2"):
        h.view.suspect(name)
    with pytest.raises(NoStandbyAvailable, match=r"within 0\.2s"):
        h.executor.run_read("SELECT", None)
    assert h.woken >= 1


def test_client_commits_and_returns_the_connection() -> None:
    h = Harness({})
    with h.executor.client(readonly=False) as conn:
        conn.execute("INSERT")
    (used,) = h.pools.out
    assert used.log == ["execute INSERT", "commit", "checkin"]
    assert h.pools.returned == [used]
    assert h.writes == ["node0"]
    assert h.counted() == [("node0", "write", "ok")]


def test_client_rolls_back_on_an_error_in_the_block() -> None:
    h = Harness({})

    def block() -> None:
        with h.executor.client(readonly=False) as conn:
            conn.execute("INSERT")
            raise ValueError("application bug")

    with pytest.raises(ValueError, match="application"):
        block()
    (used,) = h.pools.out
    assert used.log == ["execute INSERT", "rollback", "checkin"]  # rolled back first
    assert h.pools.returned == [used]
    assert h.view.suspects == frozenset()
    assert h.counted() == [("node0", "write", "error")]


def test_client_reports_a_lost_commit_as_unknown() -> None:
    h = Harness({"node0": [FakeConn("node0", conn_error(), fail_at="commit")]})
    with pytest.raises(WriteOutcomeUnknown), h.executor.client(readonly=False) as conn:
        conn.execute("INSERT")
    assert h.view.suspects == {"node0"}
    assert h.writes == []


def test_client_for_reads_takes_a_standby() -> None:
    h = Harness({})
    with h.executor.client(readonly=True) as conn:
        conn.execute("SELECT")
    assert h.attempts() == ["node1"]


def test_a_closed_view_refuses_a_waiting_writer() -> None:
    h = Harness({"node0": ["timeout"]})
    h.view.close()

    def closed_checkout(node: str, timeout: float) -> Any:
        from psycopg_pool import PoolTimeout

        raise PoolTimeout("closing")

    h.pools.checkout = closed_checkout  # type: ignore[method-assign]
    with pytest.raises(ManagerClosed, match="test is closed"):
        h.executor.run_write("INSERT", None)


def test_a_session_can_be_entered_only_once() -> None:
    h = Harness({})
    session = h.executor.client(readonly=False)
    with session as conn:
        conn.execute("INSERT")
    with pytest.raises(RuntimeError, match="only once"), session:
        pass
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


def test_an_abandoned_session_is_rolled_back_and_returned() -> None:
    h = Harness({})
    session = h.executor.client(readonly=False)
    session.__enter__().execute("INSERT")
    del session  # dropped inside its block
    (used,) = h.pools.out
    assert used.log == ["execute INSERT", "rollback", "checkin"]
