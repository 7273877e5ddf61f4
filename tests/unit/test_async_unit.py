"""AsyncFailoverManager without a server: what it refuses before open and after close,
how connections go back to their pools, and what cancellation does to the bookkeeping."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, cast

import pytest
from psycopg import errors as pgerrors

from pgfailover import AsyncFailoverManager, ManagerClosed, Node
from pgfailover.breaker import BreakerPhase, BreakerPolicy

from .executors import Harness
from .fakes import FakeConn

pytestmark = pytest.mark.timeout(30)


def _manager() -> AsyncFailoverManager:
    nodes = [Node(f"node{i}", f"host=127.0.0.1 port={i + 1} user=app") for i in range(2)]
    return AsyncFailoverManager(nodes=nodes)


def test_waiting_or_querying_before_open_is_refused_plainly() -> None:
    async def scenario() -> None:
        mgr = _manager()
        with pytest.raises(ManagerClosed, match="not open"):
            await mgr.wait_for_primary(time.monotonic() + 1)
        with pytest.raises(ManagerClosed, match="not open"):
            await mgr.query("SELECT 1")
        with pytest.raises(ManagerClosed, match="not open"):
            mgr.get_client()

    asyncio.run(scenario())


def test_a_manager_never_opened_closes_and_stays_closed() -> None:
    async def scenario() -> None:
        mgr = _manager()
        await mgr.close()
        await mgr.close()
        assert mgr.closed
        with pytest.raises(ManagerClosed, match="closed"):
            await mgr.open()

    asyncio.run(scenario())


def test_closing_from_another_event_loop_is_refused_and_changes_nothing() -> None:
    mgr = _manager()

    async def bind() -> None:
        mgr._loop = asyncio.get_running_loop()  # as open() does, without servers

    asyncio.run(bind())

    async def close_elsewhere() -> None:
        with pytest.raises(RuntimeError, match="another event loop"):
            await mgr.close()

    asyncio.run(close_elsewhere())
    assert not mgr.closed


class _PgConn:
    def __init__(self, status: int) -> None:
        self.transaction_status = status


class _Conn:
    """What AsyncNodePools reads of a connection."""

    def __init__(self, status: int) -> None:
        self.pgconn = _PgConn(status)
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class _Pool:
    """An AsyncConnectionPool stand-in whose putconn suspends until ``release`` is set
    (a rollback, a client to hand the connection to) when ``contended``."""

    def __init__(self, conninfo: str, **options: object) -> None:
        self.max_size = int(str(options["max_size"]))
        self.returned: list[object] = []
        self.contended = False
        self.release = asyncio.Event()

    def get_stats(self) -> dict[str, int]:
        return {"requests_waiting": 1 if self.contended else 0}

    async def getconn(self, timeout: float) -> _Conn:
        return _Conn(0)

    async def putconn(self, conn: object) -> None:
        if self.contended:
            await self.release.wait()
        self.returned.append(conn)


@pytest.mark.parametrize(
    ("contended", "status"),
    [
        (False, 0),  # idle, nobody waiting: straight back, no task
        (True, 0),  # a client waiting: the pool may suspend
        (False, 2),  # in a transaction: the pool rolls back first (I/O)
    ],
)
def test_a_connection_goes_back_to_its_pool_even_if_the_caller_is_cancelled(
    contended: bool, status: int
) -> None:
    from pgfailover.aio.pools import AsyncNodePools
    from pgfailover.config import FailoverConfig

    async def scenario() -> None:
        nodes = [Node("node0", "host=127.0.0.1 port=1 user=app")]
        pools = AsyncNodePools(nodes, FailoverConfig(), "test", pool_class=cast(Any, _Pool))
        pool = pools.get("node0")
        assert isinstance(pool, _Pool)
        pool.contended = contended or status != 0
        conn = await pools.checkout("node0", 1.0)
        conn.pgconn.transaction_status = status
        assert pools.in_use("node0") == 1
        giving_back = asyncio.create_task(pools.checkin("node0", conn))
        await asyncio.sleep(0.01)
        giving_back.cancel()  # the request is cancelled while the pool takes it back
        with contextlib.suppress(asyncio.CancelledError):
            await giving_back
        pool.release.set()
        deadline = time.monotonic() + 2
        while not pool.returned and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert pool.returned == [conn]
        assert pools.in_use("node0") == 0

    asyncio.run(scenario())


# The asyncio executor cancelled at each await that can take time: what it
# counts, suspects and gives back. (case, script, readonly, session, counted)
CANCEL_CASES: list[tuple[str, FakeConn, bool, bool, list[tuple[str, str, str]]]] = [
    ("query() write in its statement", FakeConn("node0", stall_at="statement"), False, False, []),
    (
        "query() write during COMMIT: it may have committed",
        FakeConn("node0", stall_at="commit"),
        False,
        False,
        [("node0", "write", "unknown")],
    ),
    ("query() read in its statement", FakeConn("node1", stall_at="statement"), True, False, []),
    (
        "get_client() block during its COMMIT",
        FakeConn("node0", stall_at="commit"),
        False,
        True,
        [("node0", "write", "unknown")],
    ),
    ("get_client() read in its block", FakeConn("node1", stall_at="statement"), True, True, []),
    ("get_client() read during its COMMIT", FakeConn("node1", stall_at="commit"), True, True, []),
    ("get_client() write in its block", FakeConn("node0", stall_at="statement"), False, True, []),
]


@pytest.mark.parametrize(
    ("conn", "readonly", "session", "counted"),
    [c[1:] for c in CANCEL_CASES],
    ids=[c[0] for c in CANCEL_CASES],
)
def test_a_cancelled_statement_is_no_node_failure_and_its_connection_goes_back(
    conn: FakeConn, readonly: bool, session: bool, counted: list[tuple[str, str, str]]
) -> None:
    """Cancelled (a client gone): CancelledError, the connection back in its pool, the
    node neither suspected nor failed in its breaker, a read's breaker trial released,
    a COMMIT cut short counted as unknown (never ok, never retried)."""
    script = FakeConn(conn.node, stall_at=conn.stall_at)
    policy = BreakerPolicy(failures=1, successes=1, cooldown=0.001)
    h = Harness({conn.node: [script]}, kind="async", breaker=policy)
    if readonly:  # node1 is due a half-open trial: this read is it
        h.breakers.failure("node1", "x", healthy=True, now=time.monotonic() - 60)
    executor = h.aexecutor

    async def work() -> None:
        if not session:
            await (
                executor.run_read("SELECT", None) if readonly else executor.run_write("I", None)
            )
            return
        async with executor.client(readonly) as c:
            await c.execute("SELECT" if readonly else "INSERT")

    async def scenario() -> None:
        task = asyncio.create_task(work())
        deadline = time.monotonic() + 5
        while not any(e.endswith("stalled") for e in script.log):
            assert time.monotonic() < deadline, "the statement never started"
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    h.in_loop(scenario())
    assert h.pools.out == [script]
    assert h.pools.returned == [script]
    assert script.log[-1] == "checkin"
    assert h.view.suspects == frozenset()
    assert h.counted() == counted
    assert h.writes == []
    if readonly:
        state = h.breakers.state("node1")
        assert state.phase is BreakerPhase.HALF_OPEN  # this read was the trial...
        assert state.failures == 1  # ...not counted either way...
        assert state.trial == 0  # ...and released: the next read may be the trial


# Cancelled while the connection goes back (psycopg_pool may suspend there): the
# outcome was decided and counted before. (case, script, readonly, session, counted)
CHECKIN_CASES: list[tuple[str, FakeConn, bool, bool, list[tuple[str, str, str]]]] = [
    ("query() write committed", FakeConn("node0"), False, False, [("node0", "write", "ok")]),
    (
        "query() write refused by a constraint",
        FakeConn("node0", pgerrors.UniqueViolation("duplicate key")),
        False,
        False,
        [("node0", "write", "error")],
    ),
    ("query() read, a breaker trial", FakeConn("node1"), True, False, [("node1", "read", "ok")]),
    ("get_client() write committed", FakeConn("node0"), False, True, [("node0", "write", "ok")]),
    ("get_client() read, a trial", FakeConn("node1"), True, True, [("node1", "read", "ok")]),
]


@pytest.mark.parametrize(
    ("conn", "readonly", "session", "counted"),
    [c[1:] for c in CHECKIN_CASES],
    ids=[c[0] for c in CHECKIN_CASES],
)
def test_cancelled_while_giving_the_connection_back_the_outcome_is_already_counted(
    conn: FakeConn, readonly: bool, session: bool, counted: list[tuple[str, str, str]]
) -> None:
    policy = BreakerPolicy(failures=1, successes=1, cooldown=0.001)
    h = Harness({conn.node: [conn]}, kind="async", breaker=policy)
    h.apools.stall_checkin = True
    if readonly:  # node1 is due a half-open trial: this read is it
        h.breakers.failure("node1", "x", healthy=True, now=time.monotonic() - 60)
    executor = h.aexecutor

    async def work() -> None:
        if session:
            async with executor.client(readonly) as c:
                await c.execute("SELECT" if readonly else "INSERT")
        elif readonly:
            await executor.run_read("SELECT", None)
        else:
            await executor.run_write("INSERT", None)

    async def scenario() -> None:
        task = asyncio.create_task(work())
        deadline = time.monotonic() + 5
        while "checkin stalled" not in conn.log:
            assert time.monotonic() < deadline, "the connection never went back"
            await asyncio.sleep(0.001)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, pgerrors.UniqueViolation):
            await task

    h.in_loop(scenario())
    assert h.pools.returned == [conn]
    assert h.counted() == counted
    assert h.writes == (["node0"] if counted == [("node0", "write", "ok")] else [])
    if readonly:
        assert h.breakers.state("node1").phase is BreakerPhase.CLOSED  # the trial's success


def test_checkin_reads_the_same_waiting_queue_psycopg_pool_reports() -> None:
    """AsyncNodePools reads psycopg_pool's queue of waiting clients directly (get_stats()
    builds two dicts per call); if a psycopg_pool release renames it, this fails, and
    checkin falls back to get_stats()."""
    from pgfailover.aio.pools import AsyncNodePools
    from pgfailover.config import FailoverConfig

    async def scenario() -> None:
        nodes = [Node("node0", "host=127.0.0.1 port=1 user=app")]
        pools = AsyncNodePools(nodes, FailoverConfig(), "test")
        waiting = pools._waiting["node0"]
        assert waiting is not None
        before = pools.get("node0").get_stats()["requests_waiting"]
        cast(Any, waiting).append(object())  # as a client queueing for a connection
        assert pools.get("node0").get_stats()["requests_waiting"] == before + 1 == len(waiting)
        cast(Any, waiting).pop()

    asyncio.run(scenario())
