"""AsyncFailoverManager without a server: what it refuses before open and after close."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, cast

import pytest

from pgfailover import AsyncFailoverManager, ManagerClosed, Node

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
