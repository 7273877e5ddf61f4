"""NodePools without PostgreSQL: tracking, aborting and closing, over fake pools.

The fake pool hands out connections whose socket is one end of a real
``socketpair``, so aborting a node does what it does in production: the
peer sees the socket shut down.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
from psycopg_pool import PoolClosed, PoolTimeout

from pgfailover import FailoverConfig
from pgfailover.errors import ManagerClosed
from pgfailover.pools import NodePools

from .helpers import NODES

pytestmark = pytest.mark.timeout(10)


class SocketConn:
    """A checked-out connection whose socket is one end of a socketpair."""

    def __init__(self) -> None:
        self.mine, self.peer = socket.socketpair()
        self.closed = False

    def fileno(self) -> int:
        return self.mine.fileno()

    def close(self) -> None:
        self.closed = True

    def peer_sees_shutdown(self) -> bool:
        self.peer.settimeout(1.0)
        return self.peer.recv(1) == b""


class FakePool:
    """Stands in for ``psycopg_pool.ConnectionPool``: same constructor, same calls."""

    def __init__(self, conninfo: str, **options: Any) -> None:
        self.conninfo = conninfo
        self.options = options
        self.name = options["name"]
        self.opened = False
        self.closed = False
        self.free = threading.Semaphore(options["max_size"])
        self.close_delay = 0.0
        self.given: list[SocketConn] = []

    def open(self, wait: bool = False) -> None:
        self.opened = True

    def getconn(self, timeout: float | None = None) -> SocketConn:
        if self.closed:
            raise PoolClosed(self.name)
        deadline = time.monotonic() + (timeout or 0)
        while not self.free.acquire(timeout=0.01):
            if self.closed:
                raise PoolClosed(self.name)
            if time.monotonic() >= deadline:
                raise PoolTimeout(f"couldn't get a connection after {timeout} sec")
        conn = SocketConn()
        self.given.append(conn)
        return conn

    def putconn(self, conn: SocketConn) -> None:
        if self.closed:
            raise PoolClosed(self.name)
        self.free.release()

    def close(self, timeout: float = 5.0) -> None:
        time.sleep(self.close_delay)  # a pool whose server hangs: closing takes long
        self.closed = True


CREATED: list[FakePool] = []


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    while CREATED:
        for conn in CREATED.pop().given:
            conn.mine.close()
            conn.peer.close()


def make(max_size: int = 2) -> tuple[NodePools, dict[str, FakePool]]:
    cfg = FailoverConfig(pool_min_size=1, pool_max_size=max_size)
    made: dict[str, FakePool] = {}

    def factory(conninfo: str, **options: Any) -> FakePool:
        pool = FakePool(conninfo, **options)
        CREATED.append(pool)
        made[options["name"].rsplit("-", 1)[1]] = pool
        return pool

    pools = NodePools(NODES, cfg, "test", {"max_idle": 30}, pool_class=cast(Any, factory))
    pools.open()
    return pools, made


def out(pools: NodePools, node: str) -> SocketConn:
    """A checkout, seen as the fake it is."""
    return cast(SocketConn, pools.checkout(node, 1.0))


def test_every_node_gets_a_named_pool_with_the_callers_options() -> None:
    _, made = make()
    assert sorted(made) == ["node0", "node1", "node2"]
    pool = made["node1"]
    assert pool.opened
    assert pool.conninfo == NODES[1].dsn
    assert pool.name == "pgfailover-test-node1"
    assert pool.options["max_idle"] == 30
    assert pool.options["kwargs"]["connect_timeout"] >= 1


def test_abort_shuts_down_only_the_checked_out_connections_of_that_node() -> None:
    pools, _ = make()
    a = out(pools, "node0")
    b = out(pools, "node0")
    other = out(pools, "node1")
    pools.checkin("node0", cast(Any, b))
    assert pools.abort("node0") == 1
    assert a.peer_sees_shutdown()
    other.peer.settimeout(0.05)
    with pytest.raises(TimeoutError):
        other.peer.recv(1)  # node1's connection is untouched
    assert pools.abort("node0") == 1  # still checked out until it comes back
    pools.checkin("node0", cast(Any, a))
    assert pools.abort("node0") == 0
    assert pools.close(time.monotonic() + 1.0)


def test_close_refuses_new_checkouts_and_frees_waiters() -> None:
    pools, made = make(max_size=1)
    held = out(pools, "node0")
    errors: list[BaseException] = []

    def wait_for_one() -> None:
        try:
            pools.checkout("node0", 5.0)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            errors.append(exc)

    waiter = threading.Thread(target=wait_for_one)
    waiter.start()
    assert pools.close(time.monotonic() + 2.0)
    waiter.join(2.0)
    assert not waiter.is_alive()
    assert [type(e) for e in errors] == [ManagerClosed]
    assert held.peer_sees_shutdown()  # the caller using it is unblocked too
    with pytest.raises(ManagerClosed):
        out(pools, "node1")
    pools.checkin("node0", cast(Any, held))  # giving one back after close closes it
    assert held.closed
    assert all(p.closed for p in made.values())


def test_a_pool_that_hangs_on_close_does_not_hold_the_caller() -> None:
    pools, made = make()
    made["node2"].close_delay = 1.0
    started = time.monotonic()
    assert not pools.close(time.monotonic() + 0.3)
    assert time.monotonic() - started < 0.8
    assert made["node0"].closed
    assert made["node1"].closed
    deadline = time.monotonic() + 5.0
    while not made["node2"].closed and time.monotonic() < deadline:
        time.sleep(0.01)  # polling the background close, so its sockets are closed
